"""The benchmark scripts still speak the pipeline's contracts (they are run by hand, not here).

Timing is their job; these tests only check the data and params they build, so a change to the
manifest or params schema cannot leave a benchmark broken until someone next runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks import augment_speed, dvc_speed
from pipeline.io import read_manifest, verify_content
from pipeline.params import parse_params
from tests.conftest import PROJECT_ROOT, TINY_PARAMS, deep_merge


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
