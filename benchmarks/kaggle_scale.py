"""The data stages and a short training run at the Kaggle archive's scale, per stage.

Builds a throw-away copy of the project (tests/conftest.create_project) with KAGGLE_512: the
phantom at the real archive's scale (benchmarks/dvc_speed.KAGGLE_SCALE: 200 training cases,
6,400 slices, hemorrhagic:ischemic 1:3 by case; split 70/15/15 by patient, and augmentation
balances train to ~6,700 slices) at 512x512, and the default model. Then it runs each data
stage's command from dvc.yaml (synthesize -> extract -> validate -> colorize -> split ->
augment) as its own process and reports wall seconds, slices/s and peak RSS; then trains
`--train-steps` steps at 512 px (`fit` on the stage's tf.data pipeline, no validation) and
reports training images/s and peak RSS. `--scale small` runs the same with an eighth of the
cases, to show that memory does not grow with the number of slices. Targets on 2 cores: every
data stage over 100 slices/s, every peak RSS under 2 GB.

Peak RSS is sampled every SAMPLE_S seconds over the stage's whole process tree (its worker
processes included): `peak_rss_mb` is the largest sum, `peak_process_rss_mb` the largest
single process. `slices` counts what the stage produced: CT slices rendered (synthesize),
pairs extracted, slices checked (validate), colorized, split, and augmented copies written.

    nice -n 15 .venv/bin/python benchmarks/kaggle_scale.py [--scale kaggle|small] [--keep DIR]

A Kaggle-scale run takes about 5 minutes on a quiet 2-core machine. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dvc_speed import KAGGLE_SCALE  # noqa: E402
from tests.conftest import create_project, tool_env  # noqa: E402

DATA_STAGES = ("synthesize", "extract", "validate", "colorize", "split", "augment")
SAMPLE_S = 0.05
TRAIN_STEPS = 12
TARGET_SLICES_PER_S = 100.0
TARGET_PEAK_RSS_MB = 2048.0
STAGE_TIMEOUT_S = 3 * 3600

# docs/full-size.md's overrides for 512 px on a CPU, to stay under 2 GB: batches of 4 (one
# step of the default model peaks at 1.7 GB at batch 4, 2.2 GB at batch 8, 0.6 GB of it
# TensorFlow itself), a shuffle buffer of 64 decoded slices (64 MB at 512 px; the default 1,024
# holds 1 GB, for 64 MB at 128 px) and a memory cache of at most 256 MB, so that both scales
# cache on disk and peak RSS does not depend on the number of slices.
CPU_512_TRAIN = {"batch_size": 4, "shuffle_buffer": 64, "cache_memory_mb": 256.0}
# The reference's split kept most slices for training (6,196 train / 1,161 valid / 388 test);
# 70/15/15 by patient gives the Kaggle-scale phantom about 4,450 training slices, 6,700 once
# augment balances the classes (params.yaml's 50/20/30 suits its 70 patients).
KAGGLE_SPLIT = {"train": 0.7, "valid": 0.15, "test": 0.15}
# Kaggle scale at the archive's 512x512, augmented, modelled and trained with params.yaml's
# settings (create_project starts from the tiny test params, so they are restored here).
_DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())
KAGGLE_512 = {
    **KAGGLE_SCALE,
    "image_size": 512,
    "phantom": {**KAGGLE_SCALE["phantom"], "image_size": 512},
    "split": {**_DEFAULTS["split"], "ratios": KAGGLE_SPLIT},
    "augment": _DEFAULTS["augment"],
    "model": _DEFAULTS["model"],
    "train": {**_DEFAULTS["train"], **CPU_512_TRAIN, "epochs": 1, "epoch_change_infer": False},
}
# The same with an eighth of the cases: the flatness check of peak RSS.
SMALL_512 = {
    **KAGGLE_512,
    "phantom": {
        **KAGGLE_512["phantom"],
        "hemorrhagic_cases": KAGGLE_512["phantom"]["hemorrhagic_cases"] // 8,
        "ischemic_cases": KAGGLE_512["phantom"]["ischemic_cases"] // 8,
    },
}
SCALES = {"kaggle": KAGGLE_512, "small": SMALL_512}


def run_measured(command: list[str], cwd: Path, timeout_s: float) -> dict:
    """Run `command`; its wall and CPU seconds, peak RSS (tree sum and largest process, MB)
    and its output. CPU seconds are user + system of the whole tree (workers included)."""
    cpu_before = _children_cpu_s()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child never blocks
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=tool_env(), stdout=log, stderr=log)
        root = psutil.Process(process.pid)
        peak_sum = peak_single = 0
        while process.poll() is None:
            sizes = []
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                try:
                    sizes.append(member.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            peak_sum = max(peak_sum, sum(sizes))
            peak_single = max(peak_single, *sizes, 0)
            if time.perf_counter() - start > timeout_s:
                process.kill()
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}:\n{output[-4000:]}")
    return {
        "seconds": round(seconds, 1),
        "cpu_s": round(_children_cpu_s() - cpu_before, 1),
        "peak_rss_mb": round(peak_sum / 2**20),
        "peak_process_rss_mb": round(peak_single / 2**20),
        "output": output,
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def manifest_rows(path: Path) -> int:
    with path.open() as handle:
        return sum(1 for _ in handle) - 1


def stage_slices(project: Path, stage: str) -> int:
    """How many slices `stage` produced, read from its outputs."""
    data = project / "data"
    if stage == "synthesize":
        with zipfile.ZipFile(data / "raw" / "phantom.zip") as archive:
            return sum(
                1
                for name in archive.namelist()
                if "CT Images" in name and "/images/" in name and not name.endswith("/")
            )
    if stage == "augment":
        augmented = data / "augmented" / "manifest.csv"
        originals = sum(1 for line in augmented.open() if ",original," in line)
        return manifest_rows(augmented) - originals
    folder = {"extract": "extracted", "validate": "validated", "colorize": "colorized"}
    return manifest_rows(data / folder.get(stage, stage) / "manifest.csv")


def stage_commands(project: Path) -> dict[str, list[str]]:
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return {name: stages[name]["cmd"].split() for name in DATA_STAGES}


def measure_data_stages(project: Path) -> dict[str, dict[str, float]]:
    results = {}
    for stage, command in stage_commands(project).items():
        measured = run_measured(command, project, STAGE_TIMEOUT_S)
        measured.pop("output")
        slices = stage_slices(project, stage)
        measured.update(slices=slices, slices_per_s=round(slices / measured["seconds"], 1))
        results[stage] = measured
        print(f"{stage:>10}: {json.dumps(measured)}", flush=True)
    return results


def train_steps(project: Path, steps: int) -> None:
    """In the project folder: `steps` training steps of the train stage's model and pipeline;
    prints one JSON line with the images/s after the first (tracing) step."""
    import os

    import keras

    from pipeline.model.dataset import read_training_tables, resolve_cache
    from pipeline.model.distribute import Distribution
    from pipeline.model.training import (
        TrainPaths,
        build_compiled_model,
        configure_runtime,
        make_datasets,
    )
    from pipeline.params import load_params

    os.chdir(project)  # the manifests' and TrainPaths' relative paths
    params = load_params("params.yaml")
    configure_runtime(params)
    paths = TrainPaths()
    tables = read_training_tables(paths.augmented_manifest, paths.split_manifest)
    with tempfile.TemporaryDirectory(prefix="train-cache-") as cache_dir:
        one_device = Distribution.one_device()
        datasets = make_datasets(params, tables, Path(cache_dir), one_device)
        model = build_compiled_model(params, datasets.steps_per_epoch, one_device)
        ends: list[float] = []

        class StepTimes(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None) -> None:
                ends.append(time.perf_counter())

        model.fit(
            datasets.train, epochs=1, steps_per_epoch=steps, callbacks=[StepTimes()], verbose=0
        )
    timed_images = (len(ends) - 1) * params.train.batch_size
    print(
        json.dumps(
            {
                "train_steps": len(ends),
                "batch_size": params.train.batch_size,
                "train_images_per_s": round(timed_images / (ends[-1] - ends[0]), 2),
                "train_slices": datasets.train_slices,
                "cache": resolve_cache(
                    params.train.cache,
                    len(tables.train) + len(tables.valid),
                    params.image_size,
                    params.train.cache_memory_mb,
                ),
            }
        )
    )


def measure_training(project: Path, steps: int) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--train-in", str(project)]
    measured = run_measured([*command, "--train-steps", str(steps)], project, STAGE_TIMEOUT_S)
    figures = json.loads(measured.pop("output").strip().splitlines()[-1])
    measured.update(figures)
    print(f"{'train':>10}: {json.dumps(measured)}", flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="kaggle")
    parser.add_argument("--train-steps", type=int, default=TRAIN_STEPS)
    parser.add_argument("--keep", type=Path, help="build the project here and keep it")
    parser.add_argument("--train-in", type=Path, help=argparse.SUPPRESS)  # the child process
    arguments = parser.parse_args()
    if arguments.train_in:
        train_steps(arguments.train_in, arguments.train_steps)
        return
    with tempfile.TemporaryDirectory(prefix="kaggle-scale-") as workdir:
        folder = arguments.keep or Path(workdir) / "project"
        project = create_project(folder, SCALES[arguments.scale])
        stages = measure_data_stages(project.path)
        training = measure_training(project.path, arguments.train_steps)
    summary = {
        "scale": arguments.scale,
        "cpus": psutil.cpu_count(),
        "stages": stages,
        "train": training,
        "slowest_data_stage_slices_per_s": min(row["slices_per_s"] for row in stages.values()),
        "peak_rss_mb": max(row["peak_rss_mb"] for row in [*stages.values(), training]),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
