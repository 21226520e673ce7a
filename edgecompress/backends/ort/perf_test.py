"""ONNX Runtime's native `onnxruntime_perf_test` on a device: its command line and its output, read into the
runner's contract.

The output read here (onnxruntime/test/perftest/performance_runner.cc, statistics on when no result file is
given):

    Session creation time cost: 0.0313 s
    First inference time cost: 2 ms
    Total inference requests: 100
    Average inference time cost: 2.0 ms
    Peak working set size: 123456 bytes
    Min Latency: 0.0019 s
    Max Latency: 0.0031 s
    P50 Latency: 0.0020 s
    P90 Latency: 0.0025 s
    P95 Latency: 0.0026 s
    P99 Latency: 0.0030 s

All latency figures used are given by the program (its percentiles index the sorted runs at floor(n * q), one
rank above nearest-rank at most); none is derived. Inputs: the first eval text, written as ONNX TensorProto
files in `test_data_set_0/` beside the model, where the program reads a model's test data.
"""

from __future__ import annotations

import re

from edgecompress.errors import UserError

PROGRAM = "onnxruntime_perf_test"
_SECONDS = {
    "min": "Min Latency",
    "max": "Max Latency",
    "p50": "P50 Latency",
    "p90": "P90 Latency",
    "p95": "P95 Latency",
    "p99": "P99 Latency",
}


def command(request, folder: str) -> tuple[list[str], dict[str, bytes]]:
    """Arguments for the program, and the files to push: the inputs as test data beside the model."""
    from onnx import numpy_helper

    args = ["-e", "cpu", "-m", "times", "-r", str(request.runs), "-x", str(request.threads), "-y", "1"]
    files: dict[str, bytes] = {}
    if request.inputs:
        for i, (name, array) in enumerate(request.inputs.items()):
            files[f"test_data_set_0/input_{i}.pb"] = numpy_helper.from_array(array, name).SerializeToString()
    else:
        args.append("-I")  # the program generates inputs (free dimensions as 1)
    return [*args, f"{folder}/{request.artifact.name}"], files


def parse(output: str, request) -> dict:
    """The program's output as the runner's JSON contract; a run without timings is the user's problem."""
    latency = {key: _number(output, label, "s") for key, label in _SECONDS.items()}
    if any(value is None for value in latency.values()):
        raise UserError(
            f"{PROGRAM} printed no latency statistics: {_last(output)}",
            where=str(request.artifact.name),
            expected=f"ONNX Runtime's {PROGRAM} output with 'P90 Latency: ... s' lines",
        )
    average = _number(output, "Average inference time cost", "ms")
    result_ms = {key: round(value * 1e3, 4) for key, value in latency.items() if value is not None}
    if average is not None:
        result_ms["mean"] = round(average, 4)
    session_s = _number(output, "Session creation time cost", "s")
    peak = _number(output, "Peak working set size", "bytes")
    requests = _number(output, "Total inference requests", "")
    return {
        "latency_ms": result_ms,
        "latency_derived": {},
        "runs": int(requests) if requests is not None else request.runs,
        "load_ms": round(session_s * 1e3, 4) if session_s is not None else None,
        "peak_rss_mb": round(peak / 2**20, 1) if peak else None,
        "memory_method": "onnxruntime_perf_test's peak working set of the whole tool process (MiB)",
    }


def _number(output: str, label: str, unit: str) -> float | None:
    match = re.search(rf"{re.escape(label)}:\s*([-\d.e+]+)\s*{unit}", output)
    return float(match.group(1)) if match else None


def _last(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
