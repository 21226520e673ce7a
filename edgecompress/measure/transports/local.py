"""The host transport: the runner in a subprocess of this interpreter (measure/runner.py)."""

from __future__ import annotations

from collections.abc import Callable

from edgecompress.measure.runner import RunRequest, run_here


class LocalTransport:
    name = "host"

    def measure(self, request: RunRequest, progress: Callable[[str], None] | None = None) -> dict:
        return {**run_here(request), "measured_on": self.name}
