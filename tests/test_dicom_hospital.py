"""DICOM input as a hospital sends it (issue 24): hostile names that would write outside the
output folder, duplicate instances, pixel padding, SEG identity, bounded memory, non-image
instances, orientation and compressed syntaxes.

Series are built here with pydicom from the phantom's own slice writer (small disks of brain
with a bright blob), and segmented in-process with test_inference's numpy forward pass
(bright pixels lean hemorrhagic), so no test needs TensorFlow but the command tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1, SecondaryCaptureImageStorage

from pipeline.dicom import (
    HEADER_PIXELS,
    ORIENTATION_TOLERANCE,
    IgnoredFile,
    SeriesRefusal,
    derived_uid,
    orientation_problem,
    read_ct_series,
)
from pipeline.infer.dicom_seg import segment_dicom, series_folder, triage_threshold
from pipeline.infer.inference import Segmenter
from pipeline.io import DataError
from pipeline.synthesize.dicom_series import phantom_slice_dataset
from pipeline.synthesize.layout import plan_cases
from pipeline.synthesize.rendering import PhantomSlice
from tests.conftest import project_params
from tests.test_dicom import angles, only_series, rotation, run_command, seg_labels
from tests.test_inference import MODEL_SIZE, numpy_forward, tiny_model  # noqa: F401 (fixture)
from tests.test_synthesize import SMALL as SMALL_PHANTOM

ROOT = Path(__file__).resolve().parents[1]
PARAMS = project_params({"image_size": MODEL_SIZE, "infer": {"batch_size": 4}})
PHANTOM = project_params({"phantom": {**SMALL_PHANTOM, "files_per_other_modality": 0}}).phantom
SPEC = plan_cases(PHANTOM, 11)[0]
SIZE_PX = 32
MAX_BYTES = 10**8

Edit = Callable[[int, Dataset], object]


def slice_hu(index: int, size: int = SIZE_PX) -> np.ndarray:
    """A head-like slice: air, a disk of brain (30 HU), a bright blob (70 HU) on slices 1-2."""
    rows, columns = np.mgrid[:size, :size] - (size - 1) / 2.0
    radius = np.hypot(rows, columns)
    hu = np.where(radius < 0.4 * size, 30.0, -1000.0)
    if index in (1, 2):
        hu[np.hypot(rows - 3, columns + 2) < 0.12 * size] = 70.0
    return hu


def rendered_slice(hu: np.ndarray) -> PhantomSlice:
    """`hu` as the phantom writer takes a slice: no lesion or tissue labels (the DICOM writer
    reads only the HU and the window), shown in the brain window W 80 / L 40."""
    no_labels = np.zeros(hu.shape, dtype=np.uint8)
    return PhantomSlice(
        hu=hu,
        clean_hu=hu,
        baseline_hu=hu,
        tissue=no_labels,
        lesion=no_labels.astype(bool),
        window_level_hu=40.0,
        window_width_hu=80.0,
    )


def write_series(
    folder: Path, name: str, *, slices: int = 4, size: int = SIZE_PX, edit: Edit | None = None
) -> Path:
    """A CT series `name` (its UIDs derive from it) as `folder/NNN.dcm`; `edit(index, ds)`
    may change each dataset before it is written, or return False to leave it out."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = derived_uid("test-series", name)
    for index in range(slices):
        ds = phantom_slice_dataset(rendered_slice(slice_hu(index, size)), SPEC, index, PHANTOM)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = derived_uid("test-instance", name, index)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hostile values are the point of some tests
            if edit is not None and edit(index, ds) is False:
                continue
            ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    return folder


def run_segment(
    inputs: list[Path],
    output: Path,
    settings=None,
    tta_flip: bool = False,
    max_head_zoom: float = 1.0,
    segmenter_class: type[Segmenter] = Segmenter,
):
    return segment_dicom(
        segmenter_class(numpy_forward, MODEL_SIZE, 4, tta_flip, max_head_zoom),
        inputs,
        output,
        PARAMS.palette,
        settings or PARAMS.infer,
        triage_threshold(output.parent / "absent.json", 0.1),
        "v1",
        PARAMS.extract,
    )


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def refusals(items: list) -> list[SeriesRefusal]:
    return [item for item in items if isinstance(item, SeriesRefusal)]


def read(inputs: list[Path], **limits) -> list:
    return list(read_ct_series(inputs, MAX_BYTES, **limits))


