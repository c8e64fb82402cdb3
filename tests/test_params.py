"""params.yaml validation: the values live in the file alone, every error names its key, types
are strict, cross-field rules hold at load time, and hostile files are refused cheaply."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from ruamel.yaml import YAML

from pipeline.model.network import UNetConfig
from pipeline.params import (
    MAX_EXCERPT_CHARS,
    MAX_PARAMS_BYTES,
    MAX_PARAMS_DEPTH,
    Params,
    ParamsError,
    excerpt,
    load_params,
    parse_params,
    parse_params_yaml,
)
from tests.conftest import project_params, project_params_document

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every model nested in its fields."""
    nested = [
        field.annotation
        for field in model.model_fields.values()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    ]
    return [model, *(found for section in nested for found in sections(section))]


def test_values_live_in_params_yaml_alone():
    load_params(PROJECT_PARAMS)
    with_defaults = [
        f"{section.__name__}.{name}"
        for section in sections(Params)
        for name, field in section.model_fields.items()
        if not field.is_required()
    ]
    assert with_defaults == [], "pipeline/params.py holds types and ranges, not values"


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
        ({"rgb_map": {"tumour": [0, 0, 255]}}, "rgb_map: Value error, lesion class names must"),
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
        project_params(document)
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
    for path in [*root.glob("pipeline/**/*.py"), *root.glob("stages/*.py")]:
        calls = [
            node.func.id
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        ]
        assert not {"eval", "exec"} & set(calls), path


# --- strict types: a config that drives experiments never guesses what a string meant ---


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"lr": "0.001"}, "lr: Input should be a valid number (got '0.001')"),
        ({"model": {"residual": "yes"}}, "model.residual: Input should be a valid boolean"),
        ({"model": {"residual": 1}}, "model.residual: Input should be a valid boolean"),
        (
            {"model": {"normalization": "group"}},
            "model.normalization: Input should be 'batch', 'instance' or 'none'",
        ),
        ({"train": {"epochs": 3.0}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"epochs": "3"}}, "train.epochs: Input should be a valid integer"),
        ({"seed": True}, "seed: Input should be a valid integer"),
        ({"extract": {"archive": 7}}, "extract.archive: Input should be a valid string"),
        ({"phantom": {"csf_hu": ["0", 15]}}, "phantom.csf_hu[0]: Input should be a valid number"),
    ],
)
def test_strings_and_floats_are_not_coerced(document, expected):
    with pytest.raises(ParamsError) as caught:
        project_params(document)
    assert expected in str(caught.value)


def test_integers_are_accepted_where_floats_are_expected():
    params = project_params(
        {"lr": 1, "phantom": {"csf_hu": [0, 15]}, "augment": {"target_ratio": 2}}
    )
    assert params.lr == 1.0 and isinstance(params.lr, float)
    assert params.phantom.csf_hu == (0.0, 15.0)
    assert params.augment.target_ratio == 2.0


# --- floats as DVC writes them: `dvc exp run -S lr=7e-5` writes `lr: 7e-05` ---

# What a user types after `-S lr=`: the same number with and without a dot, exponent or
# leading zero, in either case.
LR_SPELLINGS = (repr, "{:e}".format, "{:E}".format, "{:.3g}".format, "{:.0e}".format)


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(min_value=1e-12, max_value=1.0, exclude_min=True),
    spell=st.sampled_from(LR_SPELLINGS),
    drop_leading_zero=st.booleans(),
)
def test_every_float_dvc_writes_for_set_param_loads_as_that_number(
    tmp_path_factory, lr, spell, drop_leading_zero
):
    typed = spell(lr)
    if drop_leading_zero and typed.startswith("0."):
        typed = typed[1:]  # `.5`
    expected = float(typed)
    if expected <= 0.0:  # a spelling rounded the value to zero: lr must stay positive
        return
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_bytes(PROJECT_PARAMS.read_bytes())
    apply_overrides(path, [f"lr={typed}"])  # DVC's own `-S` writer
    assert load_params(path).lr == expected  # what train receives
    # ... and what `dvc params diff` reads (DVC parses params.yaml with ruamel, YAML 1.2).
    assert YAML(typ="safe").load(path.read_text())["lr"] == expected


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[-+]?([0-9]{1,3}(\.[0-9]{0,3})?|\.[0-9]{1,3})([eE][-+]?[0-9]{1,2})?\Z"))
def test_the_loader_reads_each_float_as_dvc_does(scalar):
    ours = parse_params_yaml(f"value: {scalar}")["value"]
    dvcs = YAML(typ="safe").load(f"value: {scalar}")["value"]
    if isinstance(ours, float) or isinstance(dvcs, float):
        assert type(ours) is type(dvcs) and ours == dvcs, scalar


