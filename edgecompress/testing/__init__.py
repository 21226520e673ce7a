"""On-device latency tests for app teams: `assert_latency` in an ordinary pytest test.

    from edgecompress.testing import assert_latency

    def test_classifier_is_fast_enough():
        assert_latency("dist/pixel7/model.tflite", p90_ms=20, threads=2)

`pytest --edgecompress-target ssh://pi@board` (or `adb:SERIAL` with `--edgecompress-benchmark-model PATH`)
runs the same test on that device; the default target is this host. The pytest plugin (pytest_plugin.py,
entry point `pytest11`) adds the options; without it, `assert_latency` measures on the host.

Importing this module starts nothing heavy: the plugin loads in every pytest run where edgecompress is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class _Target:
    name: str | None = None  # None: the host
    options: Any = None  # measure.transports.TargetOptions
    notes: list[str] = field(default_factory=list)


TARGET = _Target()  # set by the pytest plugin from its options


def configure(name: str | None, options=None) -> None:
    """Where `assert_latency` measures; the plugin calls this once per session."""
    TARGET.name, TARGET.options = name, options


def assert_latency(
    artifact: str | Path,
    *,
    p50_ms: float | None = None,
    p90_ms: float | None = None,
    p99_ms: float | None = None,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    seq_len: int | None = None,
    signature: str | None = None,
    timeout_s: float = 600,
) -> dict:
    """Measure `artifact` on the session's target and fail if a given percentile exceeds its bound.

    Returns the runner's result (latency_ms, peak_rss_mb, measured_on, ...) for further checks. A bound that
    the target's program does not give directly (benchmark_model's p90) is judged on the figure the result's
    `latency_derived` names, and the failure says so.
    """
    from edgecompress.measure.runner import RunRequest, describe, runner_for
    from edgecompress.measure.transports import parse_target

    bounds = {"p50": p50_ms, "p90": p90_ms, "p99": p99_ms}
    if all(bound is None for bound in bounds.values()):
        raise ValueError("assert_latency needs at least one of p50_ms, p90_ms, p99_ms")
    path = Path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"artifact does not exist: {path}")
    transport = parse_target(TARGET.name, TARGET.options)
    request = RunRequest(path, runner_for(path), threads, runs, warmup, None, seq_len, False, signature, timeout_s)
    result = transport.measure(request)
    derived = result.get("latency_derived") or {}
    misses = [
        f"{name} {result['latency_ms'][name]:.3f} ms > {bound:g} ms"
        + (f" ({name} is {derived[name]})" if name in derived else "")
        for name, bound in bounds.items()
        if bound is not None and result["latency_ms"][name] > bound
    ]
    if misses:
        raise AssertionError(f"{path.name} on {transport.name}: " + "; ".join(misses) + f" [{describe(result)}]")
    return result
