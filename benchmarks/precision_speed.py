"""float32, XLA and mixed precision side by side: the default model at 512x512, one run.

Each setting of `train.jit_compile` and `train.mixed_precision` runs in its own process
(the dtype policy is process-wide, and each process's peak RSS is its own) through the train
stage's own builder (`pipeline.model.training.build_compiled_model`: optimizer, loss, metrics), on
random batches already in memory: training images/s over `--steps` steps after a warm-up step,
inference slices/s of a compiled forward pass over the same batch, and peak RSS. On a CPU this
says what the switches cost or buy there; with TensorFlow's GPU build (`make setup
ACCEL=cuda`) the same command measures a GPU. The last line is JSON, with each setting's
ratio to float32.

    nice .venv/bin/python benchmarks/precision_speed.py [--image-size 512] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (train.jit_compile, train.mixed_precision)
SETTINGS = {
    "float32": (False, False),
    "xla": (True, False),
    "mixed": (False, True),
    "mixed_xla": (True, True),
}


def measure_setting(name: str, image_size: int, batch_size: int, steps: int) -> dict:
    """In this process: one setting's training images/s, inference slices/s and peak RSS."""
    import numpy as np

    from pipeline.model.distribute import Distribution
    from pipeline.model.training import build_compiled_model, configure_runtime
    from pipeline.params import load_params

    jit_compile, mixed_precision = SETTINGS[name]
    params = load_params(ROOT / "params.yaml")
    train = params.train.model_copy(
        update={
            "batch_size": batch_size,
            "jit_compile": jit_compile,
            "mixed_precision": mixed_precision,
        }
    )
    params = params.model_copy(update={"image_size": image_size, "train": train})
    configure_runtime(params)
    model = build_compiled_model(
        params, steps_per_epoch=steps + 1, distribution=Distribution.one_device()
    )
    rng = np.random.default_rng(0)
    classes = len(params.palette)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    targets = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, images.shape[:3])]
    model.train_on_batch(images, targets)  # tracing and compilation
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, targets)
    train_images_per_s = steps * batch_size / (time.perf_counter() - start)
    model.predict_on_batch(images)
    start = time.perf_counter()
    for _ in range(steps):
        predicted = model.predict_on_batch(images)
    infer_slices_per_s = steps * batch_size / (time.perf_counter() - start)
    return {
        "setting": name,
        "train_images_per_s": round(train_images_per_s, 2),
        "infer_slices_per_s": round(infer_slices_per_s, 2),
        "output_dtype": str(predicted.dtype),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    sizes = (arguments.image_size, arguments.batch_size, arguments.steps)
    if arguments.child:
        print(json.dumps(measure_setting(arguments.child, *sizes)))
        return
    results = {}
    for name in arguments.settings:
        command = [sys.executable, __file__, "--child", name]
        command += ["--image-size", str(sizes[0]), "--batch-size", str(sizes[1])]
        command += ["--steps", str(sizes[2])]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name}: exited {done.returncode}\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    base = results.get("float32")
    for row in results.values():
        if base:
            for key in ("train_images_per_s", "infer_slices_per_s"):
                row[f"{key}_vs_float32"] = round(row[key] / base[key], 2)
    print(
        json.dumps(
            {
                "image_size": sizes[0],
                "batch_size": sizes[1],
                "cpus": os.cpu_count(),
                "settings": results,
            }
        )
    )


if __name__ == "__main__":
    main()