# ---- 1. names from files never reach outside --output ------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "../victim",  # climbs out of the output folder
        "ABSOLUTE/victim",  # an absolute path (made absolute below)
        "..",  # the output folder's parent itself
        ".",  # the output folder itself
        "1.2.840/../../victim",  # digits first, then a climb
        "1.2.3\nrefused 1.2.3: forged line",  # a forged stderr line
        "1." + "2" * 70,  # digits and dots, but over 64 characters
        "1.02.3",  # a leading zero: outside the UID grammar
    ],
)
def test_a_series_uid_outside_the_uid_grammar_is_refused_and_nothing_leaves_output(
    tmp_path, hostile
):
    """Issue 24, defect 1: a SeriesInstanceUID `../victim` made the command replace the folder
    beside the output (deleting what it held) with its SEG, exit 0."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    uid = hostile.replace("ABSOLUTE", str(tmp_path))

    def hostile_uid(index, ds):
        ds.SeriesInstanceUID = uid

    write_series(tmp_path / "in" / "bad", "bad", edit=hostile_uid)
    write_series(tmp_path / "in" / "good", "good")
    output = tmp_path / "work" / "out"
    before = files_under(tmp_path / "in")
    run = run_segment([tmp_path / "in"], output)
    (refusal,) = run.refused
    assert refusal.series == str(tmp_path / "in" / "bad" / "000.dcm") and refusal.files == 4
    assert "SeriesInstanceUID" in refusal.reason and "is not a DICOM UID" in refusal.reason
    assert "\n" not in refusal.reason  # the value is quoted with repr
    assert [summary["series_instance_uid"] for summary in run.segmented] == [
        derived_uid("test-series", "good")
    ]
    assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(victim)) == ["precious.txt"]
    assert sorted(os.listdir(tmp_path)) == ["in", "victim", "work"]
    assert sorted(os.listdir(tmp_path / "work")) == ["out"]
    assert files_under(tmp_path / "in") == before


def test_a_link_in_output_named_like_a_series_is_not_written_through(tmp_path):
    """A link already in the output folder under the series' name, leading out of it: the
    series is refused, and neither the link nor what it leads to is touched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    write_series(tmp_path / "in", "good")
    output = tmp_path / "out"
    output.mkdir()
    link = output / derived_uid("test-series", "good")
    link.symlink_to(victim, target_is_directory=True)
    run = run_segment([tmp_path / "in"], output)
    (refusal,) = run.refused
    assert "outside the output folder" in refusal.reason and not run.segmented
    assert link.is_symlink() and sorted(os.listdir(victim)) == ["precious.txt"]


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim", "..", "", "a/b", "1.2\x00"])
def test_series_folder_refuses_any_name_that_is_not_a_uid(tmp_path, name):
    """The writer's own check, whatever the reader let through."""
    with pytest.raises(DataError, match="not a DICOM UID"):
        series_folder(tmp_path, name)
    assert series_folder(tmp_path, "1.2.3") == tmp_path / "1.2.3"


@pytest.fixture(scope="module")
def model(request) -> Path:
    """test_inference's tiny model file, for the command tests."""
    return request.getfixturevalue("tiny_model")


