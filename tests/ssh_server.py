"""A throw-away OpenSSH server on 127.0.0.1, for tests that need a real SSH remote.

`ssh_server(folder)` starts Debian's `sshd` (package openssh-server) on a free port with a host
key and a user key made for it in `folder`, accepting only that key and only for the user who
runs the tests (root included: sshd allows root a key login by default). It stops the server,
and every connection process it forked, on exit. `SshServer.kill()` is a crash: the listener
and all its sessions die at once, as when the remote machine goes away mid-transfer.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "the SSH remote tests need Debian's OpenSSH server: `sudo apt-get install -y openssh-server`"
    " (`make test` installs it when it can)"
)
# As root, sshd drops each connection's pre-authentication process into this empty folder;
# Debian's service creates it at boot, which a container without init never does.
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
START_TIMEOUT_S = 20.0


def find_sshd() -> str:
    """Absolute path of sshd (it re-executes itself, so it must be absolute); AssertionError
    with the install line when it is absent (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    assert found, INSTALL_HINT
    return os.path.abspath(found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every living process whose chain of parents reaches `pid` (from /proc, Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we listed
            continue
        # The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


@dataclass
class SshServer:
    """A running sshd: where it listens, who may log in, and with which key."""

    port: int
    user: str
    keyfile: Path
    config: Path
    process: subprocess.Popen | None = None

    def url(self, remote_path: Path) -> str:
        return f"ssh://127.0.0.1:{self.port}{remote_path}"

    def start(self) -> None:
        """Start sshd in the foreground (-D) on the port and wait until it greets a client."""
        log = open(self.config.with_suffix(".log"), "ab")  # noqa: SIM115 - sshd holds it
        self.process = subprocess.Popen(
            [find_sshd(), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"sshd exited {self.process.returncode}: "
                f"{self.config.with_suffix('.log').read_text()}"
            )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as client:
                    if client.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sshd did not answer on port {self.port} in {START_TIMEOUT_S} s")

    def kill(self) -> None:
        """SIGKILL the listener and every session process it forked, then reap the listener."""
        if self.process is None:
            return
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with suppress(ProcessLookupError):  # it ended on its own meanwhile
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


def generate_key(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@contextmanager
def ssh_server(folder: Path) -> Iterator[SshServer]:
    """A started sshd whose keys and configuration live in `folder`; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key, user_key = folder / "host_ed25519", folder / "user_ed25519"
    for key in (host_key, user_key):
        generate_key(key)
    authorized = folder / "authorized_keys"
    shutil.copy(user_key.with_suffix(".pub"), authorized)
    if os.geteuid() == 0:
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                f"AllowUsers {getpass.getuser()}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # PAM would need the system's service file and, for a non-root server, fails.
                "UsePAM no",
                # The keys live in a temporary folder whose owner and modes sshd does not vet.
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    server = SshServer(port=port, user=getpass.getuser(), keyfile=user_key, config=config)
    server.start()
    try:
        yield server
    finally:
        server.kill()
