"""`pip install .` gives `stroke-seg`: in a fresh virtual environment outside the project, run
from a folder without params.yaml, it writes what `python -m stages.infer --input` writes.

Installing TensorFlow afresh takes minutes, so the fresh environment gets the project alone
(`pip install --no-deps`, offline) and reaches the dependencies already installed in the
project's .venv through a .pth file: the command, its entry point and its package come from
the new install, nothing from the project folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pydicom
import pytest

from pipeline.infer.command import new_images_parser
from pipeline.report.export import export_model
from tests.conftest import PROJECT_ROOT, project_params, write_project_params
from tests.test_dicom import phantom_dicom, series_folders  # noqa: F401 (a pytest fixture)
from tests.test_inference import MODEL_SIZE, tiny_model  # noqa: F401 (a pytest fixture)

PACKAGE_SOURCES = ("pyproject.toml", "pipeline", "stages")
OVERRIDES = {"image_size": MODEL_SIZE, "infer": {"batch_size": 4}}
REAL_SAMPLES = PROJECT_ROOT / "tests" / "data" / "real-ct" / "images"
SOURCE_KEY = "triage_threshold_source"
PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"
OPTIONS = ("--input", "--output", "--model", "--metadata", "--tta-flip", "--evaluate-metrics")


def clean_environment() -> dict[str, str]:
    """No PYTHONPATH, no virtual environment: only what the command's own install gives."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def stroke_seg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("package")
    source = root / "source"  # a copy: the build writes build/ and *.egg-info beside it
    source.mkdir()
    for name in PACKAGE_SOURCES:
        if (PROJECT_ROOT / name).is_dir():
            shutil.copytree(
                PROJECT_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(PROJECT_ROOT / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site_packages = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", PURELIB],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site_packages / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            *(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"),
            *("--no-deps", "--no-build-isolation", "--no-index", str(source)),
        ],
        check=True,
        timeout=300,
        env=clean_environment(),
        cwd=root,
    )
    shutil.rmtree(source)
    return venv / "bin" / "stroke-seg"


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory, tiny_model) -> Path:  # noqa: F811 (the fixture)
    models = tmp_path_factory.mktemp("exported") / "models"
    models.mkdir()
    shutil.copy(tiny_model, models / "model.keras")
    export_model(
        project_params(OVERRIDES),
        models / "model.keras",
        PROJECT_ROOT / "metrics" / "evaluate.json",
        models / "saved_model",
        models / "metadata.json",
    )
    return models / "model.keras"


