"""The team loop through real DVC remotes, driven by the real `git` and `dvc` CLIs.

A tiny project is built once (one full `dvc repro`) and shared through a bare git origin and a
DVC remote the test starts itself: a folder (a team's shared drive) and an SSH server on
127.0.0.1 (tests/ssh_server.py: Debian's `sshd`, dvc-ssh on the client). One clone pushes; a
fresh `git clone` plus `dvc pull` must get the data, the model and the reports with nothing left
to run; an experiment travels by `dvc exp push`/`pull`; a push cut off by killing the server half
way through a file leaves a remote that the next push completes; another repository gets the
model as the registered artifact `stroke-seg` (dvc.yaml `artifacts:`).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from pipeline.io import sha256_hex
from tests.conftest import DvcProject, create_project, tool_env
from tests.ssh_server import SshServer, ssh_server
from tests.test_dvc_workflow import ran_and_skipped, status_stages

REMOTE = "team"
ARTIFACT = "stroke-seg"
ARTIFACT_VERSION = "v0.1.0"
# The folders holding DVC outputs; every file in them must come back byte for byte.
OUTPUT_FOLDERS = ("data", "models", "reports")
# Large enough that the server dies inside its upload rather than between two small files.
LARGE_FILE_BYTES = 64 << 20
CUT_AT_BYTES = 4 << 20
PUSH_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> DvcProject:
    """A tiny project after one full `dvc repro`, committed; its cache holds the whole run."""
    project = create_project(tmp_path_factory.mktemp("team") / "built")
    project.dvc("repro")
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "baseline run")
    return project


@pytest.fixture
def ssh(tmp_path) -> Iterator[SshServer]:
    with ssh_server(tmp_path / "sshd") as server:
        yield server


def git_clone(source: Path, destination: Path, *options: str) -> DvcProject:
    subprocess.run(
        ["git", "clone", "-q", *options, str(source), str(destination)],
        check=True,
        capture_output=True,
        env=tool_env(),
    )
    return DvcProject(destination)


def start_team(built: DvcProject, folder: Path, remote_url: str) -> tuple[Path, DvcProject]:
    """A bare git origin of the built project, and the author's clone of it holding the run
    (its cache and outputs), whose committed config names `remote_url` as the default remote."""
    origin = folder / "origin.git"
    git_clone(built.path, origin, "--bare")
    author = git_clone(origin, folder / "author")
    author.run("cp", "-a", str(built.path / ".dvc" / "cache"), str(author.path / ".dvc"))
    author.dvc("checkout", "-q")
    author.dvc("remote", "add", "--default", REMOTE, remote_url)
    author.git("add", ".dvc/config")
    author.git("commit", "-q", "-m", f"default remote {REMOTE}")
    author.git("push", "-q", "origin", "main")
    return origin, author


def log_in(project: DvcProject, server: SshServer) -> None:
    """A teammate's own credentials: in .dvc/config.local, which git never sees."""
    project.dvc("remote", "modify", "--local", REMOTE, "user", server.user)
    project.dvc("remote", "modify", "--local", REMOTE, "keyfile", str(server.keyfile))


def output_files(project: DvcProject) -> dict[str, str]:
    """sha256 of every file in the output folders, by path relative to the project."""
    return {
        str(path.relative_to(project.path)): sha256_hex(path.read_bytes())
        for folder in OUTPUT_FOLDERS
        for path in sorted((project.path / folder).rglob("*"))
        if path.is_file() and path.name != ".gitignore"
    }


def assert_pull_restores_the_run(
    author: DvcProject, origin: Path, destination: Path, server: SshServer | None = None
) -> DvcProject:
    """A fresh clone of `origin` pulls (each object checked against its hash) exactly the
    author's outputs, and then has nothing to run."""
    teammate = git_clone(origin, destination)
    assert not (teammate.path / "models" / "model.keras").exists()
    if server is not None:
        log_in(teammate, server)
    teammate.dvc("remote", "modify", "--local", REMOTE, "verify", "true")
    teammate.dvc("pull")
    pulled = output_files(teammate)
    assert pulled == output_files(author)
    for expected in ("data/split/manifest.csv", "models/model.keras", "reports/index.html"):
        assert expected in pulled
    assert any(path.startswith("reports/evaluate/") for path in pulled)
    assert status_stages(teammate) == set()
    assert json.loads(teammate.dvc("status", "--cloud", "--json").stdout or "{}") == {}
    ran, _ = ran_and_skipped(teammate.dvc("repro").stdout)
    assert ran == set()
    return teammate


def remote_sizes(remote: Path) -> list[int]:
    """The size of every file under a DVC remote folder, temporary uploads included."""
    sizes = []
    for path in remote.rglob("*"):
        # A push in progress renames its temporary uploads while we list.
        with suppress(FileNotFoundError):
            if path.is_file():
                sizes.append(path.stat().st_size)
    return sizes


def assert_every_object_matches_its_name(remote: Path) -> None:
    """A remote object is named by the md5 of its bytes (files/md5/ab/cdef...[.dir]);
    hidden names are uploads in progress, which no reader takes for an object."""
    objects = [path for path in (remote / "files" / "md5").rglob("*") if path.is_file()]
    assert objects
    for path in objects:
        if path.name.startswith("."):
            continue
        name = path.parent.name + path.name.removesuffix(".dir")
        assert hashlib.md5(path.read_bytes()).hexdigest() == name, f"corrupt object {path}"


