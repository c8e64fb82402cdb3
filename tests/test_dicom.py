"""DICOM in, DICOM SEG out: the phantom written as CT series, the series reader (grouping,
ordering, HU, geometry, refusals) on the phantom's files and on pydicom's own test files, and
the new-images command on DICOM input, read back with highdicom.

The model is test_inference's tiny fixed-weight model (bright pixels hemorrhagic), or an
oracle forward pass that returns the truth at the model's size, for the volume check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage

from pipeline.classes import SOURCE_CLASSES
from pipeline.dicom import (
    PADDING_HU,
    CtSeries,
    SeriesRefusal,
    is_dicom_input,
    order_along_normal,
    padding_mask,
    read_ct_series,
    slice_normal,
    spacing_problem,
)
from pipeline.infer.dicom_seg import (
    SEGMENTED_PROPERTY_TYPES,
    TRIAGE_METRIC,
    lesion_volumes_ml,
    segment_dicom,
    triage_threshold,
)
from pipeline.infer.inference import Segmenter, segment_files, to_model_input
from pipeline.io import read_image, window_to_uint8, write_png
from pipeline.masks import colour_to_index
from pipeline.params import PhantomParams
from pipeline.synthesize.archive import render_case_slices, synthesize_archive
from pipeline.synthesize.dicom_series import DICOM_CASES_FILE, synthesize_dicom
from pipeline.synthesize.layout import plan_cases
from tests.conftest import project_params, write_project_params
from tests.test_inference import MODEL_SIZE, tiny_model  # noqa: F401 (a pytest fixture)
from tests.test_synthesize import SMALL as SMALL_PHANTOM

ROOT = Path(__file__).resolve().parents[1]
# test_synthesize's small phantom, without the MRI/PET files the DICOM writer never sees.
PHANTOM = {**SMALL_PHANTOM, "files_per_other_modality": 0}
SEED = 11
PARAMS = project_params({"image_size": MODEL_SIZE, "infer": {"batch_size": 4}})
MAX_BYTES = 10**8
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))


@pytest.fixture(scope="module")
def model(request) -> Path:
    """test_inference's tiny model file (bright pixels hemorrhagic, ischemic never)."""
    return request.getfixturevalue("tiny_model")


def phantom_params(**overrides: object) -> PhantomParams:
    return project_params({"phantom": {**PHANTOM, **overrides}}).phantom


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory) -> Path:
    """The Testing cases (one per class) as DICOM, 64 px, 6 slices each."""
    folder = tmp_path_factory.mktemp("dicom") / "phantom_dicom"
    synthesize_dicom(folder, phantom_params(), SEED)
    return folder


def cases(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / DICOM_CASES_FILE, dtype={"case_id": str})


def series_folders(folder: Path) -> list[Path]:
    return [folder / path for path in cases(folder)["series_path"]]


