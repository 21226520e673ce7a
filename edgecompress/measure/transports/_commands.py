"""Running the ssh/scp/adb clients: a missing client or a hung command becomes one clear line, not a traceback."""

from __future__ import annotations

import subprocess

from edgecompress.errors import UserError

# A remote command gets this long beyond its own time bound before we stop waiting for the client: the
# remote `timeout` ends the run first and reports it; this only catches a connection that hangs.
CLIENT_GRACE_S = 60.0
INSTALL_HINTS = {
    "ssh": "install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client)",
    "scp": "install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client)",
    "adb": "install Android's platform tools (Debian/Ubuntu: apt-get install adb) or put adb on PATH",
}
# The exit status coreutils/toybox `timeout` gives a command it had to stop (124), or to kill after -k (137).
TIMED_OUT_STATUSES = (124, 137)


class ClientTimeout(Exception):
    """The client itself did not return in time (a connection that hangs)."""


def run_client(
    cmd: list[str], *, timeout_s: float, where: str, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess:
    """Run a client program; its output is text (undecodable bytes replaced)."""
    try:
        proc = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout_s)
    except FileNotFoundError:
        raise UserError(
            f"the '{cmd[0]}' program is not installed", where=where, hint=INSTALL_HINTS.get(cmd[0])
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise ClientTimeout(f"'{cmd[0]}' did not return within {timeout_s:g} s") from exc
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def last_line(text: str) -> str:
    """The last non-empty line of a stream: where clients put the actual error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
