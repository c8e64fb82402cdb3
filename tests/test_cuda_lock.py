"""The GPU lock resolves as a set and differs from the CPU lock only in TensorFlow.

Offline: the resolution is replayed from the metadata pip recorded when it resolved the lock
(tools/cuda_lock.py says why the network resolve is not part of `make test`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import PROJECT_ROOT
from tools.cuda_lock import (
    CPU_LOCK,
    CUDA_LOCK,
    Distribution,
    LockError,
    check_lock,
    compare_locks,
    cuda_direct_requirements,
    load_metadata,
    pins,
)


def test_the_cuda_lock_resolves_for_linux_x86_64_python_3_11() -> None:
    environment, metadata = load_metadata()
    assert environment["sys_platform"] == "linux"
    assert environment["platform_machine"] == "x86_64"
    assert environment["python_version"] == "3.11"
    check_lock(cuda_direct_requirements(), pins(CUDA_LOCK), environment, metadata)


def test_the_locks_differ_only_in_tensorflow_and_its_cuda_wheels() -> None:
    environment, metadata = load_metadata()
    cpu, cuda = pins(CPU_LOCK), pins(CUDA_LOCK)
    only_cuda = compare_locks(cpu, cuda, metadata, environment)
    assert only_cuda and all(name.startswith("nvidia-") for name in only_cuda)
    assert str(cuda["tensorflow"][1]) == f"tensorflow[and-cuda]=={cpu['tensorflow-cpu'][0]}"


def write_lock(path: Path, lines: list[str]) -> dict:
    path.write_text("\n".join(lines) + "\n")
    return pins(path)


def test_a_hand_edited_pin_or_a_missing_dependency_fails(tmp_path: Path) -> None:
    environment, metadata = load_metadata()
    lines = [line for line in CUDA_LOCK.read_text().splitlines() if not line.startswith("#")]
    direct = cuda_direct_requirements()

    bumped = [("numpy==2.4.7" if line.startswith("numpy==") else line) for line in lines]
    with pytest.raises(LockError, match=r"numpy: pinned 2\.4\.7, metadata of 2\.4\.6"):
        check_lock(direct, write_lock(tmp_path / "a.txt", bumped), environment, metadata)

    without_cudnn = [line for line in lines if not line.startswith("nvidia-cudnn-cu12==")]
    with pytest.raises(LockError, match=r"requires nvidia-cudnn-cu12.*which the lock does not"):
        check_lock(direct, write_lock(tmp_path / "b.txt", without_cudnn), environment, metadata)

    direct_without_ruff = [line for line in direct if not line.startswith("ruff")]
    with pytest.raises(LockError, match="ruff is pinned but nothing requires it"):
        check_lock(
            direct_without_ruff, write_lock(tmp_path / "c.txt", lines), environment, metadata
        )


def test_a_pin_outside_a_requirement_and_markers_extras_are_evaluated() -> None:
    environment = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
    metadata = {
        "app": Distribution(
            "1.0", ("lib>=2", 'winonly; sys_platform == "win32"', 'gpu; extra == "cuda"')
        ),
        "lib": Distribution("1.5", ()),
        "gpu": Distribution("3.0", ()),
    }
    lock = {name: (d.version, Requirement(f"{name}=={d.version}")) for name, d in metadata.items()}
    with pytest.raises(LockError, match=r"app==1.0 requires lib>=2, the lock pins 1.5"):
        check_lock(["app[cuda]"], lock, environment, metadata)
    metadata["lib"] = Distribution("2.0", ())
    lock["lib"] = ("2.0", Requirement("lib==2.0"))
    check_lock(["app[cuda]"], lock, environment, metadata)  # winonly is not needed on linux
    with pytest.raises(LockError, match="gpu is pinned but nothing requires it"):
        check_lock(["app"], lock, environment, metadata)  # without the extra, gpu is stray


def test_a_version_drift_between_the_locks_fails(tmp_path: Path) -> None:
    environment, metadata = load_metadata()
    cpu_lines = CPU_LOCK.read_text().splitlines()
    drifted = [("numpy==2.4.7" if line.startswith("numpy==") else line) for line in cpu_lines]
    cpu = write_lock(tmp_path / "requirements.txt", drifted)
    with pytest.raises(LockError, match=r"numpy: 2.4.7 \(CPU lock\) vs 2.4.6 \(CUDA lock\)"):
        compare_locks(cpu, pins(CUDA_LOCK), metadata, environment)


@pytest.mark.parametrize(
    ("accel", "installed", "lock", "removed"),
    [
        (None, None, "requirements.txt", "tensorflow"),
        ("cuda", None, "requirements-cuda.txt", "tensorflow-cpu"),
        (None, "cuda", "requirements-cuda.txt", "tensorflow-cpu"),  # a cuda venv stays cuda
        ("cpu", "cuda", "requirements.txt", "tensorflow"),  # until asked to switch back
    ],
)
def test_make_setup_installs_the_lock_accel_names(
    tmp_path: Path, accel: str | None, installed: str | None, lock: str, removed: str
) -> None:
    venv = tmp_path / "venv"
    if installed:
        venv.mkdir()
        stamp = venv / f".installed-{installed}"
        stamp.touch()
        os.utime(stamp, (0, 0))  # older than the lock: make plans the reinstall to show it
    command = ["make", "-n", "-C", str(PROJECT_ROOT), "setup", f"VENV={venv}"]
    plan = subprocess.run(
        [*command, *([f"ACCEL={accel}"] if accel else [])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"pip uninstall --quiet --yes {removed}\n" in plan
    assert f"pip install --quiet -r {lock}\n" in plan
