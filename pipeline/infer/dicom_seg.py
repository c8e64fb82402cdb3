"""Segment DICOM CT series and write DICOM SEG, overlays and lesion volumes (the new-images
command with DICOM input).

For each series `pipeline.dicom.read_ct_series` accepts: window the HU with the brain window
the model was trained with (`infer.window_level_hu` / `window_width_hu`), predict each slice
(resized to the model, its probabilities back to the slice grid, as for PNG input), and write

    OUT/<SeriesInstanceUID>/seg.dcm        DICOM Segmentation (highdicom), one segment per class
    OUT/<SeriesInstanceUID>/overlays/NNNN.png, masks/NNNN.png   per slice, NNNN = 1-based
                                           position along the slice normal (inferior first)
    OUT/<SeriesInstanceUID>/summary.json   volumes in mL, largest-lesion slice, triage call
    OUT/summary.csv                        one row per series, refused ones included

Volumes count predicted voxels times PixelSpacing (rows x columns) x the spacing between
slice centres (SliceThickness for a one-slice series); padding pixels are never lesion. Each
series folder, checked to lie inside OUT (`series_folder`), is built in a temporary folder and
renamed into place when complete. The SEG's UIDs derive from its content (`seg_identity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.classes import HEMORRHAGIC, ISCHEMIC, SOURCE_CLASSES, metric_label
from pipeline.dicom import (
    CtSeries,
    IgnoredFile,
    SeriesRefusal,
    derived_uid,
    read_ct_series,
    uid_problem,
)
from pipeline.headcrop import volume_box
from pipeline.infer.inference import Segmenter, batches, write_slice_outputs
from pipeline.io import (
    DataError,
    atomic_path,
    sha256_hex,
    window_to_uint8,
    write_json,
    write_text_atomic,
)
from pipeline.masks import Palette
from pipeline.params import ExtractParams, InferParams

LOG = logging.getLogger(__name__)

ALGORITHM_NAME = "stroke-ct FlexUNet lesion segmentation"
# SNOMED CT morphologic abnormalities. pydicom's code dictionary has Hemorrhage (50960005,
# also in DICOM CID 7159 "Lesion Segmentation Types") but no infarct, so Infarct (55641003)
# is written out here.
SEGMENTED_PROPERTY_TYPES: dict[str, hd.sr.CodedConcept] = {
    HEMORRHAGIC: hd.sr.CodedConcept(
        codes.SCT.Hemorrhage.value, codes.SCT.Hemorrhage.scheme_designator, "Hemorrhage"
    ),
    ISCHEMIC: hd.sr.CodedConcept("55641003", "SCT", "Infarct"),
}
SUMMARY_COLUMNS = (
    "series_instance_uid",
    "status",
    "reason",
    "slices",
    *(f"volume_ml_{metric_label(name)}" for name in SOURCE_CLASSES),
    "largest_lesion_slice",
    "hemorrhage_present",
    "triage_threshold_ml_hemorrhagic",
    "seg_path",
    "set_aside_files",
)
TRIAGE_METRIC = "triage_threshold_ml_hemorrhagic"
# Where the SEG's content date and time come from, in this order (`content_date_time`), and the
# DA and TM forms (PS3.5 6.2) they must have.
CONTENT_DATE_TIME_KEYWORDS = (
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("StudyDate", "StudyTime"),
)
DA_PATTERN = re.compile(r"[0-9]{8}")
TM_PATTERN = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")


@dataclass(frozen=True)
class TriageThreshold:
    """The hemorrhage volume (mL) from which a series is called "hemorrhage present"."""

    ml: float
    source: str  # where it came from: the evaluate metrics file, or the params default


def triage_threshold(metrics_path: Path | str, default_ml: float) -> TriageThreshold:
    """The evaluate stage's validated threshold when its metrics hold one, else the default.

    `metrics_path` is metrics/evaluate.json or an exported model's metadata.json, which holds
    the same key in its `evaluation` section (pipeline/report/export.py)."""
    path = Path(metrics_path)
    if path.is_file():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            value = document.get("evaluation", document).get(TRIAGE_METRIC)
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not a readable metrics file ({error})") from None
        if isinstance(value, (int, float)) and value >= 0:
            return TriageThreshold(float(value), f"{path} ({TRIAGE_METRIC}, validated)")
    return TriageThreshold(default_ml, f"params infer.{TRIAGE_METRIC} (default, not validated)")


def segment_descriptions(model_version: str) -> list[hd.seg.SegmentDescription]:
    """One segment per lesion class, numbered like the class indices (1 Hemorrhagic, 2
    Ischemic), with the algorithm that made them."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=class_name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=SEGMENTED_PROPERTY_TYPES[class_name],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Brain],
        )
        for number, class_name in enumerate(SOURCE_CLASSES, start=1)
    ]


