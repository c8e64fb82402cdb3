"""Side by side at 512x512: the reference FlexUNet config vs params.yaml's default model.

Both models come from the same builder (pipeline.model.network.build_unet) and are timed in one run,
on random data, with the same batch size and thread settings: training images/s over a few
steps after warm-up, and inference ms per slice at batch 1. The last line is JSON.

    python benchmarks/train_speed.py [--image-size 512] [--batch-size 2] [--train-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from pipeline.model.losses import make_loss
from pipeline.model.network import REFERENCE_CONFIG, UNetConfig, build_unet
from pipeline.params import load_params


def random_batch(config: UNetConfig, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = config.image_size
    images = rng.uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, (batch_size, size, size))
    return images, np.eye(config.num_classes, dtype=np.float32)[labels]


def time_training(
    model: keras.Model, images: np.ndarray, targets: np.ndarray, warmup: int, steps: int
) -> float:
    """Training images/s of `train_on_batch` (Adam, the default Dice+CE loss)."""
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=make_loss("dice_ce"))
    for _ in range(warmup):
        model.train_on_batch(images, targets)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, targets)
    return steps * len(images) / (time.perf_counter() - start)


def time_inference(model: keras.Model, image: np.ndarray, warmup: int, repeats: int) -> float:
    """Milliseconds per slice of a compiled forward pass at batch 1 (median of `repeats`)."""
    for _ in range(warmup):
        model.predict_on_batch(image)
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(image)
        durations.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(durations))


def measure(config: UNetConfig, name: str, args: argparse.Namespace) -> dict[str, float]:
    keras.utils.set_random_seed(0)
    model = build_unet(config, name=name)
    images, targets = random_batch(config, args.batch_size, seed=0)
    # The reference is ~8 s a step here: fewer timed steps for it keep the run a few minutes.
    slow = model.count_params() > 10_000_000
    train_rate = time_training(
        model, images, targets, warmup=1, steps=max(1, args.train_steps // (3 if slow else 1))
    )
    infer_ms = time_inference(model, images[:1], warmup=1, repeats=3 if slow else 10)
    result = {"params": model.count_params(), "train_img_per_s": train_rate, "infer_ms": infer_ms}
    print(
        f"{name:>9}: {result['params']:>11,} params  {train_rate:7.2f} train img/s  "
        f"{infer_ms:8.1f} ms/slice",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--max-working-size",
        type=int,
        help="override the default model's model.max_working_size (e.g. 512: no stem at 512)",
    )
    args = parser.parse_args()

    params = load_params(args.params)
    default = UNetConfig.from_params(params.model, args.image_size, len(params.palette))
    if args.max_working_size:
        default = replace(default, max_working_size=args.max_working_size)
    # The reference runs every level at full size whatever the input: no working-size cap.
    reference = replace(
        REFERENCE_CONFIG, image_size=args.image_size, max_working_size=args.image_size
    )
    print(
        f"backend {keras.backend.backend()}, {args.image_size}x{args.image_size}, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs; default model stem stride "
        f"{default.stem_stride} (max_working_size {default.max_working_size})",
        flush=True,
    )
    measured_default = measure(default, "default", args)
    measured_reference = measure(reference, "reference", args)
    summary = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "default_max_working_size": default.max_working_size,
        "reference_params": measured_reference["params"],
        "default_params": measured_default["params"],
        "reference_train_img_per_s": round(measured_reference["train_img_per_s"], 3),
        "default_train_img_per_s": round(measured_default["train_img_per_s"], 3),
        "reference_infer_ms": round(measured_reference["infer_ms"], 1),
        "default_infer_ms": round(measured_default["infer_ms"], 1),
        "train_speedup": round(
            measured_default["train_img_per_s"] / measured_reference["train_img_per_s"], 2
        ),
        "infer_speedup": round(measured_reference["infer_ms"] / measured_default["infer_ms"], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
