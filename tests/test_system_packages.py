"""`make test` sets up what its tests need from Debian, or stops first with what to install.

tools/system_packages.sh runs before anything else in `make test`. These tests run it (and
`make test` itself) with a PATH that holds only the real tools the situation has, which is how
a machine without Chromium looks to it: the browser's commands are simply not found. The
install itself (apt-get as root) is not run here; `.ci/run` does it on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "tools" / "system_packages.sh"
# The Debian package of each command the tests run.
PACKAGE_OF = {"chromium": "chromium", "chromedriver": "chromium-driver", "sshd": "openssh-server"}


@pytest.fixture
def bin_folder() -> Iterator[Path]:
    """An empty folder to fill with links to real tools and use as the whole PATH; readable
    by every user, since a root test runs the script as an unprivileged one."""
    folder = Path(tempfile.mkdtemp(prefix="system-packages-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def link_tools(folder: Path, *names: str) -> None:
    for name in names:
        found = shutil.which(name)
        assert found, f"{name} is not installed"
        (folder / name).symlink_to(found)


def missing_without_browser() -> list[str]:
    """What the script reports with no browser on PATH: sshd is also looked up in sbin."""
    has_sshd = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    return ["chromium", "chromedriver"] + ([] if has_sshd else ["sshd"])


def as_unprivileged_user(command: list[str]) -> list[str]:
    """`command` as the user `nobody` when the tests run as root (root may always install)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (Debian package util-linux) is not installed"
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def test_without_apt_get_make_test_stops_before_any_test_with_one_sentence(bin_folder):
    link_tools(bin_folder, "bash", "env", "id", "make")
    result = subprocess.run(
        ["make", "test"],
        cwd=PROJECT_ROOT,
        # Should make ever reach pytest (the failure this test is for), it only collects.
        env={"PATH": str(bin_folder), "PYTEST_ADDOPTS": "--collect-only"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stdout == "bash tools/system_packages.sh\n"
    sentences = [line for line in result.stderr.splitlines() if not line.startswith("make:")]
    assert len(sentences) == 1, result.stderr
    missing = missing_without_browser()
    assert f"needs the commands {' '.join(missing)} " in sentences[0]
    assert f"(Debian packages {' '.join(PACKAGE_OF[c] for c in missing)})" in sentences[0]
    assert sentences[0].endswith("then run make test again.")


def test_a_user_who_cannot_install_is_told_the_apt_get_line(bin_folder):
    # apt-get is there, sudo is not: the usual Debian desktop account without the browser.
    link_tools(bin_folder, "bash", "id", "apt-get")
    script = shutil.copy(SCRIPT, bin_folder)
    result = subprocess.run(
        as_unprivileged_user(["bash", script]),
        env={"PATH": str(bin_folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    packages = " ".join(PACKAGE_OF[c] for c in missing_without_browser())
    assert result.stderr == (
        f"make test needs the Debian packages {packages}, which this user cannot install (not"
        f" root, no sudo without a password): run `sudo apt-get install -y {packages}`, then"
        " make test again.\n"
    )


def test_with_everything_installed_it_says_nothing_and_installs_nothing(bin_folder):
    # No apt-get on this PATH: had the script thought anything missing, it would stop.
    link_tools(bin_folder, "bash", "chromium", "chromedriver")
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"PATH": str(bin_folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
