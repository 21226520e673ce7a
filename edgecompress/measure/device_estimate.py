"""A device profile's latency and memory estimates for one graph, and the error band each comes with.

A profile that names a calibration file is priced by it (calibrated model, its band from its validation on whole
models, or else its own cross-validation). Any other profile gets the peak-based roofline, whose band is how far
that roofline fell from measurements on the targets that were calibrated (uncalibrated_band.json, written by
tools/bench_calibration.py: the same roofline, with each calibrated target's own peak figures, against whole
models measured there).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

from edgecompress.measure.calibration.store import Calibration, ErrorBand, load_calibration
from edgecompress.measure.estimate import (
    LatencyEstimate,
    MemoryEstimate,
    SessionOverhead,
    estimate_latency,
    estimate_latency_calibrated,
    estimate_memory,
    executed_graph,
)

UNCALIBRATED_BAND_FILE = Path(__file__).with_name("calibration") / "uncalibrated_band.json"


def calibration_of(profile) -> Calibration | None:
    return _load(profile.calibration, _mtime(profile.calibration)) if profile.calibration else None


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> Calibration:  # mtime in the key: a rewritten file is read again
    return load_calibration(path)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def latency_on(profile, model, *, graph=None) -> LatencyEstimate:
    """The latency estimate at the profile's threads; its method ends with the error band."""
    graph = graph or executed_graph(model)
    threads = profile.runtime.threads
    calibration = calibration_of(profile)
    if calibration is not None:
        cores = sum(c.count for c in profile.soc.clusters)
        return estimate_latency_calibrated(model, calibration, threads=threads, cores=cores, graph=graph)
    estimate = estimate_latency(
        model,
        peak_fp32_ops_per_s=profile.peak_ops_per_second("fp32", threads),
        peak_int8_ops_per_s=profile.peak_ops_per_second("int8", threads),
        bandwidth_bytes_per_s=profile.memory.bandwidth_gbps * 1e9,
        graph=graph,
    )
    return _with_method(estimate, f"{estimate.method}; {uncalibrated_band().text()}")


def memory_on(profile, model, *, graph=None) -> MemoryEstimate:
    """The memory estimate, with the session overhead the profile's calibration measured when it has one."""
    calibration = calibration_of(profile)
    measured = (calibration.memory or {}) if calibration else {}
    if calibration is not None and "session_overhead_mb" in measured:
        overhead = SessionOverhead(
            int(measured["session_overhead_mb"] * 2**20),
            int(measured.get("per_node_kb", 0) * 2**10),
            f"{measured['session_overhead_mb']:.1f} MB + {measured.get('per_node_kb', 0):.0f} kB per node, "
            f"{measured['how']}; {calibration.describe()}",
        )
        return estimate_memory(model, overhead=overhead, graph=graph)
    return estimate_memory(model, graph=graph)


def band_of(profile) -> ErrorBand:
    calibration = calibration_of(profile)
    return calibration.band() if calibration else uncalibrated_band()


def uncalibrated_band(path: Path = UNCALIBRATED_BAND_FILE) -> ErrorBand:
    """How far the roofline fell from whole-model measurements on calibrated targets, pooled over them."""
    try:
        targets = json.loads(path.read_text(encoding="utf-8"))["targets"]
    except (OSError, ValueError, KeyError):
        targets = []
    errors = [abs(row["error"]) for target in targets for row in target["rows"]]
    if not errors:
        return ErrorBand(math.nan, math.nan, 0, "unknown: no calibrated target has checked the peak-based estimate")
    ratios = [row["measured_ms"] / row["estimated_ms"] for target in targets for row in target["rows"]]
    names = "; ".join(f"{t['target']}, {t['runtime']}, {t['date']}" for t in targets)
    errors.sort()
    return ErrorBand(
        errors[len(errors) // 2],
        errors[-1],
        len(errors),
        f"the peak-based estimate against {len(errors)} whole-model measurements on {len(targets)} calibrated "
        f"target(s) ({names}): measured {min(ratios):.2f}x to {max(ratios):.2f}x the estimate",
    )


def _with_method(estimate: LatencyEstimate, method: str) -> LatencyEstimate:
    from dataclasses import replace

    return replace(estimate, method=method)