def strict_read(path: Path) -> pydicom.Dataset:
    """Read a file with pydicom's validation raising and every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        previous = pydicom_config.settings.reading_validation_mode
        pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
        try:
            ds = pydicom.dcmread(path)
            ds.pixel_array  # noqa: B018 (decoding must not warn either)
        finally:
            pydicom_config.settings.reading_validation_mode = previous
    return ds


def only_series(items: list) -> list[CtSeries]:
    return [item for item in items if isinstance(item, CtSeries)]


# ---- the phantom as DICOM -------------------------------------------------------------------


def test_phantom_series_are_valid_ct_with_the_rendering_geometry(phantom_dicom):
    params = phantom_params()
    table = cases(phantom_dicom)
    assert sorted(table["class"]) == ["Hemorrhagic", "Ischemic"]
    assert set(table["subset"]) == {"Testing"}
    assert table["series_instance_uid"].is_unique
    studies = set()
    for row in table.itertuples():
        files = sorted((phantom_dicom / row.series_path).iterdir())
        assert len(files) == params.slices_per_case == row.slices
        datasets = [strict_read(path) for path in files]
        for index, ds in enumerate(datasets):
            assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
            assert ds.Modality == "CT" and ds.RescaleType == "HU"
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
            assert [float(v) for v in ds.PixelSpacing] == [params.pixel_spacing_mm] * 2
            assert float(ds.SliceThickness) == params.slice_thickness_mm
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.ImagePositionPatient[2]) == index * params.slice_thickness_mm
            assert ds.SeriesInstanceUID == row.series_instance_uid
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        assert len({ds.StudyInstanceUID for ds in datasets}) == 1
        studies.add(datasets[0].StudyInstanceUID)
    assert len(studies) == len(table)


def test_phantom_dicom_is_deterministic_and_follows_the_seed(tmp_path, phantom_dicom):
    again = tmp_path / "again"
    synthesize_dicom(again, phantom_params(workers=2), SEED)
    files = sorted(p.relative_to(phantom_dicom) for p in phantom_dicom.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (again / relative).read_bytes() == (phantom_dicom / relative).read_bytes()
    other = tmp_path / "other"
    synthesize_dicom(other, phantom_params(), SEED + 1)
    assert set(cases(other)["series_instance_uid"]).isdisjoint(
        cases(phantom_dicom)["series_instance_uid"]
    )


def test_phantom_dicom_holds_the_hu_before_windowing_and_the_truth(tmp_path, phantom_dicom):
    """Stored HU are the rendered HU rounded to whole units (|error| <= 0.5 HU). Windowed, they
    are within 2 grey levels of the archive's PNG: the brain window scales HU by 255/80 =
    3.19 levels, so 0.5 HU moves a pixel by at most 1.6 levels before rounding to an integer."""
    params = phantom_params()
    specs = {spec.case_id: spec for spec in plan_cases(params, SEED)}
    archive = tmp_path / "phantom.zip"
    synthesize_archive(archive, params, SEED)
    with zipfile.ZipFile(archive) as opened:
        members = {name: opened.read(name) for name in opened.namelist()}
    for row in cases(phantom_dicom).itertuples():
        spec = specs[row.case_id]
        voxels = 0
        for stem, rendered in zip(spec.slice_stems, render_case_slices(spec, params), strict=True):
            ds = strict_read(phantom_dicom / row.series_path / f"{stem}.dcm")
            hu = apply_modality_lut(ds.pixel_array, ds)
            assert np.abs(hu - rendered.hu).max() <= 0.5 + 1e-4
            image = cv2.imdecode(
                np.frombuffer(members[spec.member("images", stem)], np.uint8),
                cv2.IMREAD_GRAYSCALE,
            )
            windowed = window_to_uint8(hu, rendered.window_level_hu, rendered.window_width_hu)
            assert np.abs(windowed.astype(int) - image).max() <= 2
            truth = read_image(phantom_dicom / row.truth_path / f"{stem}.png")
            np.testing.assert_array_equal(truth > 0, rendered.lesion)
            voxels += int(np.count_nonzero(rendered.lesion))
        assert voxels == row.lesion_voxels > 0
        voxel_ml = params.pixel_spacing_mm**2 * params.slice_thickness_mm / 1000
        assert row.lesion_ml == pytest.approx(voxels * voxel_ml, rel=1e-6)


# ---- the reader ------------------------------------------------------------------------------


def test_reader_orders_slices_along_the_normal_not_by_file_name(tmp_path, phantom_dicom):
    source = series_folders(phantom_dicom)[0]
    files = sorted(source.iterdir())
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for number, path in enumerate(reversed(files)):  # names now run superior to inferior
        shutil.copy(path, shuffled / f"img{number:02d}")
    (series,) = only_series(list(read_ct_series([shuffled], MAX_BYTES)))
    np.testing.assert_allclose(series.positions_mm, 5.0 * np.arange(len(files)))
    for ds, path, hu in zip(series.datasets, files, series.hu, strict=True):
        original = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == original.SOPInstanceUID
        np.testing.assert_array_equal(hu, apply_modality_lut(original.pixel_array, original))
    assert series.slice_spacing_mm == pytest.approx(5.0)
    assert series.voxel_volume_ml == pytest.approx(0.45 * 0.45 * 5.0 / 1000)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (np.cos, np.sin))
    return (
        np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        @ np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        @ np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    )


angles = st.floats(-np.pi, np.pi, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    angles,
    angles,
    angles,
    st.integers(4, 24),  # with 3, one left out leaves one gap: even by definition
    st.floats(0.5, 10.0),
    st.lists(st.floats(-500, 500), min_size=3, max_size=3),
    st.randoms(use_true_random=False),
)
def test_slices_are_ordered_along_the_normal_whatever_the_orientation_and_file_order(
    yaw, pitch, roll, count, spacing_mm, origin_mm, random
):
    """Slices of any orientation, given in any order, come out in order along the normal with
    their spacing; one slice left out, or one doubled, is refused."""
    matrix = rotation(yaw, pitch, roll)
    orientation = [*matrix[:, 0], *matrix[:, 1]]
    normal = slice_normal(orientation)
    np.testing.assert_allclose(normal, matrix[:, 2], atol=1e-9)
    positions = [np.asarray(origin_mm) + index * spacing_mm * normal for index in range(count)]
    shuffled = list(range(count))
    random.shuffle(shuffled)
    order, along = order_along_normal(orientation, [positions[i] for i in shuffled])
    assert [shuffled[i] for i in order] == list(range(count))
    np.testing.assert_allclose(np.diff(along), spacing_mm, atol=1e-6)
    assert spacing_problem(along) == ""
    missing = random.randrange(1, count - 1)
    assert "uneven slice spacing" in spacing_problem(np.delete(along, missing))
    doubled = np.sort(np.append(along, along[missing]))
    assert "same position" in spacing_problem(doubled)


# pydicom's own CT test files: a 128 px body slice (signed, uncompressed), a 512 px head slice
# in lossy JPEG 2000, and a 512 px head slice in lossless JPEG 2000 with a gantry tilt.
PYDICOM_CT_FILES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")


@pytest.mark.parametrize("name", PYDICOM_CT_FILES)
def test_reader_on_pydicoms_ct_files_matches_apply_modality_lut_and_geometry(name):
    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path)
    (series,) = only_series(list(read_ct_series([path], MAX_BYTES)))
    expected = apply_modality_lut(ds.pixel_array, ds)
    padded = padding_mask(ds, ds.pixel_array)  # 693_J2KI pads with -2000 (494 pixels)
    if padded is not None:
        expected[padded] = PADDING_HU
        assert series.padding_pixels == np.count_nonzero(padded)
    assert series.hu.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_allclose(series.hu[0], expected, atol=1e-3)
    if float(ds.RescaleIntercept) != 0:
        assert (expected != ds.pixel_array).any()  # the rescale really was applied
    assert series.pixel_spacing_mm == tuple(float(v) for v in ds.PixelSpacing)
    assert series.slice_spacing_mm == float(ds.SliceThickness)
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    normal = slice_normal(orientation)
    np.testing.assert_allclose(normal, np.cross(orientation[:3], orientation[3:]), atol=1e-4)
    position = np.dot([float(v) for v in ds.ImagePositionPatient], normal)
    np.testing.assert_allclose(series.positions_mm, [position])
    row_mm, column_mm = series.pixel_spacing_mm
    assert series.voxel_volume_ml == pytest.approx(row_mm * column_mm * ds.SliceThickness / 1e3)


def test_pydicoms_ct_files_get_a_seg_each_unless_they_lack_a_frame_of_reference(tmp_path, model):
    """Real scanners' headers (one with a gantry tilt) are enough for highdicom's SEG; the
    anonymised 693_J2KI.dcm has no FrameOfReferenceUID, which a SEG needs, and is refused."""
    paths = [Path(get_testdata_file(name)) for name in PYDICOM_CT_FILES]
    segmenter = Segmenter.from_file(model, batch_size=4)
    threshold = triage_threshold(tmp_path / "absent.json", 0.1)
    run = segment_dicom(
        segmenter,
        paths,
        tmp_path / "out",
        PARAMS.palette,
        PARAMS.infer,
        threshold,
        "v1",
        PARAMS.extract,
    )
    (refusal,) = run.refused
    assert refusal.series == pydicom.dcmread(paths[1]).SeriesInstanceUID
    assert refusal.reason.startswith("no FrameOfReferenceUID")
    assert len(run.segmented) == 2
    for series in only_series(list(read_ct_series([paths[0], paths[2]], MAX_BYTES))):
        folder = tmp_path / "out" / series.series_instance_uid
        mask = colour_to_index(
            read_image(folder / "masks" / "0001.png", color=True), PARAMS.palette
        )
        np.testing.assert_array_equal(seg_labels(folder / "seg.dcm", series)[0], mask)
        source = series.datasets[0]
        seg = strict_read(folder / "seg.dcm")
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_reader_reads_zips_and_input_kind_is_detected(tmp_path, phantom_dicom):
    archive = tmp_path / "series.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", series_folders(phantom_dicom)[1])
    (series,) = only_series(list(read_ct_series([archive], MAX_BYTES)))
    assert series.sources[0].startswith(f"{archive}!")
    (direct,) = only_series(list(read_ct_series([series_folders(phantom_dicom)[1]], MAX_BYTES)))
    np.testing.assert_array_equal(series.hu, direct.hu)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    write_png(pngs / "a.png", np.zeros((8, 8), np.uint8))
    assert is_dicom_input([archive]) and is_dicom_input([phantom_dicom])
    assert is_dicom_input([CT_SMALL]) and not is_dicom_input([pngs])


def copy_series(source: Path, destination: Path, edit) -> Path:
    """A copy of a series under a new SeriesInstanceUID, each dataset passed through
    `edit(index, ds)` (which returns False to leave a slice out)."""
    destination.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for index, path in enumerate(sorted(source.iterdir())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        if edit(index, ds) is not False:
            ds.save_as(destination / path.name, enforce_file_format=True)
    return destination


# JPEG 2000 Part 2 multi-component: a transfer syntax pydicom has no decoder for at all.
UNDECODABLE_SYNTAX = pydicom.uid.UID("1.2.840.10008.1.2.4.92")


def undecodable_syntax_ct(destination: Path) -> Path:
    """CT_small with its pixel data declared in UNDECODABLE_SYNTAX."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = UNDECODABLE_SYNTAX
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    destination.mkdir(parents=True)
    ds.save_as(destination / "j2k_part2.dcm", enforce_file_format=True)
    return destination