def test_the_command_refuses_a_climbing_uid_exit_status_and_victim_intact(tmp_path, model):
    """The issue's case through the command: the hostile series is refused (exit 2 beside a
    good one), the folder beside the output keeps its file."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")

    def climbing(index, ds):
        ds.SeriesInstanceUID = "../victim"

    write_series(tmp_path / "in" / "bad", "bad", edit=climbing)
    write_series(tmp_path / "in" / "good", "good")
    result = run_command(tmp_path, model, tmp_path / "in")
    assert result.returncode == 2, result.stderr
    assert "SeriesInstanceUID '../victim' is not a DICOM UID" in result.stderr
    assert sorted(os.listdir(victim)) == ["precious.txt"]
    assert (tmp_path / "out" / derived_uid("test-series", "good") / "seg.dcm").is_file()


# ---- 3. instances are identified by SOPInstanceUID ----------------------------------------


def test_an_exact_copy_of_an_instance_is_dropped_and_reported(tmp_path):
    """Issue 24, defect 3: a file copied twice gave a SEG referencing one UID at two positions,
    which highdicom could not read back. The copy is dropped and listed; the SEG reads back."""
    folder = write_series(tmp_path / "in", "copied")
    shutil.copy(folder / "001.dcm", folder / "001_copy.dcm")
    run = run_segment([folder], tmp_path / "out")
    assert not run.refused
    (summary,) = run.segmented
    assert summary["slices"] == 4
    assert summary["set_aside"] == [
        {
            "file": str(folder / "001_copy.dcm"),
            "reason": f"a copy of {folder / '001.dcm'} (same SOPInstanceUID and pixels); dropped",
        }
    ]
    (series,) = only_series(read([folder]))
    labels = seg_labels(tmp_path / "out" / summary["series_instance_uid"] / "seg.dcm", series)
    assert labels.shape == (4, SIZE_PX, SIZE_PX) and (labels == 1).any()
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert table["set_aside_files"].tolist() == [1]


def test_two_different_images_sharing_an_instance_uid_refuse_the_series(tmp_path):
    """Different positions (seen in the headers) or different pixels (seen when decoded)."""

    def reused_uid(index, ds):
        if index == 2:
            ds.SOPInstanceUID = derived_uid("test-instance", "reused", 1)

    reused = write_series(tmp_path / "reused", "reused", edit=reused_uid)
    repixelled = write_series(tmp_path / "repixelled", "repixelled")
    changed = pydicom.dcmread(repixelled / "001.dcm")
    pixels = changed.pixel_array.copy()
    pixels[0, 0] += 1
    changed.PixelData = pixels.tobytes()
    changed.save_as(repixelled / "001_changed.dcm", enforce_file_format=True)
    found = {item.series: item.reason for item in refusals(read([reused, repixelled]))}
    uid = derived_uid("test-instance", "reused", 1)
    assert found[derived_uid("test-series", "reused")] == (
        f"two different images share SOPInstanceUID {uid} ({reused / '001.dcm'} and "
        f"{reused / '002.dcm'} differ in ImagePositionPatient); a SEG cannot reference either"
    )
    uid = derived_uid("test-instance", "repixelled", 1)
    assert found[derived_uid("test-series", "repixelled")] == (
        f"two different images share SOPInstanceUID {uid} ({repixelled / '001.dcm'} and "
        f"{repixelled / '001_changed.dcm'} hold different pixels); a SEG cannot reference either"
    )


# ---- 2. pixel padding and the rescale type ------------------------------------------------

OUTSIDE_SCAN = np.hypot(*(np.mgrid[:SIZE_PX, :SIZE_PX] - (SIZE_PX - 1) / 2.0)) >= 0.45 * SIZE_PX


def padded(values: Callable[[np.ndarray], np.ndarray], **header) -> Edit:
    """An edit that stores `values(stored)` outside the scan circle and sets `header`."""

    def edit(index, ds):
        stored = ds.pixel_array.copy()
        stored[OUTSIDE_SCAN] = values(stored)[OUTSIDE_SCAN]
        ds.PixelData = stored.tobytes()
        for keyword, value in header.items():
            setattr(ds, keyword, value)

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        # the case: 16-bit unsigned, 65535 outside the scan circle
        padded(lambda stored: np.full_like(stored, 65535), PixelPaddingValue=65535),
        # a range: every value from 65000 to 65535 (here the limit is written first)
        padded(
            lambda stored: 65000 + (np.arange(stored.size) % 536).reshape(stored.shape),
            PixelPaddingValue=65535,
            PixelPaddingRangeLimit=65000,
        ),
    ],
    ids=["value", "range"],
)
def test_padded_series_give_the_volumes_of_the_unpadded_one(tmp_path, edit):
    """Issue 24, defect 2: 65535 outside the scan circle, declared as PixelPaddingValue, came
    out as 586 mL of hemorrhage. Padding is air before windowing and background after."""
    plain = write_series(tmp_path / "plain", "plain")
    padded_folder = write_series(tmp_path / "padded", "padded", edit=edit)
    run = run_segment([plain, padded_folder], tmp_path / "out")
    assert not run.refused
    by_uid = {summary["series_instance_uid"]: summary for summary in run.segmented}
    unpadded = by_uid[derived_uid("test-series", "plain")]
    with_padding = by_uid[derived_uid("test-series", "padded")]
    assert with_padding["volume_ml"] == unpadded["volume_ml"]
    assert unpadded["volume_ml"]["hemorrhagic"] > 0  # the blob: the check is not vacuous
    assert with_padding["hemorrhage_present"] == unpadded["hemorrhage_present"]
    assert with_padding["padding_pixels"] == 4 * int(OUTSIDE_SCAN.sum())
    assert unpadded["padding_pixels"] == 0


def test_padding_of_a_signed_image_written_as_unsigned_is_found(tmp_path):
    """PixelPaddingValue is US or SS like the pixels: 0x8000 written as US on a signed image
    stands for -32768."""

    def signed(index, ds):
        hu = slice_hu(index)
        hu[OUTSIDE_SCAN] = -32768
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.PixelData = hu.astype("<i2").tobytes()
        ds.add_new("PixelPaddingValue", "US", 0x8000)

    folder = write_series(tmp_path / "signed", "signed", edit=signed)
    (series,) = only_series(read([folder]))
    assert series.padding_pixels == 4 * int(OUTSIDE_SCAN.sum())
    assert (series.hu[:, OUTSIDE_SCAN] == -1000.0).all()


def test_a_rescale_type_other_than_hu_is_refused(tmp_path):
    def optical_density(index, ds):
        ds.RescaleType = "OD"

    folder = write_series(tmp_path / "od", "od", edit=optical_density)
    hounsfield = write_series(tmp_path / "hu", "hu")  # RescaleType HU, as the phantom writes
    items = read([folder, hounsfield])
    (refusal,) = refusals(items)
    assert refusal.reason == "RescaleType OD, not HU: Hounsfield units unknown"
    assert len(only_series(items)) == 1


# ---- 4. the SEG's identity is tied to its content -----------------------------------------


def seg_uids(output: Path, series_uid: str) -> tuple[str, str]:
    seg = pydicom.dcmread(output / series_uid / "seg.dcm")
    return str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID)


def test_seg_uids_follow_the_series_the_model_and_the_settings(tmp_path):
    """Issue 24, defect 4: the UIDs came from the source series and the model alone, so the
    series with a slice removed, or run with flip TTA, gave a different SEG under the same
    UIDs. The same input still gives the same bytes."""
    folder = write_series(tmp_path / "in", "identity", slices=5)
    uid = derived_uid("test-series", "identity")
    run_segment([folder], tmp_path / "first")
    run_segment([folder], tmp_path / "again")
    assert files_under(tmp_path / "first") == files_under(tmp_path / "again")
    reference = seg_uids(tmp_path / "first", uid)

    shorter = write_series(tmp_path / "shorter", "identity", slices=4)  # the top slice gone
    run_segment([shorter], tmp_path / "shorter_out")
    flipped_window = PARAMS.infer.model_copy(update={"window_width_hu": 100.0})
    run_segment([folder], tmp_path / "window", settings=flipped_window)
    run_segment([folder], tmp_path / "tta", tta_flip=True)
    run_segment([folder], tmp_path / "crop", max_head_zoom=2.0)
    others = [
        seg_uids(tmp_path / name, uid) for name in ("shorter_out", "window", "tta", "crop")
    ]
    for sop_uid, seg_series_uid in others:
        assert sop_uid != reference[0] and seg_series_uid != reference[1]
    assert len({uids[0] for uids in others}) == len(others)


def test_a_series_is_cropped_round_its_head_by_one_square_for_all_its_slices(tmp_path):
    """As colorize crops a training case: one square per volume, so its slices keep one
    pixel spacing (the model's batches cut the series in two here)."""
    boxes_seen: list = []

    class RecordingSegmenter(Segmenter):
        def segment(self, greys, boxes=None):
            boxes_seen.extend(boxes)
            return super().segment(greys, boxes)

    folder = write_series(tmp_path / "in", "cropped", slices=6, size=64)
    run = run_segment(
        [folder], tmp_path / "out", max_head_zoom=2.0, segmenter_class=RecordingSegmenter
    )
    assert len(run.segmented) == 1 and len(boxes_seen) == 6
    assert len(set(boxes_seen)) == 1
    # The head, a disk 0.8 of the slice wide, is enlarged: a square of about 52 of 64 px.
    (box,) = set(boxes_seen)
    assert box is not None and 50 <= box.side < 64


# ---- 5. memory per series is bounded ------------------------------------------------------

# segment_dicom in a child process with a model that calls every pixel background (so that
# TensorFlow stays out): prints how far its peak resident memory (VmHWM) rose while it ran.
MEMORY_RUNNER = """
import json, re, sys
from pathlib import Path
import numpy as np
from pipeline.infer.dicom_seg import segment_dicom, triage_threshold
from pipeline.infer.inference import Segmenter
from tests.conftest import project_params

def peak_mb():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024

def background(batch):
    probabilities = np.zeros((*batch.shape[:3], 3), np.float32)
    probabilities[..., 0] = 1.0
    return probabilities

params = project_params(json.loads(sys.argv[1]))
output = Path(sys.argv[2])
before = peak_mb()
run = segment_dicom(
    Segmenter(background, params.image_size, params.infer.batch_size),
    sys.argv[3:], output, params.palette, params.infer,
    triage_threshold(output / "absent.json", 0.1), "v1", params.extract,
)
print(json.dumps({
    "increase_mb": peak_mb() - before,
    "segmented": len(run.segmented),
    "refused": [item.reason for item in run.refused],
}))
"""
# Bounds, with room above what docs/real-data.md measured (1.5 MB, 5.6 bytes a pixel, per 512 x 512
# slice of a series: float32 HU, the 8-bit window, the masks, the SEG's frames): bytes per pixel
# of the whole series, bytes per pixel of one slice (its overlay and PNGs, made one slice at a
# time), and a fixed part (modules and code tables loaded on first use).
SERIES_BYTES_PER_PIXEL = 10
SLICE_BYTES_PER_PIXEL = 12
FIXED_MB = 100


def memory_run(tmp_path: Path, inputs: list[Path], overrides: dict | None = None) -> dict:
    overrides = {"image_size": MODEL_SIZE, **(overrides or {})}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_RUNNER, json.dumps(overrides), str(tmp_path / "out")]
        + [str(path) for path in inputs],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def zipped(folder: Path) -> Path:
    """`folder` as a zip beside it (deflated: all-zero slices compress to almost nothing)."""
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as opened:
        for path in sorted(folder.iterdir()):
            opened.write(path, path.name)
    shutil.rmtree(folder)
    return archive