@pytest.fixture(scope="module")
def folder_team(built, tmp_path_factory) -> tuple[Path, DvcProject, Path]:
    """Origin, author and a shared-folder remote the author has pushed the run to."""
    folder = tmp_path_factory.mktemp("folder-team")
    remote = folder / "shared-drive" / "dvc-remote"
    origin, author = start_team(built, folder, str(remote))
    assert "files pushed" in author.dvc("push").stdout
    return origin, author, remote


def test_the_team_loop_through_a_shared_folder_remote(folder_team, tmp_path):
    origin, author, remote = folder_team
    assert_every_object_matches_its_name(remote)
    assert_pull_restores_the_run(author, origin, tmp_path / "teammate")


def test_the_team_loop_through_an_ssh_remote_survives_a_push_cut_off_half_way(built, tmp_path, ssh):
    remote = tmp_path / "ssh-remote"
    origin, author = start_team(built, tmp_path, ssh.url(remote))
    log_in(author, ssh)
    large = author.path / "large.bin"
    large.write_bytes(random.Random(0).randbytes(LARGE_FILE_BYTES))
    author.dvc("add", "-q", "large.bin")
    author.git("add", "large.bin.dvc", ".gitignore")
    author.git("commit", "-q", "-m", "a large file")
    author.git("push", "-q", "origin", "main")

    push = subprocess.Popen(
        ["dvc", "push"],
        cwd=author.path,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + PUSH_TIMEOUT_S
    while push.poll() is None and time.monotonic() < deadline:
        if any(CUT_AT_BYTES <= size < LARGE_FILE_BYTES for size in remote_sizes(remote)):
            ssh.kill()
            break
        time.sleep(0.005)
    output = push.communicate(timeout=PUSH_TIMEOUT_S)[0]
    assert push.returncode != 0, f"the push ended before the server could be killed:\n{output}"
    assert any(0 < size < LARGE_FILE_BYTES for size in remote_sizes(remote))
    assert_every_object_matches_its_name(remote)

    ssh.start()
    assert "pushed" in author.dvc("push").stdout
    assert_every_object_matches_its_name(remote)
    assert_pull_restores_the_run(author, origin, tmp_path / "teammate", ssh)


def test_an_experiment_travels_through_the_git_origin_and_the_remote(folder_team, tmp_path):
    origin, author, _ = folder_team
    # A param only infer (and the report) read: a real experiment with new outputs, cheaply.
    author.dvc("exp", "run", "--name", "overlay-03", "-S", "infer.overlay_alpha=0.3")
    try:
        author.dvc("exp", "push", "origin", "overlay-03")
        teammate = git_clone(origin, tmp_path / "teammate")
        assert "overlay-03" in teammate.dvc("exp", "list", "origin").stdout
        teammate.dvc("exp", "pull", "origin", "overlay-03")
        shown = json.loads(teammate.dvc("exp", "show", "--json").stdout)
        experiments = {
            run["name"]: run["revs"][0]["data"]["params"]["params.yaml"]["data"]
            for record in shown
            for run in record.get("experiments") or []
        }
        assert experiments["overlay-03"]["infer"]["overlay_alpha"] == 0.3
        teammate.dvc("exp", "apply", "overlay-03")
        assert teammate.params()["infer"]["overlay_alpha"] == 0.3
        assert output_files(teammate) == output_files(author)
        assert status_stages(teammate) == set()
    finally:  # the author's workspace back to the pushed commit, for the other tests
        author.git("checkout", "--", ".")
        author.dvc("checkout", "-q", "--force")


def test_another_repository_gets_the_model_as_a_registered_artifact(folder_team, tmp_path):
    origin, author, _ = folder_team
    released = author.git("rev-parse", "HEAD").stdout.strip()
    tag = f"{ARTIFACT}@{ARTIFACT_VERSION}"
    # A model version as GTO (DVC's model registry) writes it: an annotated tag, pushed.
    message = f"Registering artifact {ARTIFACT} version {ARTIFACT_VERSION}"
    author.git("tag", "-a", tag, "-m", message)
    author.git("push", "-q", "origin", tag)
    model = (author.path / "models" / "model.keras").read_bytes()

    consumer = DvcProject(tmp_path / "consumer")
    consumer.path.mkdir()
    consumer.git("init", "-q")
    consumer.dvc("init", "-q")
    # By version, from the bare origin (no cache there): through the team remote its
    # committed config names.
    get = ["artifacts", "get", str(origin), ARTIFACT, "--rev", ARTIFACT_VERSION]
    consumer.dvc(*get, "-o", "by-version.keras")
    assert (consumer.path / "by-version.keras").read_bytes() == model
    # By git revision, from the author's working copy: served from its cache, no remote needed.
    imported = consumer.path / "imported.keras"
    consumer.dvc(
        "import", str(author.path), "models/model.keras", "--rev", released, "-o", imported.name
    )
    assert imported.read_bytes() == model
    assert released in imported.with_suffix(".keras.dvc").read_text()
