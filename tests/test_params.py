"""params.yaml validation: defaults agree with the file, and every error names its key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params, parse_params

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_project_params_file_is_valid_and_equals_code_defaults():
    loaded = load_params(PROJECT_PARAMS)
    assert loaded == Params(), "params.yaml and the defaults in pipeline/params.py disagree"


def test_top_level_keys_for_dvc_experiments():
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    for key in ("seed", "lr", "image_size"):
        assert key in raw, f"{key} must sit at the top level of params.yaml"
    assert raw["extract"]["archive"] == "data/raw/phantom.zip"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"lrr": 0.1}, "lrr: unknown key (allowed here: seed, lr, image_size"),
        ({"augment": {"barrel": {"radiuss": 0.3}}}, "augment.barrel.radiuss: unknown key"),
        ({"lr": "fast"}, "lr: Input should be a valid number"),
        ({"lr": 0}, "lr: Input should be greater than 0"),
        ({"image_size": 8}, "image_size: Input should be greater than or equal to 16"),
        ({"train": {"loss": "dce"}}, "train.loss: Input should be 'categorical_crossentropy'"),
        ({"train": {"epochs": "many"}}, "train.epochs: Input should be a valid integer"),
        ({"split": {"ratios": {"train": 0.6}}}, "split.ratios: Value error, train + valid + test"),
        ({"rgb_map": {"background": [0, 0, 0]}}, "rgb_map: Value error, must list exactly"),
        (
            {
                "rgb_map": {
                    "background": [0, 0, 0],
                    "Hemorrhagic": [300, 0, 0],
                    "Ischemic": [0, 255, 0],
                }
            },
            "rgb_map.Hemorrhagic[0]: Input should be less than or equal to 255",
        ),
        ({"validate": {"slices_per_class": {"min": 9, "max": 2}}}, "validate.slices_per_class"),
        (
            {"extract": {"subsets": ["Validation"]}},
            "extract.subsets[0]: Input should be 'Training'",
        ),
    ],
)
def test_errors_name_the_full_key(document, expected):
    with pytest.raises(ParamsError) as caught:
        parse_params(document)
    assert expected in str(caught.value)


def test_yaml_syntax_error_and_missing_file_are_reported(tmp_path):
    broken = tmp_path / "params.yaml"
    broken.write_text("lr: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")


def test_no_eval_or_exec_anywhere_in_the_code():
    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("pipeline/*.py"), *root.glob("stages/*.py")]:
        calls = [
            node.func.id
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        ]
        assert not {"eval", "exec"} & set(calls), path