def malformed_inputs(tmp_path: Path, phantom_dicom: Path) -> dict[str, tuple[Path, str]]:
    """Each malformed case of issue 16 as its own folder, and the message it must give."""
    source = series_folders(phantom_dicom)[0]

    def no_spacing(index, ds):
        del ds.PixelSpacing

    def tilted(index, ds):
        if index == 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.43589]

    def gap(index, ds):
        return index != 3

    def short_position(index, ds):
        ds.ImagePositionPatient = [0.0, float(index)]

    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.dcm").write_text("not an image\n")
    mr = tmp_path / "mr"
    mr.mkdir()
    shutil.copy(MR_SMALL, mr / "mr.dcm")
    return {
        "missing PixelSpacing": (
            copy_series(source, tmp_path / "no_spacing", no_spacing),
            "PixelSpacing missing or malformed in 6 of 6 files",
        ),
        "mixed orientations": (
            copy_series(source, tmp_path / "tilted", tilted),
            "mixed orientations",
        ),
        "uneven spacing": (
            copy_series(source, tmp_path / "gap", gap),
            "uneven slice spacing: gaps from 5.000 to 10.000 mm",
        ),
        "compressed": (
            undecodable_syntax_ct(tmp_path / "j2k_part2"),
            "pixel data in JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only) "
            "(1.2.840.10008.1.2.4.92), which pydicom cannot decode",
        ),
        "not CT": (mr, "modality MR, not CT"),
        "malformed header": (
            copy_series(source, tmp_path / "short", short_position),
            "malformed header",
        ),
        "not DICOM": (text, "notes.dcm: not a DICOM file"),
    }