@pytest.mark.parametrize("quoted", ["'7e-05'", '"0.001"', "'1E-6'"])
def test_a_quoted_number_is_still_refused_where_a_number_belongs(tmp_path, quoted):
    path = tmp_path / "params.yaml"
    text, replaced = re.subn(r"(?m)^lr: .*$", f"lr: {quoted}", PROJECT_PARAMS.read_text())
    assert replaced == 1
    path.write_text(text)
    with pytest.raises(ParamsError, match="lr: Input should be a valid number"):
        load_params(path)


# --- cross-field rules: refused at load time, naming the keys ---


def test_working_size_not_divisible_by_the_unet_depth_names_the_keys():
    with pytest.raises(ParamsError) as caught:
        project_params({"image_size": 34, "model": {"num_layers": 3}})
    message = str(caught.value)
    assert "image_size 34 must be divisible by 4" in message
    assert "model.num_layers 3" in message
    assert "use image_size 32 or 36" in message
    assert "got {" not in message, "a cross-field error must not quote the whole file"


def test_working_size_rule_includes_the_stem():
    # 528 > 2 x 256, so the stem strides by 4 and the UNet sees 132 = 4 x 33: not divisible by 16.
    with pytest.raises(ParamsError) as caught:
        project_params({"image_size": 528, "model": {"num_layers": 5, "max_working_size": 256}})
    assert "image_size 528 must be divisible by 64" in str(caught.value)
    assert "stem of stride 4" in str(caught.value)
    assert "model.max_working_size 256" in str(caught.value)


def _unet_runs(image_size: int, num_layers: int, max_working_size: int) -> bool:
    """Oracle, step by step: the stem halves while above the cap, then every max-pool halves;
    each halving must be exact."""
    size = image_size
    halvings = 0
    while size > max_working_size:
        if size % 2:
            return False
        size //= 2
        halvings += 1
    for _ in range(num_layers - 1):
        if size % 2:
            return False
        size //= 2
    return True


@settings(max_examples=300, deadline=None)
@given(
    image_size=st.integers(16, 1024),
    num_layers=st.integers(2, 9),
    max_working_size=st.integers(16, 1024),
)
def test_load_time_rule_equals_what_the_unet_can_build(image_size, num_layers, max_working_size):
    document = {
        "image_size": image_size,
        "model": {"num_layers": num_layers, "max_working_size": max_working_size},
    }
    try:
        params = project_params(document)
    except ParamsError as error:
        assert "must be divisible" in str(error)
        accepted = False
    else:
        accepted = True
        config = UNetConfig.from_params(params.model, params.image_size, len(params.palette))
        assert config.image_size % (config.stem_stride * 2 ** (num_layers - 1)) == 0
    assert accepted == _unet_runs(image_size, num_layers, max_working_size)


def shared_bomb(levels: int = 9) -> list:
    """9**levels strings through shared references: what an alias bomb becomes once loaded."""
    value: list = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


def test_error_messages_quote_only_an_excerpt_of_a_bad_value():
    bomb = shared_bomb()
    with pytest.raises(ParamsError) as caught:
        project_params({"lr": "x" * 100_000, "seed": bomb, "phantom": {"csf_hu": bomb}})
    message = str(caught.value)
    assert len(message) < 600, message
    assert "lr: Input should be a valid number" in message
    assert "seed: Input should be a valid integer" in message
    assert "phantom.csf_hu: Tuple should have at most 2 items" in message
    assert len(excerpt(["y" * 10_000] * 10_000)) <= MAX_EXCERPT_CHARS


