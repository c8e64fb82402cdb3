"""The phantom written as DICOM (stage `synthesize`): each phantom case becomes one CT Image
Storage series, one file per slice, holding the HU the phantom rendered before windowing
(`render_case_slices`), rounded to whole HU and stored as unsigned 16-bit with
RescaleIntercept -1024 / RescaleSlope 1 (the usual CT convention). Study, series,
frame-of-reference and SOP instance UIDs are derived from the case's seeded entropy, so the
bytes are the same on every run. The ground-truth lesion masks go beside the series as 0/255
PNGs named like the slices, with one `cases.csv` row per case.

Kept apart from the reader (pipeline/dicom.py) so that the new-images command does not depend
on the phantom's code, and a phantom change does not rerun `infer`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pipeline.dicom import derived_uid
from pipeline.io import atomic_path, encode_png
from pipeline.parallel import ordered_map
from pipeline.params import PhantomParams
from pipeline.synthesize.archive import render_case_slices
from pipeline.synthesize.layout import CaseSpec, plan_cases
from pipeline.synthesize.rendering import PhantomSlice

# Stored value = HU + 1024: air (-1000 HU) stays above 0 and dense bone fits in 16 bits.
RESCALE_INTERCEPT_HU = -1024.0
STORED_MAX = 65535
# Fixed, so that the phantom's files do not change with the day they were written.
PHANTOM_STUDY_DATE = "20260101"
PHANTOM_STUDY_TIME = "120000"
# Axial slices: rows run to the patient's left (+x), columns to posterior (+y), the normal to
# the head (+z). This is how the phantom (and the Kaggle PNGs) are displayed.
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
DICOM_CASES_FILE = "cases.csv"
DICOM_CASES_COLUMNS = (
    "case_id",
    "class",
    "subset",
    "series_instance_uid",
    "series_path",
    "truth_path",
    "slices",
    "lesion_voxels",
    "lesion_ml",
)


def case_uid(spec: CaseSpec, kind: str) -> str:
    """A UID derived from the case's seeded entropy (seed, class, ordinal) and `kind`."""
    return derived_uid("phantom", *spec.entropy, kind)


def case_folder(spec: CaseSpec) -> str:
    return f"{spec.class_name}_{spec.case_id}"


def phantom_slice_dataset(
    rendered: PhantomSlice, spec: CaseSpec, index: int, params: PhantomParams
) -> Dataset:
    """One CT Image Storage instance of slice `index` of a phantom case (HU before windowing,
    the case's window as its default display window)."""
    hu = rendered.hu
    rows, columns = hu.shape
    spacing_mm = params.pixel_spacing_mm
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = case_uid(spec, f"instance-{index}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = PHANTOM_STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = PHANTOM_STUDY_TIME
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "stroke-ct phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic non-contrast head CT"
    ds.SeriesDescription = f"{spec.class_name} phantom {spec.case_id} ({spec.subset})"
    ds.PatientName = f"PHANTOM^{spec.case_id}"
    ds.PatientID = f"phantom-{spec.class_name.lower()}-{spec.case_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{params.slice_thickness_mm:g}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = case_uid(spec, "study")
    ds.SeriesInstanceUID = case_uid(spec, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    # The centre of the slice grid sits on the z axis; slice 0 is the lowest (skull base).
    z_mm = index * params.slice_thickness_mm
    corner_mm = -(columns - 1) / 2.0 * spacing_mm
    ds.ImagePositionPatient = [f"{corner_mm:.4f}", f"{corner_mm:.4f}", f"{z_mm:.4f}"]
    ds.ImageOrientationPatient = [f"{value:g}" for value in AXIAL_ORIENTATION]
    ds.FrameOfReferenceUID = case_uid(spec, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z_mm:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = f"{rendered.window_level_hu:.2f}"
    ds.WindowWidth = f"{rendered.window_width_hu:.2f}"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT_HU:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    stored = np.clip(np.rint(hu.astype(np.float64) - RESCALE_INTERCEPT_HU), 0, STORED_MAX)
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class PhantomSeries:
    """A phantom case as DICOM: slice files and truth masks (name, bytes), lesion voxels."""

    spec: CaseSpec
    slices: tuple[tuple[str, bytes], ...]
    truth: tuple[tuple[str, bytes], ...]
    lesion_voxels: int


def render_phantom_series(task: tuple[CaseSpec, PhantomParams]) -> PhantomSeries:
    """Render one case to DICOM files and truth PNGs (module-level for worker processes)."""
    spec, params = task
    slices: list[tuple[str, bytes]] = []
    truth: list[tuple[str, bytes]] = []
    voxels = 0
    rendered = render_case_slices(spec, params)
    for index, (stem, slice_) in enumerate(zip(spec.slice_stems, rendered, strict=True)):
        dataset = phantom_slice_dataset(slice_, spec, index, params)
        slices.append((f"{stem}.dcm", dataset_bytes(dataset)))
        mask = np.where(slice_.lesion, np.uint8(255), np.uint8(0))
        truth.append((f"{stem}.png", encode_png(mask)))
        voxels += int(np.count_nonzero(slice_.lesion))
    return PhantomSeries(spec, tuple(slices), tuple(truth), voxels)


def synthesize_dicom(folder: Path | str, params: PhantomParams, seed: int) -> pd.DataFrame:
    """Write the cases of `params.dicom_subsets` as DICOM series under `folder`:
    `series/<class>_<case>/<slice>.dcm`, `truth/<class>_<case>/<slice>.png` (lesion 255) and
    `cases.csv` (one row per case). Built in a temporary folder, renamed when complete."""
    cases = [spec for spec in plan_cases(params, seed) if spec.subset in params.dicom_subsets]
    rendered = ordered_map(
        render_phantom_series,
        [(spec, params) for spec in cases],
        workers=params.workers,
        description="synthesize dicom",
        chunksize=1,
    )
    voxel_ml = params.pixel_spacing_mm**2 * params.slice_thickness_mm / 1000.0
    rows = []
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        for series in rendered:
            name = case_folder(series.spec)
            for kind, files in (("series", series.slices), ("truth", series.truth)):
                (temporary / kind / name).mkdir(parents=True)
                for file_name, data in files:
                    (temporary / kind / name / file_name).write_bytes(data)
            rows.append(
                {
                    "case_id": series.spec.case_id,
                    "class": series.spec.class_name,
                    "subset": series.spec.subset,
                    "series_instance_uid": case_uid(series.spec, "series"),
                    "series_path": f"series/{name}",
                    "truth_path": f"truth/{name}",
                    "slices": len(series.slices),
                    "lesion_voxels": series.lesion_voxels,
                    "lesion_ml": series.lesion_voxels * voxel_ml,
                }
            )
        table = pd.DataFrame(rows, columns=list(DICOM_CASES_COLUMNS))
        (temporary / DICOM_CASES_FILE).write_text(table.to_csv(index=False, lineterminator="\n"))
    return table