@pytest.fixture(scope="module")
def malformed(tmp_path_factory, phantom_dicom) -> dict[str, tuple[Path, str]]:
    return malformed_inputs(tmp_path_factory.mktemp("malformed"), phantom_dicom)


@pytest.mark.parametrize(
    "case",
    [
        "missing PixelSpacing",
        "mixed orientations",
        "uneven spacing",
        "compressed",
        "not CT",
        "not DICOM",
        "malformed header",
    ],
)
def test_reader_refuses_each_malformed_series_and_reads_the_others(case, malformed, phantom_dicom):
    folder, message = malformed[case]
    good = series_folders(phantom_dicom)[1]
    items = list(read_ct_series([folder, good], MAX_BYTES))
    refusals = [item for item in items if isinstance(item, SeriesRefusal)]
    assert len(refusals) == 1 and message in f"{refusals[0].series}: {refusals[0].reason}"
    (series,) = only_series(items)
    assert series.series_instance_uid == cases(phantom_dicom)["series_instance_uid"][1]


def test_reader_refuses_files_above_the_size_limit(phantom_dicom):
    folder = series_folders(phantom_dicom)[0]
    items = list(read_ct_series([folder], max_file_bytes=1000))
    assert len(items) == 6 and all(isinstance(item, SeriesRefusal) for item in items)
    assert "above the limit of 0.0 MB (infer.max_dicom_file_mb)" in items[0].reason


