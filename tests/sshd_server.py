"""A real OpenSSH server on loopback for the ssh transport's tests: Debian's `openssh-server`, a throwaway host
key and user key in a temp folder, a free non-default port, ListenAddress 127.0.0.1, run as the current user.

`ssh_server` (a pytest fixture) yields a `LoopbackSsh`: the target URL and an ssh config file that names the
user key and a known_hosts holding the server's key, so the client checks the host key strictly. Installs
openssh-server with apt-get when sshd is missing (CI runs as root on a clean machine); skips, saying why, only
if that cannot be done.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 15


@dataclass(frozen=True)
class LoopbackSsh:
    port: int
    user: str
    config: Path  # ssh_config for the client
    folder: Path

    @property
    def target(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def leftovers(self) -> list[str]:
        """edgecompress folders in the remote's temp folder (the server is this machine)."""
        root = Path(os.environ.get("TMPDIR", "/tmp"))
        return sorted(p.name for p in root.glob("edgecompress.*"))


def ensure_sshd() -> None:
    if SSHD.exists() and shutil.which("ssh") and shutil.which("scp"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("sshd is not installed and cannot be: not root or no apt-get (install openssh-server)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.skip(f"cannot install openssh-server with apt-get: {proc.stderr.strip()[-300:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def write_server_config(folder: Path, port: int, user_key: str, extra: str = "") -> Path:
    (folder / "authorized_keys").write_text(user_key + "\n")
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
        "LogLevel ERROR\n" + extra
    )
    return config


def write_client_config(folder: Path, port: int, host_key: str) -> Path:
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    config = folder / "ssh_config"
    config.write_text(
        f"Host 127.0.0.1\n  IdentityFile {folder / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
    )
    return config


def wait_listening(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.returncode}: {server.stderr.read() if server.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")


@contextmanager
def start_sshd(folder: Path, extra: str = ""):
    """A server with fresh keys in `folder` (extra: more sshd_config lines), stopped on exit."""
    ensure_sshd()
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder, made by its init script
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_key, user_key = keygen(folder / "host_key"), keygen(folder / "user_key")
    config = write_server_config(folder, port, user_key, extra)
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, server)
        yield LoopbackSsh(port, getpass.getuser(), write_client_config(folder, port, host_key), folder)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
