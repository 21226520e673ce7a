"""The measure stage on this host: each artifact in its runtime's standalone runner, and the float twin beside it.

Every artifact is timed on the first eval text with the profile's threads (capped at this host's cores), by
the runner script its backend names: the same file that runs on a device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.backends import Artifact, backend_for


@dataclass
class HostTiming:
    """What the measure stage hands on: a runner result (or None when not measured) per artifact."""

    results: list[dict | None]
    speed_vs_float: list[dict | None]  # float_twin.compare_speed per quantized artifact
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TimingPlan:
    threads: int  # what the runner uses: the profile's threads, capped at this host's cores
    runs: int
    warmup: int
    inputs: dict[str, np.ndarray]  # the first eval text, as the report quotes it


def plan_timing(profile, feeds: dict[str, np.ndarray], *, runs: int, warmup: int) -> TimingPlan:
    return TimingPlan(threads=min(profile.runtime.threads, os.cpu_count() or 1), runs=runs, warmup=warmup,
                      inputs={name: values[:1] for name, values in feeds.items()})


def measure_on_host(artifacts: list[Artifact], float_twin, profile, plan: TimingPlan | None,
                    scratch_root: Path) -> HostTiming:
    """Time every artifact, and the float twin's artifacts when the export quantized; None: not measured."""
    if plan is None:
        return HostTiming([None] * len(artifacts), [None] * len(artifacts))
    notes = []
    if plan.threads < profile.runtime.threads:
        notes.append(f"host has {os.cpu_count()} cores: host latency measured with {plan.threads} threads, "
                     f"not the profile's {profile.runtime.threads}")
    results: list[dict | None] = [time_artifact(a, plan) for a in artifacts]
    return HostTiming(results, _against_float_twin(artifacts, results, float_twin, plan, scratch_root), notes)


def _against_float_twin(artifacts: list[Artifact], results: list[dict | None], float_twin, plan: TimingPlan,
                        scratch_root: Path) -> list[dict | None]:
    """Time the float twin of a quantized export with the same runner, to flag a quantization that slows."""
    from edgecompress.measure.float_twin import compare_speed, measure_twin

    if float_twin is None:
        return [None] * len(artifacts)
    twin = measure_twin(float_twin, tuple(a.kind for a in artifacts), lambda a: time_artifact(a, plan),
                        scratch_root=scratch_root)
    return [compare_speed(m, twin[a.kind], plan.threads) if a.kind in twin and m else None
            for a, m in zip(artifacts, results)]


def time_artifact(artifact: Artifact, plan: TimingPlan) -> dict[str, Any]:
    """The artifact in its runtime's standalone runner, on the first eval text, as the report quotes it."""
    from edgecompress.measure.runner import run_runner

    return run_runner(artifact.path, runner=backend_for(artifact.runtime).runner, threads=plan.threads,
                      runs=plan.runs, warmup=plan.warmup, inputs=plan.inputs)