def test_reader_refuses_slices_above_the_pixel_limit_before_decoding(phantom_dicom):
    folder = series_folders(phantom_dicom)[0]
    (refusal,) = list(read_ct_series([folder], MAX_BYTES, max_pixels=64 * 64 - 1))
    assert isinstance(refusal, SeriesRefusal)
    assert "above the limit of 4095 px (extract.max_pixels)" in refusal.reason
    assert only_series(list(read_ct_series([folder], MAX_BYTES, max_pixels=64 * 64)))


def test_reader_refuses_zips_and_folders_of_too_many_entries_and_reads_the_others(
    tmp_path, phantom_dicom
):
    """extract.max_entries bounds what listing an input costs (zipfile keeps ~0.6 kB a
    member whatever its size); the zip is refused before zipfile parses its directory."""
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for index in range(40):
        (crowded / f"{index:02d}.txt").write_text("not DICOM")
    archive = Path(shutil.make_archive(str(tmp_path / "crowded"), "zip", crowded))
    good = series_folders(phantom_dicom)[1]
    items = list(read_ct_series([archive, crowded, good], MAX_BYTES, max_entries=30))
    refused = {item.series: item.reason for item in items if isinstance(item, SeriesRefusal)}
    assert refused == {
        str(archive): "its central directory declares 40 entries in 2,080 bytes (512 bytes an "
        "entry allowed), over extract.max_entries = 30; refused before reading it",
        str(crowded): "more than extract.max_entries = 30 files and folders; not read",
    }
    (series,) = only_series(items)
    assert series.series_instance_uid == cases(phantom_dicom)["series_instance_uid"][1]


def test_reader_opens_a_zip_once_for_all_its_members_and_closes_it(
    tmp_path, phantom_dicom, monkeypatch
):
    """Reopening the zip for each member parsed its whole directory per member: quadratic in
    the members, hours for a zip of 100,000 small files."""
    archive = tmp_path / "series.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", series_folders(phantom_dicom)[1])
    opened: list[zipfile.ZipFile] = []

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, *arguments, **options) -> None:
            opened.append(self)
            super().__init__(*arguments, **options)

    monkeypatch.setattr(zipfile, "ZipFile", CountingZipFile)
    (series,) = only_series(list(read_ct_series([archive], MAX_BYTES, max_entries=1000)))
    assert len(series.sources) > 1 and [zip_file.filename for zip_file in opened] == [str(archive)]
    assert opened[0].fp is None, "closed once every series is read"


# ---- DICOM in, SEG out -----------------------------------------------------------------------


def seg_labels(seg_path: Path, series: CtSeries) -> np.ndarray:
    """Class-index masks (slices, rows, columns) of a SEG, read back with highdicom on the
    source series' own slices, segment numbers as class indices."""
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in series.datasets],
        segment_numbers=[1, 2],
        combine_segments=True,
    )