def zero_pixels(index, ds):
    ds.PixelData = bytes(len(ds.PixelData))


@pytest.fixture(scope="module")
def large_zero_slices(tmp_path_factory) -> Path:
    """Issue 24's small zip of large all-zero slices (here two of 4096 x 4096 px)."""
    folder = tmp_path_factory.mktemp("large") / "zeros"
    return zipped(write_series(folder, "zeros", slices=2, size=4096, edit=zero_pixels))


def test_a_series_over_max_series_pixels_is_refused_before_decoding(tmp_path, large_zero_slices):
    """Issue 24, defect 5: four 4096 x 4096 slices in a 134 KB zip took 2.7 GB."""
    pixels = 2 * 4096 * 4096
    result = memory_run(tmp_path, [large_zero_slices], {"infer": {"max_series_pixels": pixels - 1}})
    assert result["refused"] == [
        f"2 slices of 4096x4096 px = {pixels:,} px, above infer.max_series_pixels = "
        f"{pixels - 1:,}; not decoded"
    ]
    assert result["increase_mb"] < 40, result


def test_a_series_of_more_files_than_headers_may_cost_is_refused_unread(tmp_path):
    """Each file's header costs memory whatever its pixels: a series may hold at most
    infer.max_series_pixels / HEADER_PIXELS files."""
    folder = write_series(tmp_path / "many", "many", slices=5)
    (refusal,) = refusals(read([folder], max_series_pixels=4 * HEADER_PIXELS))
    assert refusal.reason == (
        f"5 files, more than infer.max_series_pixels / {HEADER_PIXELS:,} = 4 (a header costs "
        f"about the memory of {HEADER_PIXELS:,} pixels); not read"
    )
    assert only_series(read([folder], max_series_pixels=5 * HEADER_PIXELS))


