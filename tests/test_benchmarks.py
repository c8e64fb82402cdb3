"""The benchmark scripts still speak the pipeline's contracts (they are run by hand, not here).

Timing is their job; these tests only check the data and params they build, so a change to the
manifest or params schema cannot leave a benchmark broken until someone next runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import augment_speed, dvc_speed, extract_speed, input_speed, kaggle_scale
from pipeline.io import read_manifest, verify_content
from pipeline.params import parse_params
from pipeline.synthesize.archive import synthesize_archive
from tests.conftest import (
    PROJECT_ROOT,
    TINY_PARAMS,
    create_project,
    deep_merge,
    project_params,
    tool_env,
)

BENCHMARKS = sorted(path.name for path in (PROJECT_ROOT / "benchmarks").glob("*_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_answers_help_without_running(script: str, tmp_path: Path) -> None:
    """`--help` prints the usage and exits at once: no build, no temporary folder."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"],
        cwd=PROJECT_ROOT,
        env={**tool_env(), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout[:200]
    assert list(tmp_path.iterdir()) == [], "--help started the benchmark"


def test_augment_benchmark_builds_a_training_set_the_stage_accepts(tmp_path: Path) -> None:
    manifest = read_manifest(augment_speed.build_training_set(tmp_path), extra_columns=("split",))
    verify_content(manifest)
    hemorrhagic = manifest[manifest["class"] == "Hemorrhagic"]
    assert len(hemorrhagic) == augment_speed.ORIGINALS
    assert (hemorrhagic["lesion_pixels"] > 0).all()


@pytest.mark.parametrize(
    "scale",
    ["DEFAULT_SCALE", "KAGGLE_SCALE", "KAGGLE_FULL_RESOLUTION"],
)
def test_dvc_speed_scales_are_valid_params(scale: str) -> None:
    overrides = getattr(dvc_speed, scale)
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params = parse_params(deep_merge(deep_merge(defaults, TINY_PARAMS), overrides))
    assert params.image_size == overrides["image_size"]
    assert params.phantom.image_size == overrides["phantom"]["image_size"]
    assert params.phantom.ischemic_cases == overrides["phantom"]["ischemic_cases"]


@pytest.mark.parametrize(
    "scale", [kaggle_scale.KAGGLE_512, kaggle_scale.SMALL_512, input_speed.INPUT_512]
)
def test_full_size_scales_run_the_default_model_at_512_px(scale: dict) -> None:
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params = parse_params(deep_merge(deep_merge(defaults, TINY_PARAMS), scale))
    assert params.image_size == params.phantom.image_size == 512
    for section in ("augment", "model"):
        assert getattr(params, section) == getattr(parse_params(defaults), section)
    # Training as params.yaml has it but for one epoch and the memory settings of 512 px.
    trained_as = parse_params(defaults).train.model_dump()
    changed = {k for k, v in params.train.model_dump().items() if trained_as[k] != v}
    assert changed <= {"epochs", "epoch_change_infer", *kaggle_scale.CPU_512_TRAIN}


def test_precision_benchmark_measures_each_setting_in_its_own_process() -> None:
    command = [sys.executable, str(PROJECT_ROOT / "benchmarks/precision_speed.py")]
    command += ["--image-size", "32", "--batch-size", "2", "--steps", "1"]
    done = subprocess.run(
        [*command, "--settings", "float32", "mixed_xla"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    settings = json.loads(done.stdout.strip().splitlines()[-1])["settings"]
    assert list(settings) == ["float32", "mixed_xla"]
    for row in settings.values():
        assert row["train_images_per_s"] > 0 and row["infer_slices_per_s"] > 0
        assert row["output_dtype"] == "float32" and row["peak_rss_mb"] > 0
    assert settings["float32"]["train_images_per_s_vs_float32"] == 1.0


def test_kaggle_scale_is_the_archive_size_and_the_small_scale_an_eighth() -> None:
    kaggle, small = kaggle_scale.KAGGLE_512["phantom"], kaggle_scale.SMALL_512["phantom"]
    originals = (kaggle["hemorrhagic_cases"] + kaggle["ischemic_cases"]) * kaggle["slices_per_case"]
    assert 6_000 <= originals <= 7_000  # ~6,700 training slices once augment balances train
    assert kaggle["ischemic_cases"] == 3 * kaggle["hemorrhagic_cases"]
    # Same slices per case and class balance, an eighth of the cases (rounded down).
    assert small["slices_per_case"] == kaggle["slices_per_case"]
    assert small["ischemic_cases"] == 3 * small["hemorrhagic_cases"]
    assert (
        8 * small["hemorrhagic_cases"]
        <= kaggle["hemorrhagic_cases"]
        < 9 * small["hemorrhagic_cases"]
    )


def test_peak_memory_counts_the_whole_process_tree(tmp_path: Path) -> None:
    # A parent holding ~100 MB starts a child holding ~300 MB: the tree peaks near 400 MB.
    hold = "import numpy; a = numpy.ones({} * 2**20 // 8)"
    child = f"{hold.format(300)}; import time; time.sleep(1.0)"
    start_child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    parent = f"{hold.format(100)}; {start_child}"
    measured = kaggle_scale.run_measured([sys.executable, "-c", parent], tmp_path, 60)
    assert 300 <= measured["peak_process_rss_mb"] < 400 <= measured["peak_rss_mb"] < 600
    assert measured["cpu_s"] > 0


def test_benchmarks_measure_the_stages_training_and_input_of_a_tiny_project(
    tmp_path: Path,
) -> None:
    project = create_project(tmp_path / "project").path  # the tiny test params
    stages = kaggle_scale.measure_data_stages(project)
    assert list(stages) == list(kaggle_scale.DATA_STAGES)
    assert all(row["slices"] > 0 and row["peak_rss_mb"] > 0 for row in stages.values())
    assert stages["extract"]["slices"] == stages["validate"]["slices"] == stages["split"]["slices"]
    assert stages["extract"]["slices"] < stages["synthesize"]["slices"]  # a case has no masks
    augmented = read_manifest(project / "data/augmented/manifest.csv")
    assert stages["augment"]["slices"] == (augmented["source"] != "original").sum() > 0

    training = kaggle_scale.measure_training(project, steps=3)
    assert training["train_steps"] == 3 and training["train_images_per_s"] > 0
    assert training["train_slices"] == len(augmented)

    rates = input_speed.in_child(project, "--cores", "1", "--cache", "disk", "--epochs", "2")
    assert rates["first_epoch"] > 0 and rates["later_epochs"] > 0
    assert rates["images_per_epoch"] == len(augmented) // TINY_PARAMS["train"]["batch_size"] * 4
    steps = input_speed.in_child(project, "--breakdown")
    assert "mask_colours_to_indices" in steps and all(rate > 0 for rate in steps.values())


def test_extract_benchmark_compares_worker_counts_on_the_archive_and_its_scaled_copy(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "phantom.zip"
    synthesize_archive(archive, project_params(TINY_PARAMS).phantom, 0)
    results = extract_speed.compare(archive, 2, tmp_path)  # stops if the outputs differ
    small, scaled = results["1x"], results[f"{extract_speed.SCALE}x"]
    assert small["workers=1"]["pairs"] == small["workers=2"]["pairs"] > 0
    assert scaled["workers=2"]["pairs"] == extract_speed.SCALE * small["workers=2"]["pairs"]
    assert small["wall_ratio"] > 0 and scaled["workers=2"]["peak_rss_mb"] > 0