def seg_identity(
    series: CtSeries,
    labels: np.ndarray,
    model_version: str,
    settings: InferParams,
    segmenter: Segmenter,
) -> str:
    """sha256 (hex) of everything that determines a SEG: the source instances in order (their
    SOPInstanceUIDs and HU), the model, the settings that change predictions (the window, flip
    TTA and the head crop's zoom cap) and the predicted labels themselves. The SEG's UIDs
    derive from it, so two different SEGs never share a UID, and the same input gives the same
    bytes."""
    digest = hashlib.sha256()
    settings_used = (
        settings.window_level_hu,
        settings.window_width_hu,
        segmenter.tta_flip,
        segmenter.max_head_zoom,
    )
    instances = (str(ds.SOPInstanceUID) for ds in series.datasets)
    for part in (model_version, *settings_used, *instances):
        digest.update(f"{part}\n".encode())
    digest.update(np.ascontiguousarray(series.hu, dtype=np.float32).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).data)
    return digest.hexdigest()


def build_segmentation(
    series: CtSeries, labels: np.ndarray, model_version: str, identity: str
) -> hd.seg.Segmentation:
    """DICOM SEG of class-index masks (slices, rows, columns) on the series' own slices,
    its UIDs derived from `identity` (`seg_identity`)."""
    with warnings.catch_warnings():
        # highdicom warns about the source's one-part PatientName (common after anonymisation);
        # the SEG copies it as it is, so the warning would only puzzle the user.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        return _segmentation(series, labels, model_version, identity)


def content_date_time(source: Dataset) -> tuple[str, str]:
    """The SEG's content date and time: the source image's own (ContentDate/Time, else
    SeriesDate/Time, else StudyDate/Time), never the clock, so the same input gives the same
    bytes; 19700101 000000 when the source holds no well-formed pair."""
    for date_keyword, time_keyword in CONTENT_DATE_TIME_KEYWORDS:
        date, time = str(source.get(date_keyword, "")), str(source.get(time_keyword, ""))
        if DA_PATTERN.fullmatch(date) and TM_PATTERN.fullmatch(time):
            return date, time
    return "19700101", "000000"