def test_round_trip_seg_equals_the_png_path_on_the_same_slices(tmp_path, model, phantom_dicom):
    """Phantom series -> DICOM path -> SEG read back with highdicom, against the PNG path of
    the same model on the same slices: the windowed HU of each slice written as an 8-bit PNG
    (the Kaggle-style input). Same model, same pixels, so the masks must be equal."""
    segmenter = Segmenter.from_file(model, batch_size=4)
    output = tmp_path / "out"
    threshold = triage_threshold(tmp_path / "absent.json", 0.1)
    run = segment_dicom(
        segmenter,
        [phantom_dicom / "series"],
        output,
        PARAMS.palette,
        PARAMS.infer,
        threshold,
        "v1",
        PARAMS.extract,
    )
    assert not run.refused and len(run.segmented) == 2
    for series in only_series(list(read_ct_series([phantom_dicom / "series"], MAX_BYTES))):
        folder = output / series.series_instance_uid
        seg = strict_read(folder / "seg.dcm")
        assert seg.Modality == "SEG" and seg.SeriesInstanceUID != series.series_instance_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
        assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID
        for number, item in enumerate(seg.SegmentSequence, start=1):
            assert item.SegmentLabel == SOURCE_CLASSES[number - 1]
            concept = item.SegmentedPropertyTypeCodeSequence[0]
            expected = SEGMENTED_PROPERTY_TYPES[SOURCE_CLASSES[number - 1]]
            assert (concept.CodeValue, concept.CodingSchemeDesignator) == (
                expected.value,
                "SCT",
            )
            assert item.SegmentAlgorithmType == "AUTOMATIC"
            assert "FlexUNet" in item.SegmentAlgorithmName
        labels = seg_labels(folder / "seg.dcm", series)

        pngs = tmp_path / "png" / series.series_instance_uid
        for position, hu in enumerate(series.hu, start=1):
            write_png(pngs / f"{position:04d}.png", window_to_uint8(hu, 40.0, 80.0))
        segment_files(segmenter, [pngs], pngs / "out", PARAMS.palette, 0.5, PARAMS.extract)
        for position in range(1, len(series.hu) + 1):
            name = f"{position:04d}.png"
            png_path = colour_to_index(
                read_image(pngs / "out" / "masks" / name, color=True), PARAMS.palette
            )
            np.testing.assert_array_equal(labels[position - 1], png_path)
            dicom_mask = read_image(folder / "masks" / name, color=True)
            np.testing.assert_array_equal(colour_to_index(dicom_mask, PARAMS.palette), png_path)
            assert read_image(folder / "overlays" / name, color=True).shape == (64, 64, 3)
        assert (labels == 1).any()  # the tiny model calls bright pixels hemorrhagic

        summary = json.loads((folder / "summary.json").read_text())
        assert summary["volume_ml"] == lesion_volumes_ml(labels, series.voxel_volume_ml)
        largest = summary["largest_lesion_slice"]
        lesion_pixels = np.count_nonzero(labels, axis=(1, 2))
        assert largest["position"] == int(np.argmax(lesion_pixels)) + 1
        assert largest["lesion_pixels"] == lesion_pixels.max()
        assert summary["hemorrhage_present"] == (summary["volume_ml"]["hemorrhagic"] >= 0.1)
    table = pd.read_csv(output / "summary.csv")
    assert sorted(table["series_instance_uid"]) == sorted(
        cases(phantom_dicom)["series_instance_uid"]
    )
    assert set(table["status"]) == {"segmented"}


class OracleForward:
    """A 'model' that returns the truth, one-hot at the model's size (nearest), for the
    slices it was given: the DICOM path's own resizing back to the slice grid is then the
    only thing between the predicted and the true volume."""

    def __init__(self, greys: list[np.ndarray], truths: list[np.ndarray], size: int) -> None:
        self.truth_by_input: dict[str, np.ndarray] = {}
        for grey, truth in zip(greys, truths, strict=True):
            small = cv2.resize(truth, (size, size), interpolation=cv2.INTER_NEAREST)
            self.truth_by_input[self.key(to_model_input(grey, size))] = np.eye(3)[small]

    @staticmethod
    def key(model_input: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(model_input).tobytes()).hexdigest()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([self.truth_by_input[self.key(image)] for image in batch])


