"""Same params and seed, same bytes: whatever CPU code paths numpy and OpenCV pick, whatever
OpenCV's thread count and our worker count; and training reproduces itself on one machine.

The data stages are rerun in fresh processes under each switch (numpy's CPU dispatch can
only be set before numpy is imported), and every output's sha256 must match the default run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from numpy.lib.introspect import opt_func_info

from tests.test_training import run_train, tiny_params, write_tiny_project

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A tiny phantom, then colorize (area and linear, to a non-integer scale) and every augment
# transform of its masked slices; prints {output name: sha256}.
CHILD = """
import hashlib, json, os, sys, zipfile
from pathlib import Path
import cv2
if os.environ.get("TEST_CV2_OPTIMIZED") == "0":
    cv2.setUseOptimized(False)
if "TEST_CV2_THREADS" in os.environ:
    cv2.setNumThreads(int(os.environ["TEST_CV2_THREADS"]))
from pipeline.data.augment import (elastic_generator, elastic_map, transform_grid, transform_map,
    warp_pair)
from pipeline.data.colorize import colorize_slice
from pipeline.io import decode_image, encode_png
from pipeline.synthesize.archive import synthesize_archive
from pipeline.synthesize.layout import plan_cases
from pipeline.synthesize.rendering import build_case, render_slice
from tests.conftest import project_params

params = project_params()
phantom = project_params({"phantom": dict(image_size=64, hemorrhagic_cases=2, ischemic_cases=2,
    slices_per_case=6, hemorrhagic_cases_without_mask=1, testing_cases_per_class=1,
    files_per_other_modality=3, workers=int(os.environ.get("TEST_WORKERS", "1")))}).phantom
archive = Path(sys.argv[1]) / "phantom.zip"
_, cases = synthesize_archive(archive, phantom, seed=5)
digests = {}
with zipfile.ZipFile(archive) as opened:
    for info in opened.infolist():
        digests[info.filename] = hashlib.sha256(opened.read(info)).hexdigest()
digests["phantom.zip"] = hashlib.sha256(archive.read_bytes()).hexdigest()
# The float fields too, before any rounding to bytes: equal fields leave no pixel next to a
# rounding boundary to flip, at any size.
for spec in plan_cases(phantom, 5)[:2]:
    case = build_case(spec, phantom)
    for index in range(len(spec.slice_stems)):
        digests[f"hu/{spec.case_id}/{index}"] = hashlib.sha256(
            render_slice(case, index).hu.tobytes()).hexdigest()
for variant in range(3):
    warp = elastic_map(64, 64, 34.0, 4.0, elastic_generator(5, "field", variant))
    digests[f"elastic_map/{variant}"] = hashlib.sha256(
        warp.map_x.tobytes() + warp.map_y.tobytes()).hexdigest()
class_index = {lesion.name: lesion.index for lesion in params.lesion_classes}
members = zipfile.ZipFile(archive)
for case in cases:
    if not case.spec.has_mask:
        continue
    for stem in case.spec.slice_stems:
        name = case.spec.member("images", stem)
        image = decode_image(members.read(name), name, color=False)
        mask = decode_image(members.read(case.spec.member("mask", stem)), name, color=False)
        for interpolation in ("area", "linear"):
            grey, colour = colorize_slice(image, mask, class_index[case.spec.class_name],
                params.palette, 48, interpolation)
            digests[f"colorize/{interpolation}/{name}"] = hashlib.sha256(
                encode_png(grey) + encode_png(colour)).hexdigest()
        for transform in transform_grid(params.augment):
            warp = transform_map(transform, 48, 48, 5, name)
            warped = warp_pair(grey, colour, warp, params.palette[0])
            digests[f"augment/{transform.output_id(name)}"] = hashlib.sha256(
                encode_png(warped[0]) + encode_png(warped[1])).hexdigest()
print(json.dumps(digests))
"""


def dispatched_numpy_features() -> str:
    """The SIMD targets numpy dispatches to on this CPU, above its baseline (which cannot be
    disabled), as NPY_DISABLE_CPU_FEATURES wants them."""
    current = {
        target["current"]
        for signatures in opt_func_info().values()
        for target in signatures.values()
    }
    return " ".join(sorted(name for name in current if not name.startswith("baseline")))


def data_outputs(tmp_path: Path, name: str, **environment: str) -> dict[str, str]:
    folder = tmp_path / name
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **environment},
        timeout=600,  # a hang guard only
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_data_outputs_are_byte_identical_under_every_cpu_path_and_thread_count(tmp_path):
    reference = data_outputs(tmp_path, "default")
    assert sum(key.startswith("augment/") for key in reference) >= 20
    assert sum(key.startswith("colorize/") for key in reference) >= 10
    switches = {
        "numpy_baseline": {"NPY_DISABLE_CPU_FEATURES": dispatched_numpy_features()},
        "opencv_unoptimized": {"TEST_CV2_OPTIMIZED": "0"},
        "opencv_one_thread": {"TEST_CV2_THREADS": "1"},
        "opencv_four_threads": {"TEST_CV2_THREADS": "4"},
        "two_workers": {"TEST_WORKERS": "2"},
    }
    for name, environment in switches.items():
        outputs = data_outputs(tmp_path, name, **environment)
        differing = sorted(key for key in reference if outputs.get(key) != reference[key])
        assert outputs.keys() == reference.keys(), name
        assert not differing, f"{name}: {len(differing)} outputs differ, e.g. {differing[:3]}"


def test_two_tiny_training_runs_give_identical_weights(tmp_path):
    weights = []
    for run in ("first", "second"):
        paths = write_tiny_project(tmp_path / run)
        params = tiny_params(epochs=2)
        run_train(params, paths)  # the stage's calls: runtime, strategy, training
        model = keras.saving.load_model(paths.model, compile=False)
        weights.append(model.get_weights())
    assert len(weights[0]) == len(weights[1]) > 0
    for first, second in zip(*weights, strict=True):
        assert np.array_equal(first, second)