def _segmentation(
    series: CtSeries, labels: np.ndarray, model_version: str, identity: str
) -> hd.seg.Segmentation:
    content_date, content_time = content_date_time(series.datasets[0])
    segmentation = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(model_version),
        series_instance_uid=derived_uid("seg-series", series.series_instance_uid, identity),
        series_number=int(series.datasets[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=derived_uid("seg-instance", series.series_instance_uid, identity),
        instance_number=1,
        manufacturer="stroke-ct pipeline (research use only)",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=model_version,
        device_serial_number="none",
        content_description="Lesion segmentation (research tool, not a medical device)",
        content_label="LESIONS",
        omit_empty_frames=False,
        content_date=content_date,
        content_time=content_time,
    )
    # highdicom stamps the instance with the clock and a random dimension organisation UID;
    # the content's date and a derived UID make the same input give the same bytes.
    segmentation.InstanceCreationDate = content_date
    segmentation.InstanceCreationTime = content_time
    stamps = {
        "ContributionDateTime": content_date + content_time,
        "DimensionOrganizationUID": derived_uid(
            "seg-dimensions", series.series_instance_uid, identity
        ),
    }
    for element in segmentation.iterall():
        if element.keyword in stamps:
            element.value = stamps[element.keyword]
    return segmentation


def largest_lesion_slice(series: CtSeries, labels: np.ndarray) -> dict[str, object] | None:
    """The slice with the most lesion pixels (any class), or None when there is no lesion."""
    lesion_pixels = np.count_nonzero(labels, axis=(1, 2))
    if not lesion_pixels.any():
        return None
    index = int(np.argmax(lesion_pixels))
    row_mm, column_mm = series.pixel_spacing_mm
    dataset = series.datasets[index]
    return {
        "position": index + 1,
        "instance_number": int(dataset.get("InstanceNumber", 0) or 0),
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "position_mm": float(series.positions_mm[index]),
        "lesion_pixels": int(lesion_pixels[index]),
        "lesion_area_mm2": float(lesion_pixels[index] * row_mm * column_mm),
    }


def lesion_volumes_ml(labels: np.ndarray, voxel_volume_ml: float) -> dict[str, float]:
    """Volume per lesion class in mL: voxels of class index i (1-based) x voxel volume."""
    return {
        metric_label(class_name): float(np.count_nonzero(labels == index) * voxel_volume_ml)
        for index, class_name in enumerate(SOURCE_CLASSES, start=1)
    }


def series_summary(
    series: CtSeries, labels: np.ndarray, threshold: TriageThreshold, settings: InferParams
) -> dict[str, object]:
    volumes = lesion_volumes_ml(labels, series.voxel_volume_ml)
    return {
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": str(series.datasets[0].get("StudyInstanceUID", "")),
        "slices": len(series.datasets),
        "rows": int(labels.shape[1]),
        "columns": int(labels.shape[2]),
        "pixel_spacing_mm": list(series.pixel_spacing_mm),
        "slice_spacing_mm": series.slice_spacing_mm,
        "voxel_volume_ml": series.voxel_volume_ml,
        "window_level_hu": settings.window_level_hu,
        "window_width_hu": settings.window_width_hu,
        "volume_ml": volumes,
        "padding_pixels": series.padding_pixels,
        "largest_lesion_slice": largest_lesion_slice(series, labels),
        "hemorrhage_present": volumes[metric_label(HEMORRHAGIC)] >= threshold.ml,
        "triage_threshold_ml_hemorrhagic": threshold.ml,
        "triage_threshold_source": threshold.source,
        "set_aside": [{"file": name, "reason": reason} for name, reason in series.set_aside],
        "note": "research tool, not a medical device",
    }


def series_folder(output_dir: Path, series_instance_uid: str) -> Path:
    """OUT/<SeriesInstanceUID>, checked to lie inside OUT before anything is written there;
    DataError otherwise. The reader already refuses names outside the UID grammar; this check
    holds whatever the name, and also refuses a link at that name that leads out of OUT."""
    problem = uid_problem(series_instance_uid, "SeriesInstanceUID")
    if problem:
        raise DataError(f"{problem}; it would name the output folder")
    folder = output_dir / series_instance_uid
    root = Path(os.path.realpath(output_dir))
    resolved = Path(os.path.realpath(folder))
    if resolved == root or not resolved.is_relative_to(root):
        raise DataError(f"{folder} leads to {resolved}, outside the output folder {root}")
    return folder


def segment_series(
    segmenter: Segmenter,
    series: CtSeries,
    output_dir: Path,
    palette: Palette,
    settings: InferParams,
    threshold: TriageThreshold,
    model_version: str,
) -> dict[str, object]:
    """Predict one series and write its folder; returns its summary. DataError when no SEG
    can be made on it (nothing is written then)."""
    if any(not ds.get("FrameOfReferenceUID") for ds in series.datasets):
        raise DataError(
            "no FrameOfReferenceUID (anonymisers sometimes remove it): a DICOM SEG must share "
            "its source's frame of reference"
        )
    target = series_folder(output_dir, series.series_instance_uid)
    greys = [
        window_to_uint8(slice_hu, settings.window_level_hu, settings.window_width_hu)
        for slice_hu in series.hu
    ]
    # One square round the whole series' head, as colorize crops a training case: the
    # volume keeps one pixel spacing.
    box = volume_box(greys, segmenter.max_head_zoom)
    labels: list[np.ndarray] = []
    for chunk in batches(greys, segmenter.batch_size):
        labels.extend(segmenter.segment(chunk, [box] * len(chunk)))
    volume = np.stack(labels)
    del labels
    if series.padding is not None:
        volume[series.padding] = 0  # padding lies outside the scan: never a lesion
    summary = series_summary(series, volume, threshold, settings)
    with atomic_path(target) as folder:
        folder.mkdir(parents=True)
        try:
            identity = seg_identity(series, volume, model_version, settings, segmenter)
            segmentation = build_segmentation(series, volume, model_version, identity)
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            # highdicom checks the source images against the SEG's needs (patient, study, ...)
            raise DataError(f"no DICOM SEG can be built on this series ({error})") from None
        segmentation.save_as(folder / "seg.dcm")
        for position, (grey, mask) in enumerate(zip(greys, volume, strict=True), start=1):
            write_slice_outputs(
                folder, f"{position:04d}.png", grey, mask, palette, settings.overlay_alpha
            )
        write_json(folder / "summary.json", summary)
    return summary


@dataclass
class DicomRun:
    """What the DICOM command did: a summary per segmented series, refusals with reasons."""

    segmented: list[dict[str, object]] = field(default_factory=list)
    refused: list[SeriesRefusal] = field(default_factory=list)
    ignored: list[IgnoredFile] = field(default_factory=list)  # no part of any series


def summary_row(
    summary: dict[str, object] | None, refusal: SeriesRefusal | None
) -> dict[str, object]:
    if refusal is not None:
        empty = dict.fromkeys(SUMMARY_COLUMNS, "")
        return {
            **empty,
            "series_instance_uid": refusal.series,
            "status": "refused",
            "reason": refusal.reason,
        }
    assert summary is not None
    volumes = summary["volume_ml"]
    largest = summary["largest_lesion_slice"]
    return {
        "series_instance_uid": summary["series_instance_uid"],
        "status": "segmented",
        "reason": "",
        "slices": summary["slices"],
        **{f"volume_ml_{label}": round(volume, 4) for label, volume in volumes.items()},
        "largest_lesion_slice": largest["position"] if largest else "",
        "hemorrhage_present": summary["hemorrhage_present"],
        "triage_threshold_ml_hemorrhagic": summary["triage_threshold_ml_hemorrhagic"],
        "seg_path": f"{summary['series_instance_uid']}/seg.dcm",
        "set_aside_files": len(summary["set_aside"]),
    }


def _segment_or_refusal(
    series: CtSeries,
    segmenter: Segmenter,
    output_dir: Path,
    palette: Palette,
    settings: InferParams,
    threshold: TriageThreshold,
    model_version: str,
    run: DicomRun,
) -> SeriesRefusal | None:
    """Segment one series into `run`, or the refusal that says why it could not be."""
    try:
        summary = segment_series(
            segmenter, series, output_dir, palette, settings, threshold, model_version
        )
    except DataError as error:
        return SeriesRefusal(series.series_instance_uid, str(error), len(series.datasets))
    for name, reason in series.set_aside:
        LOG.warning(f"set aside {name}: {reason}")
    run.segmented.append(summary)
    return None


def segment_dicom(
    segmenter: Segmenter,
    inputs: Sequence[Path | str],
    output_dir: Path | str,
    palette: Palette,
    settings: InferParams,
    threshold: TriageThreshold,
    model_version: str,
    rules: ExtractParams,
) -> DicomRun:
    """Every series of the inputs, read within extract's limits (`rules`: pixels per slice,
    files per zip or folder) like the new PNG images: segmented, or refused with its reason
    on stderr (the other series still run); OUT/summary.csv lists both."""
    output_dir = Path(output_dir)
    run = DicomRun()
    rows: list[dict[str, object]] = []
    max_bytes = int(settings.max_dicom_file_mb * 1e6)
    series = read_ct_series(
        inputs, max_bytes, rules.max_pixels, rules.max_entries, settings.max_series_pixels
    )
    for item in series:
        if isinstance(item, IgnoredFile):
            LOG.warning(f"ignored {item.name}: {item.reason}")
            run.ignored.append(item)
            continue
        if isinstance(item, CtSeries):
            # Rebinding `item` drops the series before the reader loads the next one.
            item = _segment_or_refusal(
                item, segmenter, output_dir, palette, settings, threshold, model_version, run
            )
        if item is not None:
            files = f" ({item.files} files)" if item.files > 1 else ""
            LOG.warning(f"refused {item.series}{files}: {item.reason}")
            run.refused.append(item)
        rows.append(summary_row(run.segmented[-1] if item is None else None, item))
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    write_text_atomic(output_dir / "summary.csv", table.to_csv(index=False, lineterminator="\n"))
    return run


def model_version(path: Path | str) -> str:
    """The model file's sha256, shortened: names the exact weights in the SEG."""
    return sha256_hex(Path(path).read_bytes())[:16]