@pytest.mark.parametrize("model_size", [64, MODEL_SIZE])
def test_volumes_agree_with_the_phantom_truth(tmp_path, phantom_dicom, model_size):
    """Volumes in mL from the DICOM path, with an oracle that predicts the truth at the
    model's size, against the phantom's true lesion volume (cases.csv, from its params).

    Tolerance, exact rather than guessed. At the slices' own 64 px nothing is resized, so the
    volumes must be equal (to float precision): the geometry read from the DICOM headers and
    the volume code are all that is left. At 32 px the mask goes 64 -> 32 -> 64 px with
    nearest neighbours, which copies one pixel of each 2x2 block over the block: pixels of
    blocks whose truth is uniform come back exact, so the volume error is at most the number
    of pixels in mixed blocks times the voxel volume."""
    table = cases(phantom_dicom)
    all_series = only_series(list(read_ct_series([phantom_dicom / "series"], MAX_BYTES)))
    factor = 64 // model_size
    greys, truths, bounds = [], [], {}
    for series in all_series:
        row = table[table["series_instance_uid"] == series.series_instance_uid].iloc[0]
        class_index = SOURCE_CLASSES.index(row["class"]) + 1
        stems = sorted(p.stem for p in (phantom_dicom / row["series_path"]).iterdir())
        truth = np.stack(
            [read_image(phantom_dicom / row["truth_path"] / f"{stem}.png") > 0 for stem in stems]
        ).astype(np.uint8) * np.uint8(class_index)
        volumes = lesion_volumes_ml(truth, series.voxel_volume_ml)
        assert volumes[row["class"].lower()] == pytest.approx(row["lesion_ml"], rel=1e-9)
        blocks = truth.reshape(len(stems), model_size, factor, model_size, factor)
        mixed = blocks.min(axis=(2, 4)) != blocks.max(axis=(2, 4))
        bound_ml = factor * factor * int(mixed.sum()) * series.voxel_volume_ml
        bounds[series.series_instance_uid] = (row, bound_ml)
        greys.extend(window_to_uint8(hu, 40.0, 80.0) for hu in series.hu)
        truths.extend(truth)
    segmenter = Segmenter(OracleForward(greys, truths, model_size), model_size, batch_size=4)
    output = tmp_path / "out"
    # Below the small hemorrhage's 0.06 mL (58 voxels at 64 px), so the call must say yes.
    threshold = triage_threshold(tmp_path / "absent.json", 0.02)
    segment_dicom(
        segmenter,
        [phantom_dicom / "series"],
        output,
        PARAMS.palette,
        PARAMS.infer,
        threshold,
        "v",
        PARAMS.extract,
    )
    for uid, (row, bound_ml) in bounds.items():
        summary = json.loads((output / uid / "summary.json").read_text())
        predicted = summary["volume_ml"][row["class"].lower()]
        assert abs(predicted - row["lesion_ml"]) <= bound_ml + 1e-9 * row["lesion_ml"]
        assert predicted > 0 and (bound_ml == 0) == (factor == 1)
        other = "ischemic" if row["class"] == "Hemorrhagic" else "hemorrhagic"
        assert summary["volume_ml"][other] == 0.0
        assert summary["hemorrhage_present"] == (row["class"] == "Hemorrhagic")
        assert summary["triage_threshold_ml_hemorrhagic"] == 0.02


def test_triage_threshold_comes_from_the_evaluate_metrics_when_present(tmp_path):
    metrics = tmp_path / "evaluate.json"
    assert triage_threshold(metrics, 0.1).ml == 0.1
    metrics.write_text(json.dumps({"dice_hemorrhagic": 0.9}))
    assert "default" in triage_threshold(metrics, 0.1).source
    metrics.write_text(json.dumps({TRIAGE_METRIC: 2.5}))
    threshold = triage_threshold(metrics, 0.1)
    assert threshold.ml == 2.5 and "validated" in threshold.source


# ---- the command -----------------------------------------------------------------------------


def run_command(tmp_path: Path, model: Path, *inputs: Path) -> subprocess.CompletedProcess:
    params = write_project_params(tmp_path / "params.yaml", {"infer": {"batch_size": 4}})
    return subprocess.run(
        [
            *(sys.executable, "-m", "stages.infer", "--params", str(params), "--model", str(model)),
            *("--input", *map(str, inputs), "--output", str(tmp_path / "out")),
        ],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_refuses_malformed_series_and_segments_the_others(
    tmp_path, model, malformed, phantom_dicom
):
    """One input holding every malformed case and a good series: each refusal is on stderr,
    the good series is segmented, exit status 2 (some refused). Malformed input alone: 1."""
    mixed = tmp_path / "mixed"
    for name, (folder, _) in malformed.items():
        shutil.copytree(folder, mixed / name.replace(" ", "_"))
    good = series_folders(phantom_dicom)[1]
    shutil.copytree(good, mixed / "good")
    result = run_command(tmp_path, model, mixed)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for _, message in malformed.values():
        assert message in result.stderr
    uid = cases(phantom_dicom)["series_instance_uid"][1]
    assert (tmp_path / "out" / uid / "seg.dcm").is_file()
    table = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False)
    assert sorted(table["status"]) == ["refused"] * len(malformed) + ["segmented"]
    assert "segmented 1 series" in result.stderr and f"refused {len(malformed)}" in result.stderr

    alone = tmp_path / "alone"
    alone.mkdir()
    only = run_command(alone, model, malformed["mixed orientations"][0])
    assert only.returncode == 1 and "mixed orientations" in only.stderr
    assert "Traceback" not in only.stderr
