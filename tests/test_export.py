"""Stage `export`: the SavedModel serves the project's predictions in a process that knows
nothing of the project, and metadata.json states the model's contract."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate.headline import HEADLINE_FIGURES
from pipeline.infer.inference import Segmenter, to_model_input
from pipeline.io import DataError, read_image, sha256_hex
from pipeline.model.network import build_model
from pipeline.params import ExtractParams, HeadCropParams, InferParams
from pipeline.report.export import export_model
from tests.conftest import PROJECT_ROOT, project_params

SIZE = 32
PARAMS = project_params({"image_size": SIZE, "model": {"base_filters": 4, "num_layers": 3}})
REAL_SLICE = next((PROJECT_ROOT / "tests" / "data" / "real-ct" / "images").glob("*.png"))

# Run with `python -I` from an empty folder: neither the project nor PYTHONPATH is importable,
# only TensorFlow, the SavedModel and the contract in metadata.json.
SERVE_SCRIPT = """
import json, sys
import numpy as np
try:
    import pipeline
except ModuleNotFoundError:
    pass
else:
    sys.exit("the project is importable here")
import tensorflow as tf
saved_model, metadata_path, images_path, out_path = sys.argv[1:]
contract = json.load(open(metadata_path))["input"]["tensor"]
images = np.load(images_path)
assert list(images.shape[1:]) == contract["shape"][1:] and str(images.dtype) == contract["dtype"]
low, high = contract["value_range"]
assert low <= images.min() and images.max() <= high
served = tf.saved_model.load(saved_model)
np.save(out_path, getattr(served, contract["endpoint"])(tf.constant(images)).numpy())
print(sorted(name for name in sys.modules if name.split(".")[0] in ("pipeline", "stages")))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A FlexUNet with random weights (untrained: the contract, not the skill, is tested)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    root = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(3)
    (root / "models").mkdir()
    build_model(PARAMS).save(root / "models" / "model.keras")
    shutil.copy(PROJECT_ROOT / "metrics" / "evaluate.json", root / "evaluate.json")
    export_model(
        PARAMS,
        root / "models" / "model.keras",
        root / "evaluate.json",
        root / "models" / "saved_model",
        root / "models" / "metadata.json",
    )
    return root


def test_saved_model_in_a_process_without_the_project_matches_its_prediction(
    exported: Path, tmp_path: Path
) -> None:
    models = exported / "models"
    grey = read_image(REAL_SLICE)
    images = np.stack([to_model_input(grey, SIZE), to_model_input(grey[:, ::-1], SIZE)])
    np.save(tmp_path / "images.npy", images)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            SERVE_SCRIPT,
            str(models / "saved_model"),
            str(models / "metadata.json"),
            str(tmp_path / "images.npy"),
            str(tmp_path / "served.npy"),
        ],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # no project module loaded
    served = np.load(tmp_path / "served.npy")
    project = Segmenter.from_file(models / "model.keras", batch_size=2).softmax(images)
    assert served.shape == project.shape == (2, SIZE, SIZE, len(PARAMS.palette))
    np.testing.assert_allclose(served, project, atol=1e-5)
    np.testing.assert_array_equal(served.argmax(-1), project.argmax(-1))


def test_metadata_states_the_contract_provenance_figures_and_hashes(exported: Path) -> None:
    models = exported / "models"
    metadata = json.loads((models / "metadata.json").read_text())
    assert metadata["version"] and metadata["model_version"]
    assert "not a medical device" in metadata["medical_device"]
    contract = metadata["input"]
    assert contract["tensor"] == {
        "shape": [None, SIZE, SIZE, 3],
        "dtype": "float32",
        "value_range": [0.0, 255.0],
        "endpoint": "serve",
    }
    assert contract["window"]["level_hu"] == 40.0 and contract["window"]["width_hu"] == 80.0
    assert [(c["index"], c["label"], c["colour"]) for c in metadata["output"]["classes"]] == [
        (0, "background", [0, 0, 0]),
        (1, "Hemorrhagic", [255, 0, 0]),
        (2, "Ischemic", [0, 255, 0]),
    ]
    data = metadata["training_data"]
    assert data["phantom"] is True
    for licence in ("CC BY 4.0", "AISD", "non-commercial"):
        assert licence in data["licences"]
    evaluate = json.loads((exported / "evaluate.json").read_text())
    figures = metadata["evaluation"]["figures"]
    assert figures["dice_hemorrhagic"] == {
        "value": evaluate["dice_hemorrhagic"],
        "ci_low": evaluate["dice_hemorrhagic_ci_low"],
        "ci_high": evaluate["dice_hemorrhagic_ci_high"],
    }
    assert {key.rsplit("_", 1)[0] for key in figures} == set(HEADLINE_FIGURES)
    # Every model file, each with its sha256.
    files = {
        path.relative_to(models).as_posix()
        for path in models.rglob("*")
        if path.is_file() and path.name != "metadata.json"
    }
    assert set(metadata["files_sha256"]) == files
    for name, digest in metadata["files_sha256"].items():
        assert sha256_hex((models / name).read_bytes()) == digest
    # The new-images command's settings validate as the params they came from.
    settings = metadata["settings"]
    assert ExtractParams.model_validate(settings["extract"]) == PARAMS.extract
    assert HeadCropParams.model_validate(settings["head_crop"]) == PARAMS.head_crop
    assert InferParams.model_validate(settings["infer"]) == PARAMS.infer


def unnumbered(name: str) -> str:
    return re.sub(r"seed_generator_\d+", "seed_generator", name)


def test_two_exports_hold_the_same_variables(exported: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    models = exported / "models"
    again = tmp_path / "models"
    shutil.copytree(models, again, ignore=shutil.ignore_patterns("saved_model", "metadata.json"))
    export_model(
        PARAMS,
        again / "model.keras",
        exported / "evaluate.json",
        again / "saved_model",
        again / "metadata.json",
    )
    first = tf.saved_model.load(str(models / "saved_model")).variables
    second = tf.saved_model.load(str(again / "saved_model")).variables
    # Keras numbers seed generators per process (seed_generator_3, _9, ...): names aside.
    assert [unnumbered(v.name) for v in first] == [unnumbered(v.name) for v in second]
    for one, other in zip(first, second, strict=True):
        np.testing.assert_array_equal(one.numpy(), other.numpy(), err_msg=one.name)


def test_export_without_evaluate_metrics_names_the_file(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.json: not found \(did the evaluate stage run"):
        export_model(
            PARAMS,
            exported / "models" / "model.keras",
            tmp_path / "missing.json",
            tmp_path / "saved_model",
            tmp_path / "metadata.json",
        )
    assert not (tmp_path / "saved_model").exists()
