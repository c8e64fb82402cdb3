"""Wall time of a no-op `dvc repro` and of `dvc status`, at two dataset scales.

1. Default scale: a copy of this project with the default params (images shrunk to keep the
   build short: DVC's cost depends on the number of files, not their pixels).
2. Kaggle scale: the same DAG with about 4,800 training slices after augmentation.

Each project is built once with a full `dvc repro`, then `dvc status` and `dvc repro` are
timed (median of 3) with nothing changed. Run: `.venv/bin/python benchmarks/dvc_speed.py`.
`--full-resolution` adds the Kaggle scale with 512x512 files throughout (a build of several
minutes and about 8 GB of disk), to check that a no-op costs the same whatever the pixels.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import create_project  # noqa: E402

# Shrink pixels and training, keep the default file counts (project-scale run).
SMALL_PIXELS = {
    "image_size": 32,
    "phantom": {"image_size": 64},
    "model": {"base_filters": 4, "num_layers": 3},
    "train": {"epochs": 1, "epoch_change_infer": False},
    "infer": {"latency_repeats": 2},
}
DEFAULT_SCALE = {
    **SMALL_PIXELS,
    "phantom": {
        "image_size": 64,
        "hemorrhagic_cases": 21,
        "ischemic_cases": 28,
        "slices_per_case": 16,
        "hemorrhagic_cases_without_mask": 1,
        "testing_cases_per_class": 2,
    },
    "validate": {"slices_per_class": {"min": 20}, "min_lesion_slice_share": 0.3},
    "split": {"ratios": {"train": 0.5, "valid": 0.2, "test": 0.3}, "mini_test_per_class": 3},
}
# 50 + 150 cases x 32 slices = 6,400 originals. Half the cases train (split 0.5): 75 ischemic
# cases, 2,400 slices, and augmentation brings hemorrhagic up to them: about 4,800.
# (More cases would not fit the phantom's 7-digit ischemic case ids.)
KAGGLE_SCALE = {
    **DEFAULT_SCALE,
    "phantom": {
        **DEFAULT_SCALE["phantom"],
        "hemorrhagic_cases": 50,
        "ischemic_cases": 150,
        "slices_per_case": 32,
    },
    "validate": {"slices_per_class": {"min": 20, "max": 100000}, "cases_per_class": {"max": 1000}},
}


# The same files at the Kaggle archive's 512x512, colorized and augmented at that size; the
# model works at 32 px behind its strided stem to keep the one training epoch short.
KAGGLE_FULL_RESOLUTION = {
    **KAGGLE_SCALE,
    "image_size": 512,
    "phantom": {**KAGGLE_SCALE["phantom"], "image_size": 512},
    "model": {**KAGGLE_SCALE["model"], "max_working_size": 32},
}
BUILD_TIMEOUT_S = 3 * 3600


def median_seconds(project, *args: str, repeats: int = 3) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        project.dvc(*args)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def measure(name: str, overrides: dict, workdir: Path) -> dict[str, float]:
    project = create_project(workdir / name, overrides)
    start = time.perf_counter()
    project.run("dvc", "repro", timeout=BUILD_TIMEOUT_S)
    build = time.perf_counter() - start
    manifest = project.path / "data" / "augmented" / "manifest.csv"
    train_slices = sum(1 for _ in manifest.open()) - 1
    files = sum(1 for path in (project.path / "data").rglob("*") if path.is_file())
    result = {
        f"{name}_train_slices": train_slices,
        f"{name}_data_files": files,
        f"{name}_build_s": round(build, 1),
        f"{name}_status_s": round(median_seconds(project, "status"), 2),
        f"{name}_noop_repro_s": round(median_seconds(project, "repro"), 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-resolution", action="store_true", help="add Kaggle scale at 512px")
    arguments = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dvc-speed-") as workdir:
        results.update(measure("default", DEFAULT_SCALE, Path(workdir)))
        results.update(measure("kaggle", KAGGLE_SCALE, Path(workdir)))
        if arguments.full_resolution:
            results.update(measure("kaggle512", KAGGLE_FULL_RESOLUTION, Path(workdir)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
