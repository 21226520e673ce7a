"""Where a runner runs: this host, a Linux board over ssh, or an Android phone over adb (DESIGN.md, Runner /
Transport). A transport puts the runner (or, on a phone, the runtime's own native benchmark program) and the
artifact on the machine, runs it, brings the JSON result back and leaves nothing behind.

    host                       the runner in a subprocess here (local.py)
    ssh://user@host[:port]     the runner with the board's python3, through the system OpenSSH client (ssh.py)
    adb[:SERIAL]               benchmark_model / onnxruntime_perf_test pushed to /data/local/tmp (adb.py)

Every result carries `measured_on` (the target as the user wrote it), so a report says where it was measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgecompress.errors import UserError
from edgecompress.measure.runner import RunRequest

TARGET_FORMS = "host, ssh://user@host[:port] or adb[:SERIAL]"


class Transport(Protocol):
    name: str  # the target as the user wrote it ("host" for this machine)

    def measure(self, request: RunRequest, progress: Callable[[str], None] | None = None) -> dict:
        """Run `request` on the target; the runner's JSON contract plus `measured_on`."""
        ...


@dataclass(frozen=True)
class TargetOptions:
    """What reaching a target needs besides its name."""

    ssh_config: Path | None = None  # an ssh_config(5) file (identity, known hosts, jump host); None: ~/.ssh/config
    remote_python: str | None = None  # the interpreter on an ssh target; None: python3 on its PATH
    # runtime name (Backend.runtime) -> the native benchmark program on this host, pushed to an adb device
    programs: Mapping[str, Path] = field(default_factory=dict)


def parse_target(text: str | None, options: TargetOptions | None = None) -> Transport:
    """The transport for a `--on` value; an unknown form is the user's error."""
    options = options or TargetOptions()
    if text is None or text == "host":
        from edgecompress.measure.transports.local import LocalTransport

        return LocalTransport()
    if text.startswith("ssh://"):
        from edgecompress.measure.transports.ssh import SshTransport

        return SshTransport.parse(text, config=options.ssh_config, python=options.remote_python)
    if text == "adb" or text.startswith("adb:"):
        from edgecompress.measure.transports.adb import AdbTransport

        return AdbTransport(text.partition(":")[2] or None, programs=options.programs)
    raise UserError(f"unknown target {text!r}", where="--on", expected=TARGET_FORMS)


def is_host(transport: Transport) -> bool:
    return transport.name == "host"
