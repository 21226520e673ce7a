"""LiteRT's native `benchmark_model` on a device: its command line and its output, read into the runner's contract.

The output lines read here (tensorflow/lite/tools/benchmark/benchmark_model.cc and benchmark_tflite_model.cc):

    INFO: Initialized session in 119.515ms.
    INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628
    INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
    INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961
    INFO: Overall peak memory footprint (MB) via periodic monitoring: 60.1

The second `count=` line is the timed runs (the first is the warm-up). The program gives min, max, mean, p5,
median and p95 of those runs (in microseconds); older builds print no percentiles. It does not give p90 or
p99: they are derived here as the nearest measured bound (p90 -> p95, p99 -> max), never interpolated, and
the result lists which figures were derived. Memory is the tool's own footprint delta or, where printed,
the peak it sampled, both in MB.
"""

from __future__ import annotations

import re

import numpy as np

from edgecompress.errors import UserError

PROGRAM = "benchmark_model"
_COUNT = re.compile(r"count=(\d+)(?P<fields>(?:\s+\w+=[-\d.e+]+)+)")
_INIT = re.compile(r"Initialized session in ([\d.]+)\s*ms")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\)[^:]*:\s*([\d.]+)")
_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\):\s*init=([\d.]+)\s+overall=([\d.]+)")


def command(request, folder: str) -> tuple[list[str], dict[str, bytes]]:
    """Arguments for `benchmark_model`, and the files to push beside it: the inputs as raw little-endian
    tensors, one file per input, so the program runs the text the host runner runs."""
    args = [
        f"--graph={folder}/{request.artifact.name}",
        f"--num_threads={request.threads}",
        f"--num_runs={request.runs}",
        "--min_secs=0",
        f"--warmup_runs={max(request.warmup, 1)}",
        "--warmup_min_secs=0",
        "--use_xnnpack=true",
        "--report_peak_memory_footprint=true",
    ]
    if request.signature is not None:
        args.append(f"--signature_to_run_for={request.signature}")
    files: dict[str, bytes] = {}
    if request.inputs:
        values = []
        for name, array in request.inputs.items():
            file = f"input_{len(files)}.bin"
            files[file] = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            values.append(f"{name}:{folder}/{file}")
        args.append(f"--input_layer_value_files={','.join(values)}")
    return args, files


def parse(output: str, request) -> dict:
    """The program's output as the runner's JSON contract; a run without timings is the user's problem."""
    counts = [_fields(m) for m in _COUNT.finditer(output)]
    if not counts:
        raise UserError(
            f"{PROGRAM} printed no timings: {_last(output)}",
            where=str(request.artifact.name),
            expected=f"LiteRT's {PROGRAM} output with 'count=... avg=...' lines",
        )
    timed = counts[-1]
    us = 1e-3
    names = {"min": "min", "max": "max", "mean": "avg", "p50": "median", "p95": "p95", "p5": "p5"}
    latency = {key: round(timed[field] * us, 4) for key, field in names.items() if field in timed}
    derived = _derive(latency)
    init = _INIT.search(output)
    return {
        "latency_ms": latency,
        "latency_derived": derived,
        "runs": int(timed["count"]),
        "load_ms": float(init.group(1)) if init else None,
        "peak_rss_mb": _memory(output),
        "memory_method": "benchmark_model's peak footprint of the whole tool process (MB)",
    }


def _derive(latency: dict[str, float]) -> dict[str, str]:
    """Fill p90/p99 (and p50 from old builds) from the nearest measured bound above; says which were derived."""
    derived = {}
    if "p50" not in latency:
        latency["p50"] = latency["mean"]
        derived["p50"] = "the mean: this benchmark_model build prints no median"
    if "p95" in latency:
        latency["p90"] = latency["p95"]
        derived["p90"] = "benchmark_model's p95 (it prints no p90): an upper bound"
    else:
        latency["p90"] = latency["max"]
        derived["p90"] = "the max: this benchmark_model build prints no percentiles; an upper bound"
    latency["p99"] = latency["max"]
    derived["p99"] = "the max (benchmark_model prints no p99): an upper bound"
    return derived


def _fields(match: re.Match) -> dict[str, float]:
    fields = dict(part.split("=") for part in match.group("fields").split())
    return {"count": float(match.group(1)), **{k: float(v) for k, v in fields.items()}}


def _memory(output: str) -> float | None:
    peak = _PEAK.search(output)
    if peak:
        return float(peak.group(1))
    delta = _DELTA.search(output)
    return float(delta.group(2)) if delta else None


def _last(output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
