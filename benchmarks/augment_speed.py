"""Augmentation throughput at 512x512: the `augment` stage's code path vs a pixel loop.

Builds a throw-away training set from the real CT samples in tests/data/real-ct
(flipped and shifted into 24 distinct hemorrhagic slices, masks recoloured red), then times
`pipeline.data.augment.augment_training_set` on 2 worker processes with the default transform grid
(barrel, pincushion, elastic), reading the originals and writing every PNG and the manifest.
For comparison it runs, in the same process pool, a pixel-by-pixel pure-Python version of the
same barrel formula (bilinear image, nearest mask) on a few images, with the same reading and
PNG writing, and checks that both give the same pixels. It also times each step of one
output in one process, to show where the time goes.

Run: .venv/bin/python benchmarks/augment_speed.py  (about a minute on 2 cores). The last line
is JSON with the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.data.augment as augment_module
from pipeline.data.augment import (
    Transform,
    augment_training_set,
    barrel_map,
    centre_in_pixels,
    transform_map,
    warp_pair,
)
from pipeline.io import encode_png, read_image, write_manifest, write_png
from pipeline.parallel import ordered_map
from tests.conftest import original_row, project_params, with_sha256

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "real-ct"
SIZE = 512
WORKERS = 2
ORIGINALS = 24
OUTPUTS = 240
REPEATS = 2
PIXEL_LOOP_IMAGES = 2
REFERENCE_MS = 87.0  # the reference's barrel tool, one image and one centre (REFERENCE.md)
TARGET_MS = REFERENCE_MS / 20
PARAMS = project_params()  # the project's params.yaml
PALETTE = PARAMS.palette
RED = np.asarray(PALETTE[1], np.uint8)


def build_training_set(root: Path) -> Path:
    """data/colorized-like PNGs and a split manifest: ORIGINALS hemorrhagic training slices,
    and enough ischemic rows that the default target ratio asks for OUTPUTS copies."""
    images = sorted((SAMPLES / "images").glob("*.png"))
    if not images:
        raise SystemExit(f"no sample images in {SAMPLES}")
    (root / "colorized/images").mkdir(parents=True)
    (root / "colorized/masks").mkdir()
    rows = []
    for number in range(ORIGINALS):
        sample = images[number % len(images)]
        image = read_image(sample)
        lesion = read_image(SAMPLES / "masks" / sample.name, color=True).max(axis=-1) > 127
        # Distinct content per slice (PNG cost depends on it): flip and shift the sample.
        variant = number // len(images)
        image, lesion = (
            np.roll(np.flip(a, axis=variant % 2), 7 * variant, axis=0) for a in (image, lesion)
        )
        mask = np.where(lesion[..., None], RED, np.uint8(0)).astype(np.uint8)
        slice_id = f"Hemorrhagic_{100 + number // 3:03d}_{number % 3:03d}"
        write_png(root / "colorized/images" / f"{slice_id}.png", np.ascontiguousarray(image))
        write_png(root / "colorized/masks" / f"{slice_id}.png", np.ascontiguousarray(mask))
        case_id = f"{100 + number // 3:03d}"
        rows.append(
            original_row(slice_id, case_id, "Hemorrhagic", SIZE, int(lesion.sum()), "../colorized/")
        )
    shared_paths = {key: rows[0][key] for key in ("image_path", "mask_path")}
    for number in range(ORIGINALS + OUTPUTS):
        # Ischemic rows only count towards the ratio; they all point at one real slice.
        slice_id = f"Ischemic_0539025_{number:03d}"
        rows.append({**original_row(slice_id, "0539025", "Ischemic", SIZE, 1), **shared_paths})
    manifest = with_sha256(rows, root / "split").assign(split="train", mini_test=False)
    write_manifest(root / "split/manifest.csv", manifest)
    return root / "split/manifest.csv"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def encode_png_fast(array: np.ndarray) -> bytes:
    """What-if PNG settings (not the project's): 'up' filter and run-length zlib strategy."""
    pixels = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    flags = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    flags += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buffer = cv2.imencode(".png", pixels, flags)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buffer.tobytes()


def time_stage(split_manifest: Path, out: Path) -> dict[str, float]:
    """The stage's real code path, best of REPEATS: wall and CPU ms per output, output MB."""
    walls, cpus = [], []
    for _ in range(REPEATS):
        wall, cpu = time.perf_counter(), cpu_seconds()
        metrics = augment_training_set(
            split_manifest, out, PARAMS.augment, seed=42, background=PALETTE[0], workers=WORKERS
        )
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    outputs = int(metrics["augmented_total"])
    written = sum(path.stat().st_size for path in out.rglob("*.png"))
    return {
        "outputs": outputs,
        "ms_per_output": 1000 * min(walls) / outputs,
        "cpu_ms_per_output": 1000 * min(cpus) / outputs,
        "output_mb": written / 1e6,
    }


def pixel_loop_barrel(job: tuple[str, str, str, Transform]) -> float:
    """Pure-Python, one pixel at a time: read, the barrel formula, bilinear image, nearest
    mask, PNG write. Returns its wall seconds."""
    image_path, mask_path, out_stem, transform = job
    start = time.perf_counter()
    image = read_image(image_path).tolist()
    mask = read_image(mask_path, color=True).tolist()
    height, width = len(image), len(image[0])
    centre_x, centre_y = centre_in_pixels(transform.centre, height, width)
    radius = transform.radius * width
    out_image = [[0] * width for _ in range(height)]
    out_mask = [[[0, 0, 0] for _ in range(width)] for _ in range(height)]
    for y in range(height):
        for x in range(width):
            dx, dy = x - centre_x, y - centre_y
            r = math.hypot(dx, dy)
            factor = 1.0
            if 0 < r < radius:
                factor = math.sin(math.pi * r / (2 * radius)) ** transform.amount
            source_x, source_y = x + (factor - 1) * dx, y + (factor - 1) * dy
            x0, y0 = math.floor(source_x), math.floor(source_y)
            fx, fy = source_x - x0, source_y - y0
            value = 0.0
            for ny, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                for nx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                    if 0 <= nx < width and 0 <= ny < height:
                        value += wx * wy * image[ny][nx]
            out_image[y][x] = min(255, int(value + 0.5))
            nearest_x, nearest_y = round(source_x), round(source_y)
            if 0 <= nearest_x < width and 0 <= nearest_y < height:
                out_mask[y][x] = mask[nearest_y][nearest_x]
    Path(f"{out_stem}_image.png").write_bytes(encode_png(np.asarray(out_image, np.uint8)))
    Path(f"{out_stem}_mask.png").write_bytes(encode_png(np.asarray(out_mask, np.uint8)))
    return time.perf_counter() - start


def step_profile(image_path: Path, mask_path: Path) -> dict[str, float]:
    """Milliseconds of each step of one output, in this process (median of 15 runs)."""
    image, mask = read_image(image_path), read_image(mask_path, color=True)
    barrel = Transform("barrel", radius=0.3, amount=0.3, centre=(0.5, 0.5))
    elastic = Transform("elastic", alpha=34.0, sigma=4.0)
    warp = transform_map(barrel, SIZE, SIZE, 42, "x")
    warped_image, warped_mask = warp_pair(image, mask, warp, PALETTE[0])
    steps = {
        "read_image_and_mask": lambda: (read_image(image_path), read_image(mask_path, color=True)),
        # The stage caches barrel maps per worker; this is the one-off cost of one.
        "barrel_map_uncached": lambda: barrel_map.__wrapped__(SIZE, SIZE, (0.5, 0.5), 0.3, 0.3),
        "elastic_map": lambda: transform_map(elastic, SIZE, SIZE, 42, "x"),
        "warp_pair": lambda: warp_pair(image, mask, warp, PALETTE[0]),
        "encode_png_image": lambda: encode_png(warped_image),
        "encode_png_mask": lambda: encode_png(warped_mask),
    }
    timings = {}
    for name, step in steps.items():
        samples = []
        for _ in range(15):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
        timings[f"step_ms_{name}"] = round(1000 * statistics.median(samples), 3)
    return timings


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # for --help
    root = Path(tempfile.mkdtemp(prefix="augment_speed."))
    try:
        split_manifest = build_training_set(root)
        stage = time_stage(split_manifest, root / "augmented")
        manifest = pd.read_csv(root / "augmented/manifest.csv")
        by_id = manifest.set_index("id")
        barrels = manifest[manifest["source"] == "barrel"].head(PIXEL_LOOP_IMAGES)
        jobs = []
        for item in barrels.itertuples():
            source = by_id.loc[item.source_id]
            centre_text = item.id.split("_c", 1)[1].split("_", 1)[0]
            centre = tuple(float(value) for value in centre_text.split("-"))
            jobs.append(
                (
                    str(root / "augmented" / source["image_path"]),
                    str(root / "augmented" / source["mask_path"]),
                    str(root / f"loop_{item.id}"),
                    Transform("barrel", radius=0.3, amount=0.3, centre=centre),
                )
            )
        start = time.perf_counter()
        ordered_map(pixel_loop_barrel, jobs, workers=WORKERS, description="pixel loop")
        loop_ms = 1000 * (time.perf_counter() - start) / len(jobs)
        # Same formula, same pixels: compare the loop's outputs with the stage's.
        image_difference, mask_mismatch = 0, 0.0
        for item, job in zip(barrels.itertuples(), jobs, strict=True):
            staged = read_image(root / "augmented" / item.image_path).astype(int)
            looped = read_image(f"{job[2]}_image.png").astype(int)
            image_difference = max(image_difference, int(np.abs(staged - looped).max()))
            staged_mask = read_image(root / "augmented" / item.mask_path, color=True)
            looped_mask = read_image(f"{job[2]}_mask.png", color=True)
            mismatch = float(np.any(staged_mask != looped_mask, axis=-1).mean())
            mask_mismatch = max(mask_mismatch, mismatch)
        sample = manifest[manifest["source"] == "original"].iloc[0]
        profile = step_profile(
            root / "augmented" / sample["image_path"], root / "augmented" / sample["mask_path"]
        )
        # What-if: the same run with faster PNG settings patched in (workers fork after this).
        augment_module.encode_png = encode_png_fast
        fast = time_stage(split_manifest, root / "augmented_fast_png")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stage_ms = stage["ms_per_output"]
    result = {
        "image_size": SIZE,
        "workers": WORKERS,
        "outputs": stage["outputs"],
        "stage_ms_per_output": round(stage_ms, 2),
        "stage_outputs_per_second": round(1000 / stage_ms, 1),
        "stage_cpu_ms_per_output": round(stage["cpu_ms_per_output"], 2),
        "stage_output_mb": round(stage["output_mb"], 1),
        "pixel_loop_outputs": len(jobs),
        "pixel_loop_ms_per_output": round(loop_ms, 1),
        "speedup_vs_pixel_loop": round(loop_ms / stage_ms, 1),
        "pixel_loop_max_image_difference": image_difference,
        "pixel_loop_mask_mismatch_share": round(mask_mismatch, 6),
        "reference_ms_per_output": REFERENCE_MS,
        "speedup_vs_reference": round(REFERENCE_MS / stage_ms, 1),
        "target_ms_per_output": round(TARGET_MS, 2),
        "target_met": stage_ms <= TARGET_MS,
        "fast_png_ms_per_output": round(fast["ms_per_output"], 2),
        "fast_png_cpu_ms_per_output": round(fast["cpu_ms_per_output"], 2),
        "fast_png_output_mb": round(fast["output_mb"], 1),
        "fast_png_target_met": fast["ms_per_output"] <= TARGET_MS,
        "load_average_1min": round(os.getloadavg()[0], 2),
        **profile,
    }
    for key, value in result.items():
        print(f"{key:40s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