def test_memory_of_a_series_grows_by_its_pixels_alone(tmp_path, large_zero_slices):
    """Within the cap, the series costs a bounded number of bytes per pixel: HU converted slice
    by slice into one volume, each decoded slice released."""
    result = memory_run(tmp_path, [large_zero_slices])
    assert result["segmented"] == 1, result
    bound_bytes = (SERIES_BYTES_PER_PIXEL * 2 + SLICE_BYTES_PER_PIXEL) * 4096 * 4096
    assert result["increase_mb"] < FIXED_MB + bound_bytes / 2**20, result  # was 1,350 MB


def test_large_private_elements_are_not_kept(tmp_path):
    """Issue 24: 12 files with a 50 MB private element each (a 0.59 MB zip) took 2.2 GB, every
    header kept whole. Values over 64 KiB are now skipped unread."""

    def private_element(index, ds):
        ds.add_new(0x00091010, "OB", bytes(50_000_000))

    archive = zipped(write_series(tmp_path / "private", "private", slices=12, edit=private_element))
    plain = zipped(write_series(tmp_path / "plain", "plain", slices=12))
    result = memory_run(tmp_path / "private_run", [archive])
    control = memory_run(tmp_path / "plain_run", [plain])
    assert result["segmented"] == control["segmented"] == 1, (result, control)
    # At most one file's worth (infer.max_dicom_file_mb = 64) while it is skipped: not 12.
    assert result["increase_mb"] - control["increase_mb"] < 64, (result, control)