def run_installed(command: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    assert not (cwd / "params.yaml").exists()
    return subprocess.run(
        [str(command), *args],
        cwd=cwd,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_in_project(tmp_path: Path, model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The new-images command as the project runs it, with the same settings in params.yaml."""
    params = write_project_params(tmp_path / "params.yaml", OVERRIDES)
    return subprocess.run(
        [
            *(sys.executable, "-m", "stages.infer"),
            *("--params", str(params), "--model", str(model), *args),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_both(
    stroke_seg: Path,
    model: Path,
    tmp_path: Path,
    arguments: tuple[str, ...],
    project_arguments: tuple[str, ...] = (),
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """The installed command from an empty folder (output tmp_path/installed) and the project's
    (output tmp_path/project) on the same inputs; both must succeed."""
    installed = run_installed(
        stroke_seg,
        tmp_path / "elsewhere",
        *("--model", str(model), *arguments, "--output", str(tmp_path / "installed")),
    )
    project = run_in_project(
        tmp_path,
        model,
        *arguments,
        *project_arguments,
        *("--output", str(tmp_path / "project")),
    )
    assert installed.returncode == 0, installed.stderr
    assert project.returncode == 0, project.stderr
    return installed, project


def tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_help_names_every_option_with_its_default(stroke_seg: Path, tmp_path: Path) -> None:
    result = run_installed(stroke_seg, tmp_path / "anywhere", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert option in text
    for default in (
        "(default: models/model.keras)",
        "(default: off)",
        "(default: metadata.json beside --model)",
        "(default: the evaluation figures in --metadata)",
    ):
        assert default in text
    assert "not a medical device" in text


@pytest.mark.parametrize("installed", [True, False], ids=["stroke-seg", "stages.infer"])
def test_every_option_states_its_default(installed: bool) -> None:
    parser = new_images_parser("command", "", installed=installed)
    for action in parser._actions:
        if action.option_strings != ["-h", "--help"] and not action.required:
            assert "(default: " in action.help, action.option_strings


def test_installed_command_segments_png_like_the_project(
    stroke_seg: Path, exported_model: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(REAL_SAMPLES, inputs / "folder")
    single = inputs / "single.png"
    shutil.copy(next(REAL_SAMPLES.glob("*.png")), single)
    empty = inputs / "nested"
    shutil.copytree(REAL_SAMPLES, empty / "images")
    arguments = ("--input", str(inputs / "folder"), str(single), str(empty))

    installed, project = run_both(stroke_seg, exported_model, tmp_path, arguments)
    produced = tree(tmp_path / "installed")
    assert len(produced) == 2 * (len(list(REAL_SAMPLES.glob("*.png"))) + 1)
    assert produced == tree(tmp_path / "project")
    # A folder whose images sit in a subfolder is named, with the subfolder to pick.
    for result in (installed, project):
        assert f"skipped {empty}: no PNG/JPEG file at its top level" in result.stderr
        assert "subfolders are not searched, name the one to segment: images" in result.stderr


def test_installed_command_segments_dicom_folders_and_zips_like_the_project(
    stroke_seg: Path,
    exported_model: Path,
    phantom_dicom: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    folder, zipped = series_folders(phantom_dicom)[:2]
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(zipped.rglob("*")):
            bundle.write(path, path.relative_to(zipped).as_posix())
    arguments = ("--input", str(folder), str(archive))
    # The project's command, with the evaluate metrics that export copied into the metadata.
    evaluate_metrics = ("--evaluate-metrics", str(PROJECT_ROOT / "metrics" / "evaluate.json"))
    installed, _ = run_both(stroke_seg, exported_model, tmp_path, arguments, evaluate_metrics)
    produced, expected = tree(tmp_path / "installed"), tree(tmp_path / "project")
    assert sorted(produced) == sorted(expected)
    assert sum(name.endswith("seg.dcm") for name in produced) == 2
    for name, content in produced.items():
        if name.endswith("summary.json"):  # says where each command took its threshold from
            mine, theirs = json.loads(content), json.loads(expected[name])
            assert mine.pop(SOURCE_KEY).startswith(str(exported_model.parent / "metadata.json"))
            assert theirs.pop(SOURCE_KEY).startswith(str(PROJECT_ROOT / "metrics"))
            assert mine == theirs
        elif name.endswith("seg.dcm"):  # its creation time differs: the segments may not
            mine, theirs = (pydicom.dcmread(io.BytesIO(b)) for b in (content, expected[name]))
            assert mine.SOPInstanceUID == theirs.SOPInstanceUID
            assert (mine.pixel_array == theirs.pixel_array).all()
        else:
            assert content == expected[name], name
    # Both took the threshold the project's evaluate validated (committed in metrics/).
    evaluate = json.loads((PROJECT_ROOT / "metrics" / "evaluate.json").read_text())
    threshold_ml = evaluate["triage_threshold_ml_hemorrhagic"]
    assert f"triage threshold {threshold_ml:g} mL from " in installed.stderr


def test_missing_metadata_and_an_explicit_missing_metrics_file_are_errors(
    stroke_seg: Path,
    exported_model: Path,
    phantom_dicom: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    lonely = tmp_path / "lonely" / "model.keras"
    lonely.parent.mkdir()
    shutil.copy(exported_model, lonely)
    no_metadata = run_installed(
        stroke_seg, tmp_path / "here", "--model", str(lonely), "--input", "x", "--output", "y"
    )
    assert no_metadata.returncode == 1
    metadata = lonely.parent / "metadata.json"
    assert f"stroke-seg failed: {metadata}: not found (the model's metadata" in no_metadata.stderr
    series = str(series_folders(phantom_dicom)[0])
    missing = tmp_path / "missing.json"
    no_metrics = run_installed(
        stroke_seg,
        tmp_path / "here",
        *("--model", str(exported_model), "--input", series, "--output", str(tmp_path / "o")),
        *("--evaluate-metrics", str(missing)),
    )
    assert no_metrics.returncode == 1
    assert f"{missing}: --evaluate-metrics file not found" in no_metrics.stderr


def test_the_stage_states_its_fallback_when_the_default_metrics_are_missing(
    exported_model: Path,
    phantom_dicom: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    params = write_project_params(tmp_path / "params.yaml", OVERRIDES)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "stages.infer", "--params", str(params)),
            *("--model", str(exported_model), "--output", str(tmp_path / "out")),
            *("--input", str(series_folders(phantom_dicom)[0])),
        ],
        cwd=tmp_path,  # no metrics/evaluate.json here
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "WARNING pipeline.infer.command: metrics/evaluate.json not found: the triage threshold is "
        "0.1 mL, params infer.triage_threshold_ml_hemorrhagic (default, not validated)"
    ) in result.stderr
