"""The ssh transport: the standalone runner on a Linux board, through the system OpenSSH client.

    probe   ssh: the remote Python present? a fresh folder from mktemp -d, and the free space there
    copy    scp: runner script, artifact, inputs .npz into that folder
    run     ssh: `timeout T python3 runner.py ...` (or the --remote-python) in the folder; its PID is kept there
    clean   ssh: stop that PID if it still runs, rm -rf the folder: always, on failure and on Ctrl-C too

ssh runs with BatchMode (never a password prompt: a refused key fails at once) and a connect timeout.
Identity, known hosts and jump hosts come from the user's ssh config, or the file `--ssh-config` names.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgecompress.backends import backend_for_runner
from edgecompress.errors import UserError
from edgecompress.measure.runner import RUNNER_USER_ERROR, RunRequest, parse_json_result, runner_script
from edgecompress.measure.transports._commands import (
    CLIENT_GRACE_S,
    TIMED_OUT_STATUSES,
    ClientTimeout,
    last_line,
    run_client,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
DEFAULT_PYTHON = "python3"
SSH_FAILED = 255  # ssh's own status for a connection or authentication failure
NO_PYTHON, NO_FOLDER = 97, 98  # the probe's statuses
# The probe, in POSIX sh (any login shell of the sh family runs it): exits NO_PYTHON or NO_FOLDER, else prints
# the fresh folder and df's line for it.
PROBE = (
    "command -v {python} >/dev/null 2>&1 || exit 97; "
    'd=$(mktemp -d "${{TMPDIR:-/tmp}}/edgecompress.XXXXXXXX") || exit 98; '
    'echo "$d"; df -Pk "$d" 2>/dev/null | tail -n 1'
)
# (stderr text of ssh, what happened, hint): the first match names the failure.
CONNECTION_FAILURES = (
    (
        "Permission denied",
        "authentication refused",
        "give a key the server accepts (ssh-copy-id, or IdentityFile in the file --ssh-config names); "
        "ssh runs in batch mode, so it never asks for a password",
    ),
    (
        "Host key verification failed",
        "the host key is unknown or has changed",
        "connect once with ssh by hand to check and accept it, or set UserKnownHostsFile in --ssh-config",
    ),
    ("Could not resolve hostname", "host name not found", "check the host name"),
    ("Connection refused", "host unreachable (connection refused)", "check the port and that sshd runs there"),
    ("timed out", "host unreachable (connection timed out)", "check the address and the network"),
    ("No route to host", "host unreachable (no route to host)", "check the address and the network"),
    ("Network is unreachable", "host unreachable (network is unreachable)", "check the network"),
)
DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


@dataclass(frozen=True)
class SshTarget:
    text: str
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> SshTarget:
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query or parts.password:
            raise UserError(f"cannot read ssh target {text!r}", where="--on", expected="ssh://user@host[:port]")
        return cls(text, parts.username, parts.hostname, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


class SshTransport:
    def __init__(self, target: SshTarget, *, config: Path | None = None, python: str = DEFAULT_PYTHON):
        self.target = target
        self.name = target.text
        self.config = config
        self.python = python  # the remote interpreter: python3 on its PATH, or a venv's python

    @classmethod
    def parse(cls, text: str, *, config: Path | None = None, python: str | None = None) -> SshTransport:
        if config is not None and not Path(config).is_file():
            raise UserError("ssh config file does not exist", where=str(config), expected="an ssh_config(5) file")
        return cls(SshTarget.parse(text), config=config, python=python or DEFAULT_PYTHON)

    def measure(self, request: RunRequest, progress: Callable[[str], None] | None = None) -> dict:
        say = progress or (lambda line: None)
        say(f"{self.name}: preparing a folder")
        folder, free_kib = self._make_folder()
        try:
            with tempfile.TemporaryDirectory(prefix="edgecompress-ssh-") as tmp:
                npz = request.write_inputs(Path(tmp))
                files = [runner_script(request.runner), request.artifact, *([npz] if npz else [])]
                self._check_space(files, free_kib, folder)
                say(f"{self.name}: copying {request.artifact.name} ({_mb(request.artifact.stat().st_size)})")
                self._copy(files, folder)
            say(f"{self.name}: running {request.runner} ({request.runs} runs)")
            result = self._run(request, folder, has_inputs=npz is not None)
        finally:
            self._remove(folder)
        result["measured_on"] = self.name
        return result

    # ---- the four steps -------------------------------------------------------------------------------------

    def _make_folder(self) -> tuple[str, int | None]:
        proc = self._ssh(PROBE.format(python=shlex.quote(self.python)), timeout_s=CONNECT_TIMEOUT_S + CLIENT_GRACE_S)
        if proc.returncode == NO_PYTHON:
            raise UserError(
                f"the remote has no Python: '{self.python}' is not found there",
                where=self.name,
                expected="Python 3.8 or newer (python3 on the remote's PATH, or the one --remote-python names)",
                hint="install it there (e.g. apt-get install python3 python3-pip), then the runtime: "
                "python3 -m pip install numpy onnxruntime ai-edge-litert",
            )
        if proc.returncode == NO_FOLDER:
            raise self._disk_or(proc.stderr, "cannot create a temporary folder")
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise self._remote_failure(proc, "cannot prepare a temporary folder")
        return lines[0].strip(), _free_kib(lines[1:])

    def _check_space(self, files: list[Path], free_kib: int | None, folder: str) -> None:
        needed = sum(Path(f).stat().st_size for f in files)
        if free_kib is not None and needed > free_kib * 1024:
            raise UserError(
                f"remote disk full: {_mb(free_kib * 1024)} free in {Path(folder).parent}, {_mb(needed)} needed",
                where=self.name,
                hint="free space there, or point TMPDIR on the remote at a larger disk",
            )

    def _copy(self, files: list[Path], folder: str) -> None:
        cmd = ["scp", "-q", *self._options(port_flag="-P"), *map(str, files), f"{self._scp_host()}:{folder}/"]
        proc = self._client(
            cmd, timeout_s=CONNECT_TIMEOUT_S + CLIENT_GRACE_S + sum(f.stat().st_size for f in files) / 1e6
        )
        if proc.returncode != 0:
            raise self._disk_or(proc.stderr, "copying to the remote failed")

    def _run(self, request: RunRequest, folder: str, *, has_inputs: bool) -> dict:
        script = runner_script(request.runner).name
        args = request.runner_args(request.artifact.name, "inputs.npz" if has_inputs else None)
        bound = f"{request.timeout_s:g}"
        python = shlex.quote(self.python)
        command = (
            f"cd {shlex.quote(folder)} && echo $$ > pid && "
            f"if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {bound} {python} {script} "
            f"{shlex.join(args)}; else exec {python} {script} {shlex.join(args)}; fi"
        )
        proc = self._ssh(command, timeout_s=request.timeout_s + CLIENT_GRACE_S)
        if proc.returncode in TIMED_OUT_STATUSES:
            raise UserError(
                f"the run exceeded its time bound of {bound} s and was stopped",
                where=f"{self.name} ({request.artifact.name})",
                hint="use fewer --runs, or a longer bound",
            )
        if proc.returncode == RUNNER_USER_ERROR:
            raise self._runner_refusal(request, proc.stderr)
        if proc.returncode != 0:
            raise self._remote_failure(proc, f"{request.runner} failed")
        return parse_json_result(proc.stdout, request.runner, f"{self.name}:{request.artifact.name}")

    def _remove(self, folder: str) -> None:
        """Stop the run if it still goes (an interrupted or timed-out client), then delete the folder. Never
        raises: it runs while another error is on its way to the user."""
        quoted = shlex.quote(folder)
        command = f'kill -TERM "$(cat {quoted}/pid 2>/dev/null)" 2>/dev/null; rm -rf {quoted}'
        try:
            proc = self._ssh(command, timeout_s=CONNECT_TIMEOUT_S + CLIENT_GRACE_S)
        except (UserError, ClientTimeout) as exc:
            log.warning("%s: could not remove %s: %s", self.name, folder, exc)
            return
        if proc.returncode != 0:
            log.warning("%s: could not remove %s: %s", self.name, folder, last_line(proc.stderr))

    # ---- errors ---------------------------------------------------------------------------------------------

    def _runner_refusal(self, request: RunRequest, stderr: str) -> UserError:
        message = last_line(stderr).removeprefix(f"{request.runner}: error: ")
        if message.startswith("cannot import"):
            backend = backend_for_runner(request.runner)
            packages = " ".join(backend.pip_packages)
            return UserError(
                f"the remote Python lacks the runtime: {message.split('; ')[0]}",
                where=self.name,
                expected=f"{' and '.join(backend.pip_packages)} importable by {self.python} there",
                hint=f"install them there: {self.python} -m pip install {packages}",
            )
        return UserError(message, where=f"{self.name} ({request.artifact.name})")

    def _remote_failure(self, proc, what: str) -> UserError:
        if proc.returncode == SSH_FAILED:
            return self._connection_failure(proc.stderr)
        return UserError(f"{what} (exit {proc.returncode}): {last_line(proc.stderr)}", where=self.name)

    def _connection_failure(self, stderr: str) -> UserError:
        for marker, what, hint in CONNECTION_FAILURES:
            if marker in stderr:
                return UserError(what, where=self.name, hint=hint)
        return UserError(f"ssh failed: {last_line(stderr)}", where=self.name)

    def _disk_or(self, stderr: str, what: str) -> UserError:
        if any(marker in stderr for marker in DISK_FULL_MARKERS):
            return UserError(
                "remote disk full", where=self.name, hint="free space there, or point TMPDIR at a larger disk"
            )
        if any(marker in stderr for marker, _, _ in CONNECTION_FAILURES):
            return self._connection_failure(stderr)
        return UserError(f"{what}: {last_line(stderr)}", where=self.name)

    # ---- the clients ----------------------------------------------------------------------------------------

    def _options(self, *, port_flag: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        if self.config is not None:
            options += ["-F", str(self.config)]
        if self.target.port is not None:
            options += [port_flag, str(self.target.port)]
        return options

    def _scp_host(self) -> str:
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host  # IPv6 literal
        return f"{self.target.user}@{host}" if self.target.user else host

    def _ssh(self, command: str, *, timeout_s: float):
        cmd = ["ssh", *self._options(port_flag="-p"), "-T", self.target.destination, command]
        return self._client(cmd, timeout_s=timeout_s)

    def _client(self, cmd: list[str], *, timeout_s: float):
        try:
            return run_client(cmd, timeout_s=timeout_s, where=self.name)
        except ClientTimeout as exc:
            raise UserError(f"the connection hung: {exc}", where=self.name, hint="check the network") from None


def _free_kib(df_lines: list[str]) -> int | None:
    """Available KiB from `df -Pk`'s data line (4th column), or None where df said nothing usable."""
    try:
        return int(df_lines[-1].split()[3])
    except (IndexError, ValueError):
        return None


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"
