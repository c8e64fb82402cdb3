"""Issue 24's DICOM cases through the new-images command: exit status, peak memory and what
came out, for this checkout or another (`--project`, e.g. an older commit exported with
`git archive`), to build a before/after table.

Each case is built with the tests' own builders (tests/test_dicom_hospital.py) in a temporary
folder and run as `python -m stages.infer` in a child process with a tiny 1x1 model
(benchmarks/dicom_memory.py's runner: TensorFlow loaded, peak VmHWM read at exit).
`--without-pylibjpeg` makes pylibjpeg unimportable in the child, as before it was a
dependency.

    nice -n 10 .venv/bin/python benchmarks/dicom_cases.py [--project DIR] [--without-pylibjpeg]

About five minutes on 2 cores. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import highdicom  # noqa: E402
import pydicom  # noqa: E402

from benchmarks import dicom_memory  # noqa: E402
from pipeline.dicom import derived_uid  # noqa: E402
from tests import test_dicom_hospital as cases  # noqa: E402

HIDE_PYLIBJPEG = "import sys; sys.modules['pylibjpeg'] = sys.modules['libjpeg'] = None\n"


def climbing(index, ds):
    ds.SeriesInstanceUID = "../victim"


def wobbling(index, ds):
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 5e-5 * (index % 2)]


def reused_uid(index, ds):
    if index == 2:
        ds.SOPInstanceUID = derived_uid("test-instance", "reused", 1)


def build(name: str, root: Path) -> Path:
    """The input folder of case `name` under `root`."""
    folder = root / name
    if name == "climbing_uid":
        cases.write_series(folder, "climbing", edit=climbing)
        (root / "run_climbing_uid" / "victim").mkdir(parents=True)
        (root / "run_climbing_uid" / "victim" / "precious.txt").write_text("keep me")
    elif name == "padding_65535":
        edit = cases.padded(lambda stored: stored * 0 + 65535, PixelPaddingValue=65535)
        cases.write_series(folder, "padded", edit=edit)
    elif name == "copied_instance":
        cases.write_series(folder, "copied")
        shutil.copy(folder / "001.dcm", folder / "001_copy.dcm")
    elif name == "two_images_one_uid":
        cases.write_series(folder, "reused", edit=reused_uid)
    elif name in ("seg_uid_full", "seg_uid_one_slice_less"):
        cases.write_series(folder, "identity", slices=5 if name.endswith("full") else 4)
    elif name == "localizer_and_capture":
        cases.write_series(folder, "study")
        cases.add_non_images(folder, "study")
    elif name == "dicomdir_and_mac_files":
        shutil.move(cases.dicom_tree_with_os_metadata(root / "tree"), folder)
    elif name == "jpeg_lossless":
        cases.write_series(folder, "lossless", edit=jpeg_lossless)
    elif name == "jpeg_12_bit":
        shutil.move(cases.twelve_bit_jpeg(root / "twelve_tree"), folder)
    elif name == "orientation_5e-5":
        cases.write_series(folder, "wobbling", edit=wobbling)
    return folder


def jpeg_lossless(index, ds):
    ds.PixelData = cases.encapsulate([cases.jpeg_lossless(ds.pixel_array)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = cases.JPEGLosslessSV1


CASES = (
    "climbing_uid",
    "padding_65535",
    "copied_instance",
    "two_images_one_uid",
    "seg_uid_full",
    "seg_uid_one_slice_less",
    "localizer_and_capture",
    "dicomdir_and_mac_files",
    "jpeg_lossless",
    "jpeg_12_bit",
    "orientation_5e-5",
)


def outcome(workdir: Path) -> dict[str, object]:
    """What the run wrote: per series its volumes, triage call and SEG UID, and whether the
    SEG reads back with highdicom; and the folder beside the output."""
    found: dict[str, object] = {}
    for summary_path in sorted((workdir / "out").glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        seg_path = summary_path.parent / "seg.dcm"
        seg = pydicom.dcmread(seg_path)
        try:
            highdicom.seg.segread(seg_path).get_pixels_by_source_instance(
                source_sop_instance_uids=[
                    item.ReferencedSOPInstanceUID
                    for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
                ],
                segment_numbers=[1, 2],
                combine_segments=True,
            )
            reads_back = True
        except Exception as error:  # what highdicom says is the finding
            reads_back = str(error)[:120]
        found[summary["series_instance_uid"][-8:]] = {
            "volume_ml": summary["volume_ml"],
            "hemorrhage_present": summary["hemorrhage_present"],
            "seg_sop_instance_uid": str(seg.SOPInstanceUID)[-12:],
            "seg_reads_back": reads_back,
        }
    victim = workdir / "victim"
    if victim.exists() or workdir.name == "run_climbing_uid":
        found["victim"] = sorted(path.name for path in victim.iterdir()) if victim.exists() else []
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="checkout to run")
    parser.add_argument("--without-pylibjpeg", action="store_true")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    if arguments.without_pylibjpeg:
        dicom_memory.COMMAND = HIDE_PYLIBJPEG + dicom_memory.COMMAND
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        model = dicom_memory.tiny_model(root / "model.keras")
        for name in arguments.cases:
            source = build(name, root)
            workdir = root / f"run_{name}"
            workdir.mkdir(exist_ok=True)
            # The output folder sits inside the run folder, beside `victim` for climbing_uid.
            result = dicom_memory.run(arguments.project.resolve(), workdir, model, source)
            result.pop("input_bytes")
            result["outcome"] = outcome(workdir)
            results[name] = result
            print(name, result, file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