def test_one_series_is_alive_at_a_time(tmp_path):
    """Two series cost what the larger one costs: the first is released before the second
    is read."""
    one = write_series(tmp_path / "one", "one", slices=24, size=512)
    two = write_series(tmp_path / "two", "two", slices=24, size=512)
    alone = memory_run(tmp_path / "alone", [one])
    both = memory_run(tmp_path / "both", [one, two])
    assert alone["segmented"] == 1 and both["segmented"] == 2
    series_mb = 24 * 512 * 512 * 4 / 2**20  # the HU volume alone: 24 MB
    assert both["increase_mb"] < alone["increase_mb"] + series_mb / 2, (alone, both)


# ---- 6. localizers, secondary captures, DICOMDIR and OS metadata --------------------------


def add_non_images(folder: Path, name: str) -> dict[str, str]:
    """A localizer (coronal, another size, no slice of the axial stack) and a secondary
    capture (no PixelSpacing) added to the series `name` in `folder`: {file: why}."""

    def localizer(index, ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.SOPInstanceUID = derived_uid("test-localizer", name)
        return index == 0

    def secondary_capture(index, ds):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = derived_uid("test-capture", name)
        del ds.PixelSpacing
        return index == 0

    write_series(folder / "scout", name, slices=1, size=48, edit=localizer)
    write_series(folder / "capture", name, slices=1, edit=secondary_capture)
    return {
        str(folder / "scout" / "000.dcm"): "a localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER); "
        "set aside",
        str(folder / "capture" / "000.dcm"): "a Secondary Capture Image Storage instance, not a "
        "CT slice; set aside",
    }


def test_localizers_and_secondary_captures_are_set_aside_and_the_series_segmented(tmp_path):
    """Issue 24: a scout or a secondary capture in a series refused it ("mixed orientations",
    "PixelSpacing missing")."""
    folder = write_series(tmp_path / "in", "study")
    expected = add_non_images(folder, "study")
    run = run_segment([folder], tmp_path / "out")
    assert not run.refused
    (summary,) = run.segmented
    assert summary["slices"] == 4
    assert {item["file"]: item["reason"] for item in summary["set_aside"]} == expected


def test_a_series_of_localizers_alone_is_refused_naming_one(tmp_path):
    def localizer(index, ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    folder = write_series(tmp_path / "scouts", "scouts", slices=2, edit=localizer)
    (refusal,) = refusals(read([folder]))
    assert refusal.reason.startswith(f"no CT slices among its files (e.g. {folder / '000.dcm'}: ")


def dicom_tree_with_os_metadata(root: Path) -> Path:
    """A series as it comes off a CD or out of a Mac's zip: DICOMDIR, __MACOSX, ._ and
    .DS_Store files beside the slices."""
    folder = write_series(root / "disc", "disc")
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._000.dcm").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / "._001.dcm").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return folder


def test_dicomdir_and_os_metadata_are_ignored(tmp_path):
    """Issue 24: a DICOMDIR or macOS `__MACOSX/._*` files turned exit 0 into 2."""
    folder = dicom_tree_with_os_metadata(tmp_path)
    archive = shutil.make_archive(str(tmp_path / "disc"), "zip", folder)
    for source in (folder, Path(archive)):
        items = read([source])
        assert not refusals(items) and len(only_series(items)) == 1
        ignored = {
            Path(item.name.split("!")[-1]).name: item.reason
            for item in items
            if isinstance(item, IgnoredFile)
        }
        assert ignored == {
            "DICOMDIR": "a DICOMDIR index (the files it lists are read directly)",
            "._000.dcm": "macOS archive metadata (__MACOSX)",
            "._001.dcm": "macOS resource fork (._ file)",
            ".DS_Store": "operating system metadata",
        }


def test_the_command_exits_0_on_a_hospital_export(tmp_path, model):
    """Localizer, secondary capture, a copied instance, DICOMDIR and Mac metadata around one
    series: segmented, each set-aside or ignored file named on stderr, exit status 0."""
    folder = dicom_tree_with_os_metadata(tmp_path)
    add_non_images(folder, "disc")
    shutil.copy(folder / "002.dcm", folder / "002 copy.dcm")
    result = run_command(tmp_path, model, folder)
    assert result.returncode == 0, result.stderr
    assert "refused" not in result.stderr.replace("refused 0", "")
    # A log line ends in its message after the logger name ("... pipeline.infer.dicom_seg:
    # ignored ...").
    logger = "pipeline.infer.dicom_seg: "
    messages = [line.partition(logger)[2] for line in result.stderr.splitlines()]
    assert sum(message.startswith("set aside ") for message in messages) == 3
    assert sum(message.startswith("ignored ") for message in messages) == 4
    assert "ignored 4 files" in result.stderr


# ---- 8. orientation validated up front ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(angles, angles, angles, st.integers(0, 5), st.sampled_from([-1.0, 1.0]))
def test_any_rotation_passes_and_a_cosine_off_by_more_than_the_tolerance_does_not(
    yaw, pitch, roll, component, sign
):
    matrix = rotation(yaw, pitch, roll)
    orientation = np.array([*matrix[:, 0], *matrix[:, 1]])
    assert orientation_problem(orientation) == ""
    nudged = orientation.copy()
    nudged[component] += sign * 3 * ORIENTATION_TOLERANCE
    row, column = nudged[:3], nudged[3:]
    off = max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(column) - 1), abs(row @ column))
    assert (orientation_problem(nudged) != "") == (off > ORIENTATION_TOLERANCE)


