"""Can the tf.data training pipeline feed a GPU at 512x512? Images/s with 1 and 2 cores.

Times `pipeline.model.dataset.make_train_dataset`, the train stage's input (PNG decoding, colour
masks to class indices, shuffle, left-right flips, one-hot, batching), alone: no model. The
slices are real pipeline outputs: a small phantom project at 512 px is built and run through
synthesize -> augment (benchmarks/kaggle_scale.py), or `--project DIR` reuses one
(e.g. `kaggle_scale.py --keep DIR`).

Each measurement runs in its own process pinned to N cores (CPU affinity, TensorFlow's thread
pools and tf.data's private thread pool all set to N), with `train.cache` set to:
- `none`: every epoch decodes the PNGs again;
- `memory` / `disk`: the first epoch decodes and fills the cache, later epochs read decoded
  uint8 slices from it (disk: TensorFlow's cache files; `auto` picks disk at Kaggle scale).
`first_epoch` is the decoding rate, `later_epochs` the rate the cache gives. A breakdown on
one core (`--breakdown`) times the steps of decoding one by one. Target: 60 images/s per core.

    nice .venv/bin/python benchmarks/input_speed.py [--project DIR] [--epochs 3]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kaggle_scale import KAGGLE_512, measure_data_stages  # noqa: E402
from tests.conftest import create_project, tool_env  # noqa: E402

# About 120 training slices at 512 px: 4 cases per class of 16 slices (one hemorrhagic case
# has no masks, as in the archive); the smallest phantom whose split keeps every class in
# every split.
INPUT_512 = {
    **KAGGLE_512,
    "phantom": {
        **KAGGLE_512["phantom"],
        "hemorrhagic_cases": 4,
        "ischemic_cases": 4,
        "slices_per_case": 16,
    },
    # The input as a GPU run feeds it, not kaggle_scale's CPU memory settings: batches of 8
    # and a shuffle buffer of 256 decoded slices (the figures in docs/full-size.md are at these).
    "train": {**KAGGLE_512["train"], "batch_size": 8, "shuffle_buffer": 256},
}
CORES = (1, 2)
CACHES = ("none", "memory", "disk")
TARGET_IMAGES_PER_S_PER_CORE = 60.0


def measure_pipeline(project: Path, cores: int, cache: str, epochs: int) -> dict[str, float]:
    """In this process (call first, before TensorFlow starts): images/s of the first epoch
    and of the later ones, on `cores` cores."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    from pipeline.model.dataset import (
        OnlineAugmentation,
        PipelineOptions,
        make_train_dataset,
        read_training_tables,
        steps_per_epoch,
    )
    from pipeline.model.training import TrainPaths
    from pipeline.params import load_params

    os.chdir(project)
    params = load_params("params.yaml")
    paths = TrainPaths()
    tables = read_training_tables(paths.augmented_manifest, paths.split_manifest)
    with tempfile.TemporaryDirectory(prefix="input-cache-") as cache_dir:
        options = PipelineOptions(
            palette=tuple(params.palette),
            image_size=params.image_size,
            cache=cache,
            cache_dir=Path(cache_dir),
        )
        steps = steps_per_epoch(tables.train, params.train.batch_size)
        dataset = make_train_dataset(
            tables.train,
            options,
            batch_size=params.train.batch_size,
            seed=params.seed,
            shuffle_buffer=params.train.shuffle_buffer,
            flip=params.train.random_flip,
            augmentation=OnlineAugmentation.from_train(params.train),
        )
        threading = tf.data.Options()
        threading.threading.private_threadpool_size = cores
        batches = iter(dataset.with_options(threading))
        images = steps * params.train.batch_size
        seconds, cpu_seconds = [], []
        for _ in range(epochs):
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                next(batches)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    # Per CPU-second: what one core does when it is not shared (this machine may be loaded).
    return {
        "first_epoch": round(images / seconds[0], 1),
        "later_epochs": round(images * (epochs - 1) / sum(seconds[1:]), 1),
        "first_epoch_per_cpu_s": round(images / cpu_seconds[0], 1),
        "later_epochs_per_cpu_s": round(images * (epochs - 1) / sum(cpu_seconds[1:]), 1),
        "images_per_epoch": images,
        # Shuffle buffer, cache (memory) and prefetched batches: the input's share of the RSS.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def breakdown(project: Path, repeats: int = 2) -> dict[str, float]:
    """One core: images per CPU-second of each step of decoding a slice, cumulatively."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipeline.model.dataset import (
        decode_slice,
        read_training_tables,
        slice_paths,
        to_model_inputs,
    )
    from pipeline.model.training import TrainPaths
    from pipeline.params import load_params

    os.chdir(project)
    params = load_params("params.yaml")
    paths = TrainPaths()
    tables = read_training_tables(paths.augmented_manifest, paths.split_manifest)
    images, masks = slice_paths(tables.train, params.image_size, "augmented manifest")
    palette = tf.constant(np.asarray(params.palette, np.uint8).reshape(-1, 3))

    def read_both(image, mask):
        return tf.io.read_file(image), tf.io.read_file(mask)

    def decode_image(image, mask):
        return tf.io.decode_png(tf.io.read_file(image), channels=3), mask

    def decode_both(image, mask):
        return (
            tf.io.decode_png(tf.io.read_file(image), channels=3),
            tf.io.decode_png(tf.io.read_file(mask), channels=3),
        )

    def to_indices(image, mask):
        return decode_slice(image, mask, palette, params.image_size)

    def model_inputs(image, mask):
        return to_model_inputs(*to_indices(image, mask), 3)

    steps = {
        "read_files": read_both,
        "decode_image_png": decode_image,
        "decode_image_and_mask_png": decode_both,
        "mask_colours_to_indices": to_indices,
        "float_image_one_hot_mask": model_inputs,
    }
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    result = {}
    for name, function in steps.items():
        dataset = tf.data.Dataset.from_tensor_slices((images, masks)).map(function)
        dataset = dataset.with_options(options)
        best = 0.0
        for _ in range(repeats):
            start = time.process_time()  # CPU time: the rate of one unshared core
            for _ in dataset:
                pass
            best = max(best, len(images) / (time.process_time() - start))
        result[name] = round(best, 1)
    return result


def in_child(project: Path, *arguments: str) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(project)]
    done = subprocess.run(
        [*command, *arguments], env=tool_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(project: Path, epochs: int) -> dict:
    results: dict = {"pipeline": {}}
    for cores in CORES:
        for cache in CACHES:
            rates = in_child(
                project, "--cores", str(cores), "--cache", cache, "--epochs", str(epochs)
            )
            results["pipeline"][f"{cores}_cores_cache_{cache}"] = rates
            print(f"{cores} core(s), cache {cache:>6}: {json.dumps(rates)} images/s", flush=True)
    results["breakdown_1_core"] = in_child(project, "--breakdown")
    print(f"one core, cumulative steps: {json.dumps(results['breakdown_1_core'])} images/s")
    pipeline = results["pipeline"]
    # Steady state: the first epoch also traces the pipeline and fills the shuffle buffer.
    decode_1, decode_2 = (pipeline[f"{n}_cores_cache_none"]["later_epochs"] for n in CORES)
    results["per_core"] = {
        "decode_1_core": decode_1,
        "decode_2_cores_halved": round(decode_2 / 2, 1),
        "decode_per_cpu_s": pipeline["1_cores_cache_none"]["later_epochs_per_cpu_s"],
        "memory_cache_per_cpu_s": pipeline["1_cores_cache_memory"]["later_epochs_per_cpu_s"],
        "disk_cache_per_cpu_s": pipeline["1_cores_cache_disk"]["later_epochs_per_cpu_s"],
    }
    results["target_per_core"] = TARGET_IMAGES_PER_S_PER_CORE
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project already run up to augment")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cache", choices=CACHES, default="none", help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        if arguments.breakdown:
            print(json.dumps(breakdown(arguments.child)))
        else:
            rates = measure_pipeline(
                arguments.child, arguments.cores, arguments.cache, arguments.epochs
            )
            print(json.dumps(rates))
        return
    with tempfile.TemporaryDirectory(prefix="input-speed-") as workdir:
        project = arguments.project
        if project is None:
            project = create_project(Path(workdir) / "project", INPUT_512).path
            measure_data_stages(project)
        print(
            json.dumps({"cpus": len(os.sched_getaffinity(0)), **measure(project, arguments.epochs)})
        )


if __name__ == "__main__":
    main()