# --- the file itself: anchors, aliases, size, depth, encoding ---


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "params.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &x 0.001\nlr: *x\n", "line 1: YAML anchors and aliases"),
        ("lr: 0.001\nmodel: &m {num_layers: 3}\n", "line 2: YAML anchors and aliases"),
        ("seed: " + "[" * 40 + "]" * 40 + "\n", f"nested deeper than {MAX_PARAMS_DEPTH} levels"),
        ("seed: " + "9" * 5000 + "\n", "unreadable value"),
        (b"lr: 0.001 \xff\n", "not UTF-8 text"),
        ("# padding\n" * (MAX_PARAMS_BYTES // 10 + 1), "larger than the 1,000,000-byte limit"),
    ],
)
def test_hostile_files_are_refused_before_any_value_is_built(tmp_path, text, expected):
    with pytest.raises(ParamsError) as caught:
        load_params(_write(tmp_path, text))
    assert expected in str(caught.value)
    assert str(tmp_path / "params.yaml") in str(caught.value)


def billion_laughs(levels: int = 9) -> str:
    """`lr` as the classic alias bomb: 9**levels strings from a few hundred bytes."""
    lines = ["lr:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"  a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# Peak memory of the child: VmHWM, because Linux carries ru_maxrss across fork and exec, so a
# child of this pytest process (TensorFlow loaded) would report the parent's peak.
BOMB_CHILD = """
import re, sys
from pathlib import Path
from pipeline.params import ParamsError, load_params
from tests.conftest import project_params
try:
    load_params(sys.argv[1])
except ParamsError as error:
    print(len(str(error)), str(error).splitlines()[0])
status = Path("/proc/self/status").read_text()
print("peak_kb", re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
"""


def test_alias_bomb_is_refused_with_bounded_memory(tmp_path):
    path = _write(tmp_path, billion_laughs())
    # A hang guard, not a speed check: unguarded, this file grows memory without limit.
    done = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_PARAMS.parent,
        check=True,
    )
    lines = done.stdout.splitlines()
    length, first = lines[0].split(" ", 1)
    assert "line 2: YAML anchors and aliases" in first
    assert int(length) < 300
    peak_mb = int(lines[-1].split()[1]) / 1024
    assert peak_mb < 250, f"refusing the bomb took {peak_mb:.0f} MB"


def test_cross_entropy_class_weights_must_weigh_every_class_of_rgb_map():
    document = project_params_document()
    del document["train"]["cross_entropy_class_weights"]["Ischemic"]
    with pytest.raises(ParamsError) as caught:
        parse_params(document)
    assert "train.cross_entropy_class_weights must weigh exactly the classes" in str(caught.value)
    assert "'Ischemic'" in str(caught.value)
    with pytest.raises(ParamsError, match=r"cross_entropy_class_weights\.Ischemic"):
        project_params({"train": {"cross_entropy_class_weights": {"Ischemic": 0.0}}})


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"lr_schedule": "constant", "warmup_epochs": 1, "reduce_lr": {"enabled": True}},
            r"train: .*warmup_epochs and reduce_lr.enabled both set the learning rate",
        ),
        ({"warmup_epochs": -1.0}, r"train\.warmup_epochs"),
        ({"foreground_oversampling": 1.0}, r"train\.foreground_oversampling"),
    ],
)
def test_warm_up_and_oversampling_values_that_cannot_work_are_refused(train, message):
    with pytest.raises(ParamsError, match=message):
        project_params({"train": train})


def test_a_region_loss_refuses_class_weights_it_would_ignore():
    with pytest.raises(ParamsError, match="loss dice has no cross-entropy term"):
        project_params(
            {"train": {"loss": "dice", "cross_entropy_class_weights": {"Ischemic": 3.0}}}
        )
    weights = project_params(
        {"train": {"loss": "focal", "cross_entropy_class_weights": {"Ischemic": 3.0}}}
    ).train.cross_entropy_class_weights
    assert weights["Ischemic"] == 3.0