@pytest.mark.parametrize(
    ("cosines", "message"),
    [
        ([1.01, 0, 0, 0, 1, 0], "direction cosines of length 1.010000, 1.000000, not 1"),
        ([1, 0, 0, 0.3, 0.953939, 0], "not at right angles (dot 0.300000)"),
    ],
)
def test_orientations_that_are_not_unit_and_orthogonal_are_refused_before_decoding(
    tmp_path, cosines, message
):
    def skewed(index, ds):
        ds.ImageOrientationPatient = cosines

    folder = write_series(tmp_path / "skewed", "skewed", edit=skewed)
    (refusal,) = refusals(read([folder]))
    assert message in refusal.reason and str(folder / "000.dcm") in refusal.reason


def test_slices_within_the_orientation_tolerance_get_a_seg(tmp_path):
    """Issue 24: cosines 5e-5 apart passed the reader (tolerance 1e-4) and then failed in
    highdicom ("Source images must have a shared orientation"), after inference. The SEG is
    given the one orientation the reader accepted."""

    def wobbling(index, ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 5e-5 * (index % 2)]

    folder = write_series(tmp_path / "wobbling", "wobbling", edit=wobbling)
    run = run_segment([folder], tmp_path / "out")
    assert not run.refused, run.refused
    (series,) = only_series(read([folder]))
    seg_path = tmp_path / "out" / series.series_instance_uid / "seg.dcm"
    assert seg_labels(seg_path, series).shape == (4, SIZE_PX, SIZE_PX)


# ---- 7. JPEG Lossless and 12-bit JPEG ------------------------------------------------------


