"""Shared fixtures: a tiny-phantom DVC project in a temporary git repository.

End-to-end tests drive the real `git` and `dvc` command-line tools on a copy of this
project's code, with params shrunk so that a full `dvc repro` takes seconds.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.io import read_manifest, sha256_hex, write_manifest
from pipeline.params import Params, parse_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The committed default learning rate: tests that change lr pick another value from it.
DEFAULT_LR = float(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["lr"])
VENV_BIN = Path(sys.executable).parent
# What a project copy needs to run the pipeline: code, vendored assets, the DAG and the params.
PROJECT_FILES = (
    "pipeline",
    "stages",
    "vendor",
    "dvc.yaml",
    "params.yaml",
    ".gitignore",
    ".dvcignore",
)

# Small enough for seconds per stage, large enough that every split holds every class.
TINY_PARAMS: dict = {
    "image_size": 32,
    "phantom": {
        "image_size": 64,
        "hemorrhagic_cases": 4,
        "ischemic_cases": 5,
        "slices_per_case": 4,
        "hemorrhagic_cases_without_mask": 1,
        "testing_cases_per_class": 1,
        "files_per_other_modality": 1,
    },
    "validate": {
        "slices_per_class": {"min": 4, "max": 1000},
        "cases_per_class": {"min": 3, "max": 100},
        "min_lesion_slice_share": 0.2,
    },
    "split": {"ratios": {"train": 0.34, "valid": 0.33, "test": 0.33}, "mini_test_per_class": 1},
    "augment": {"elastic": {"alpha": 4.0, "sigma": 2.0, "variants": 1}},
    # Equal starting odds: after one epoch of a few slices a head started at the lesion prior
    # still calls every pixel background, and tests that compare two runs need Dice to move.
    "model": {"base_filters": 4, "num_layers": 3, "head_foreground_prior": 0.0},
    "train": {"epochs": 1, "batch_size": 4},
    "evaluate": {"overlay_slices": 1},
    "infer": {"latency_repeats": 2},
}


def deep_merge(base: Mapping, overrides: Mapping) -> dict:
    """`base` with `overrides` applied recursively (mappings merge, everything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def project_params_document(overrides: Mapping | None = None) -> dict:
    """The project's params.yaml with `overrides` merged in, key by key as `dvc exp run -S`
    sets them (mappings merge, anything else replaces): the values live in params.yaml alone,
    and a test states only what it is about."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    return deep_merge(raw, overrides or {})


def project_params(overrides: Mapping | None = None) -> Params:
    """`project_params_document(overrides)`, validated."""
    return parse_params(project_params_document(overrides))


def write_project_params(path: Path, overrides: Mapping | None = None) -> Path:
    """`project_params_document(overrides)` written to `path`, for a stage run elsewhere."""
    path.write_text(yaml.safe_dump(project_params_document(overrides), sort_keys=False))
    return path


def run_stage_command(stage: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m stages.<stage> ARGS` as a user runs it, from `workdir` (its params.yaml, its
    data/), with the project's code on the path; output captured, at most 300 s."""
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def original_row(
    slice_id: str, case_id: str, class_name: str, size: int, lesion_pixels: int, folder: str = ""
) -> dict[str, object]:
    """A manifest row (contract columns but the sha256 ones) of an original slice, with the
    geometry of a 512 px slice of 0.45 mm pixels resized to `size`.

    Its files are `<folder>images/<id>.png` and `<folder>masks/<id>.png`.
    """
    return {
        "id": slice_id,
        "case_id": case_id,
        "class": class_name,
        "source": "original",
        "source_id": slice_id,
        "image_path": f"{folder}images/{slice_id}.png",
        "mask_path": f"{folder}masks/{slice_id}.png",
        "width": size,
        "height": size,
        "lesion_pixels": lesion_pixels,
        "pixel_spacing_mm": 0.45 * 512 / size,
        "slice_thickness_mm": 5.0,
    }


def with_sha256(rows: list[dict] | pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Manifest rows with their `image_sha256` and `mask_sha256` measured from the files.

    Paths are relative to `folder` (where the manifest goes); a missing file gets "".
    """
    frame = pd.DataFrame(rows)
    for kind in ("image", "mask"):
        # normpath: `folder` may not exist yet, and `..` cannot climb out of a missing folder.
        files = [Path(os.path.normpath(folder / path)) for path in frame[f"{kind}_path"]]
        frame[f"{kind}_sha256"] = [
            sha256_hex(file.read_bytes()) if file.is_file() else "" for file in files
        ]
    return frame


def rehash_manifest(path: Path) -> None:
    """Rewrite a manifest's sha256 columns after a test changed its files on purpose."""
    write_manifest(path, with_sha256(read_manifest(path), path.parent))


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this venv's tools first, quiet TensorFlow, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONHASHSEED="0",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    return env


@dataclass
class DvcProject:
    """A throw-away copy of the project, as its own git + DVC repository."""

    path: Path

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(args),
            cwd=self.path,
            env={**tool_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}"
                f"\n--- stderr\n{result.stderr}"
            )
        return result

    def dvc(
        self, *args: str, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, check=check, env=env)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("git", *args, check=check)

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def update_params(self, overrides: Mapping) -> None:
        merged = deep_merge(self.params(), overrides)
        (self.path / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))


def create_project(destination: Path, overrides: Mapping | None = None) -> DvcProject:
    """Copy the project's code into `destination`, shrink its params, init git and DVC."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source, destination / name)
    project = DvcProject(destination)
    project.update_params(deep_merge(TINY_PARAMS, overrides or {}))
    project.git("init", "-q", "-b", "main")
    project.dvc("init", "-q")
    # The project's committed DVC settings (no analytics, the offline plots page).
    shutil.copy2(PROJECT_ROOT / ".dvc" / "config", destination / ".dvc" / "config")
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "tiny project")
    return project


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., DvcProject]:
    """Factory: `make_project(overrides)` returns a fresh tiny DvcProject under tmp_path."""
    counter = iter(range(1000))

    def factory(overrides: Mapping | None = None) -> DvcProject:
        return create_project(tmp_path / f"project{next(counter)}", overrides)

    return factory
