"""Latency per op type: the device estimate's (always) and ONNX Runtime's profiler on this host (when measured).

The estimate is the report's device latency estimate, split by op type. The measurement runs
the shipped .onnx through onnxruntime with profiling on, at the profile's longest input, and sums each op type's
kernel time per run; it is this host's CPU, not the device's, and says so.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.report.document import ESTIMATED, MEASURED

PROFILED_RUNS = 10


def op_breakdown(graph, profile, onnx_file: Path | None, inputs: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """{"estimated": {...}, "measured": {...} or None}; each {"how", "method", "ms": {op type: ms per run}}."""
    from edgecompress.measure.device_estimate import latency_on
    from edgecompress.report.build import _fixed_copy

    estimate = latency_on(profile, _fixed_copy(graph, profile))
    threads = profile.runtime.threads
    estimated = {
        "how": ESTIMATED,
        "method": f"the device latency estimate on {profile.display_name} at seq_len {profile.runtime.seq_len}, "
        "split by op type of the graph onnxruntime runs (as in the report's device latency)",
        "ms": _by_op_type(estimate.by_op_type),
    }
    measured = None
    if onnx_file is not None and inputs is not None:
        measured = profile_on_host(onnx_file, inputs, min(threads, os.cpu_count() or 1))
    return {"estimated": estimated, "measured": measured}


def _by_op_type(costs) -> dict[str, float]:
    """ms per op type without the domain ("com.microsoft::Attention" -> "Attention"), as the profiler names them."""
    merged: dict[str, float] = defaultdict(float)
    for key, cost in costs.items():
        merged[key.rsplit("::", 1)[-1]] += cost.ms
    return dict(sorted(merged.items(), key=lambda kv: -kv[1]))


def profile_on_host(onnx_file: Path, inputs: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    """Kernel time per op type per run, from onnxruntime's own profiler, averaged over PROFILED_RUNS runs after
    a warm-up run (the profiler is on from the session's start; the warm-up's events, which carry first-run
    allocations, are dropped by time stamp)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgecompress-profile-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ops")
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        feeds = {name: value for name, value in inputs.items() if name in wanted}
        for _ in range(PROFILED_RUNS + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warm_up_end = runs[0][1] if runs else 0
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        kernel = event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
        if kernel and event["ts"] > warm_up_end:
            per_op[event["args"]["op_name"]] += event["dur"] / 1000.0 / PROFILED_RUNS
    ordered = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
    return {
        "how": MEASURED,
        "method": f"onnxruntime {ort.__version__} profiler on this host (not the device), {onnx_file.name}, "
        f"{threads} thread(s), kernel time per op type averaged over {PROFILED_RUNS} runs after a warm-up run, "
        f"input of {next(iter(feeds.values())).shape[-1]} tokens; op types as onnxruntime runs them after its own "
        "load-time fusions (e.g. FusedGemm, BiasGelu), as the estimate's are",
        "ms": ordered,
    }