def jpeg_lossless(stored: np.ndarray, bits: int = 16) -> bytes:
    """A JPEG Lossless (process 14, selection value 1) stream of an unsigned image: no encoder
    for it is on PyPI, so this one writes it. One Huffman table gives each difference category
    (0-16) a 5-bit code; differences are taken modulo 2**16 (ITU T.81 H.1.2)."""
    rows, columns = stored.shape
    values = stored.astype(np.int64)
    predicted = np.empty_like(values)
    predicted[0, 0] = 1 << (bits - 1)
    predicted[0, 1:] = values[0, :-1]  # first row: the left neighbour
    predicted[1:, 0] = values[:-1, 0]  # first column: the one above
    predicted[1:, 1:] = values[1:, :-1]  # selection value 1: the left neighbour
    bit_string = []
    for difference in ((values - predicted) % 65536).ravel().tolist():
        difference = difference - 65536 if difference > 32768 else difference
        category = abs(difference).bit_length()
        bit_string.append(format(category, "05b"))
        if 0 < category < 16:
            extra = difference if difference > 0 else difference - 1
            bit_string.append(format(extra & ((1 << category) - 1), f"0{category}b"))
    bit_string = "".join(bit_string)
    bit_string += "1" * (-len(bit_string) % 8)
    scan = bytes(int(bit_string[at : at + 8], 2) for at in range(0, len(bit_string), 8))
    scan = scan.replace(b"\xff", b"\xff\x00")
    frame = (
        bytes([bits]) + rows.to_bytes(2, "big") + columns.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    )
    huffman = b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    start_of_scan = b"\x01\x01\x00\x01\x00\x00"

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    return (
        b"\xff\xd8"
        + segment(0xC3, frame)
        + segment(0xC4, huffman)
        + segment(0xDA, start_of_scan)
        + scan
        + b"\xff\xd9"
    )


def test_jpeg_lossless_ct_decodes_to_the_same_hu(tmp_path):
    """Issue 24: JPEG Lossless (process 14, SV1), the usual lossless CT syntax, could not be
    decoded; pylibjpeg-libjpeg (pinned in requirements) decodes it."""

    def compressed(index, ds):
        ds.PixelData = encapsulate([jpeg_lossless(ds.pixel_array)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1

    plain = write_series(tmp_path / "plain", "lossless")
    lossless = write_series(tmp_path / "lossless", "lossless", edit=compressed)
    assert pydicom.dcmread(lossless / "000.dcm").file_meta.TransferSyntaxUID == JPEGLosslessSV1
    (expected,) = only_series(read([plain]))
    (series,) = only_series(read([lossless]))
    np.testing.assert_array_equal(series.hu, expected.hu)


def twelve_bit_jpeg(tmp_path: Path) -> Path:
    """pydicom's 12-bit JPEG Extended test image (NM, 1024 x 256) as one CT slice."""
    source = pydicom.dcmread(Path(get_testdata_file("JPGExtended.dcm")))

    def twelve_bit(index, ds):
        for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelData"):
            setattr(ds, keyword, source[keyword].value)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
        return index == 0

    return write_series(tmp_path / "twelve", "twelve", slices=1, edit=twelve_bit)


def test_12_bit_jpeg_extended_ct_decodes(tmp_path):
    """Issue 24: 12-bit JPEG Extended was reported decodable (Pillow is installed) and then
    failed (Pillow reads 8-bit JPEG only); pylibjpeg-libjpeg decodes it."""
    folder = twelve_bit_jpeg(tmp_path)
    (series,) = only_series(read([folder]))
    stored = pydicom.dcmread(Path(get_testdata_file("JPGExtended.dcm"))).pixel_array
    assert stored.max() > 255  # more than 8 bits really are used
    np.testing.assert_array_equal(series.hu[0], stored.astype(np.float32) - 1024.0)


def test_12_bit_jpeg_without_a_decoder_for_it_is_refused_before_decoding(tmp_path):
    """Where pylibjpeg is not installed (here: made unimportable in a child process), Pillow
    alone claims JPEG Extended; the series is refused from its headers with what to install,
    instead of failing in the decoder."""
    folder = twelve_bit_jpeg(tmp_path)
    without_pylibjpeg = (
        "import sys; sys.modules['pylibjpeg'] = sys.modules['libjpeg'] = None\n"
        "from pipeline.dicom import read_ct_series\n"
        "print(*(item.reason for item in read_ct_series(sys.argv[1:], 10**8)), sep='\\n')"
    )
    done = subprocess.run(
        [sys.executable, "-c", without_pylibjpeg, str(folder)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == (
        "pixel data in JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51) with 12 bits, "
        "and no decoder for JPEG above 8 bits is installed (install pylibjpeg-libjpeg) "
        f"(e.g. {folder / '000.dcm'})"
    ), done.stderr[-2000:]
