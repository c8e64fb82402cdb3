"""Peak memory of the new-images command on DICOM series (issue 24): per slice, and on the
inputs that once cost gigabytes.

Builds each case with pydicom in a temporary folder, then runs `python -m stages.infer` on it
in a child process (a tiny 1x1-convolution model at 64 px that calls bright pixels
hemorrhagic, so TensorFlow is loaded as in real use but the model costs nothing) and reads
the child's peak resident memory (VmHWM) at exit. Cases:

    series_512_40, series_512_160   a 512 x 512 CT series of 40 and 160 slices; their
                                    difference / 120 is the memory per slice
    zeros_4096_x4                   a zip of four 4096 x 4096 all-zero slices (134 KB)
    private_50mb_x12                a zip of 12 small slices, each with a 50 MB private element

`--project DIR` runs another checkout's command on the same inputs (e.g. an older commit
exported with `git archive`), for a before/after table.

    nice -n 10 .venv/bin/python benchmarks/dicom_memory.py [--project DIR] [--cases NAME...]

About two minutes on 2 cores. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.dicom import derived_uid  # noqa: E402
from pipeline.synthesize.dicom_series import dataset_bytes, phantom_slice_dataset  # noqa: E402
from pipeline.synthesize.layout import plan_cases  # noqa: E402
from tests.conftest import project_params, write_project_params  # noqa: E402

MODEL_SIDE = 64
PRIVATE_BYTES = 50_000_000
TIMEOUT_S = 600
# The command, with its peak resident memory printed at exit (VmHWM: ru_maxrss would carry
# the parent's peak across fork and exec).
COMMAND = """
import atexit, re, runpy, sys
from pathlib import Path
atexit.register(lambda: print("peak_kb", re.search(
    r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1), file=sys.stderr))
sys.argv = ["stages/infer.py", *sys.argv[1:]]
runpy.run_module("stages.infer", run_name="__main__")
"""


def slice_files(name: str, slices: int, side: int, edit=None) -> list[tuple[str, bytes]]:
    """A CT series as (file name, bytes): the phantom's slice writer on a disk of brain."""
    phantom = project_params().phantom
    spec = plan_cases(phantom, 0)[0]
    rows, columns = np.mgrid[:side, :side] - (side - 1) / 2.0
    hu = np.where(np.hypot(rows, columns) < 0.4 * side, 30.0, -1000.0)
    files = []
    for index in range(slices):
        ds = phantom_slice_dataset(hu, spec, index, phantom)
        ds.SeriesInstanceUID = derived_uid("benchmark", name)
        ds.SOPInstanceUID = derived_uid("benchmark", name, index)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if edit is not None:
            edit(ds)
        files.append((f"{index:04d}.dcm", dataset_bytes(ds)))
    return files


def zeros(ds) -> None:
    ds.PixelData = bytes(len(ds.PixelData))


def private_element(ds) -> None:
    ds.add_new(0x00091010, "OB", bytes(PRIVATE_BYTES))


def build(case: str, folder: Path) -> Path:
    """The input of `case` under `folder`: a series folder or a zip."""
    if case.startswith("series_512_"):
        target = folder / case
        target.mkdir()
        for name, data in slice_files(case, int(case.rsplit("_", 1)[1]), 512):
            (target / name).write_bytes(data)
        return target
    target = folder / f"{case}.zip"
    slices, side, edit = {
        "zeros_4096_x4": (4, 4096, zeros),
        "private_50mb_x12": (12, 64, private_element),
    }[case]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in slice_files(case, slices, side, edit):
            archive.writestr(name, data)
    return target


def tiny_model(path: Path) -> Path:
    """A 1x1 convolution that calls pixels brighter than grey 128 hemorrhagic (fixed weights:
    the runs are reproducible, and a bright padding value shows as hemorrhage)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs))
    weights = np.zeros((1, 1, 3, 3), dtype=np.float32)
    weights[0, 0, :, 1] = 0.5 / 3.0  # hemorrhagic logit: mean grey / 2 - 64
    model.layers[-1].set_weights([weights, np.array([0.0, -64.0, -1000.0], np.float32)])
    model.save(path)
    return path


def run(project: Path, workdir: Path, model: Path, source: Path) -> dict[str, object]:
    params = write_project_params(workdir / "params.yaml", {"infer": {"batch_size": 8}})
    document = params.read_text()
    if "max_series_pixels" not in (project / "pipeline" / "params.py").read_text():
        # An older checkout validates params strictly and knows no such key.
        document = re.sub(r"\n  max_series_pixels: .*", "", document)
        params.write_text(document)
    output = workdir / "out"
    started = time.perf_counter()
    result = subprocess.run(
        [
            *(sys.executable, "-c", COMMAND, "--params", str(params), "--model", str(model)),
            *("--input", str(source), "--output", str(output)),
        ],
        cwd=workdir,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    peak = re.search(r"peak_kb (\d+)", result.stderr)
    said = ("refused", "segmented", "set aside", "ignored", "Traceback")
    lines = [line for line in result.stderr.splitlines() if line.startswith(said)]
    return {
        "exit_status": result.returncode,
        "peak_mb": round(int(peak.group(1)) / 1024) if peak else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "input_bytes": sum(p.stat().st_size for p in [source, *source.rglob("*")] if p.is_file()),
        "stderr": [line[:160] for line in lines[:6]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="checkout to run")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["series_512_40", "series_512_160", "zeros_4096_x4", "private_50mb_x12"],
    )
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model = tiny_model(folder / "model.keras")
        for case in arguments.cases:
            workdir = folder / f"run_{case}"
            workdir.mkdir()
            source = build(case, folder)
            results[case] = run(arguments.project.resolve(), workdir, model, source)
            print(case, results[case], file=sys.stderr)
    if {"series_512_40", "series_512_160"} <= results.keys():
        peaks = [results[f"series_512_{n}"]["peak_mb"] for n in (40, 160)]
        if None not in peaks:
            results["mb_per_512_slice"] = round((peaks[1] - peaks[0]) / 120, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
