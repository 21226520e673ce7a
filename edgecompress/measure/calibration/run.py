"""`edgecompress calibrate --on TARGET`: time the micro-benchmark suite there and fit the latency model's prices.

Every benchmark graph runs through the same runner and transport as an artifact does (runtimes/ort_runner.py
on this host, over ssh on a board), at each requested thread count, in `rounds` rounds whose order rotates, so
that load from other processes on a shared machine falls on all benchmarks alike; a benchmark's time is the median
over rounds of the runner's p50. The work each graph does is counted on the graph ONNX Runtime runs after its
load-time fusions (runtime_graph.py), exactly as the estimator counts a model's.
"""

from __future__ import annotations

import datetime
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edgecompress.measure.calibration.model import fit_prices, leave_one_out, parallel_fractions, predict, work_vector
from edgecompress.measure.calibration.nnls import nnls
from edgecompress.measure.calibration.store import Calibration
from edgecompress.measure.calibration.suite import Benchmark, suite
from edgecompress.measure.op_work import graph_work
from edgecompress.measure.runner import RunRequest
from edgecompress.measure.runtime_graph import runtime_graph
from edgecompress.onnx_facts import infer_shapes

Progress = Callable[[str], None]
# Timed runs per benchmark, round and thread count: as many as fit this many seconds (long chains would take
# minutes at a fixed count), at least MIN_RUNS, at most --runs.
TIMED_BUDGET_S = 0.3
MIN_RUNS = 5


def calibrate(
    transport,
    *,
    threads: list[int],
    suite_name: str = "full",
    rounds: int = 3,
    runs: int = 30,
    warmup: int = 5,
    progress: Progress | None = None,
) -> Calibration:
    say = progress or (lambda line: None)
    benchmarks = suite(suite_name)
    say(f"counting the work of {len(benchmarks)} benchmark graphs as onnxruntime runs them")
    works, how = _works(benchmarks)
    with tempfile.TemporaryDirectory(prefix="edgecompress-calibrate-") as scratch:
        files = _save(benchmarks, Path(scratch))
        measured, memory, loads, last = _measure(transport, files, threads, rounds, runs, warmup, say)
    seconds = {n: {name: statistics.median(ms) / 1e3 for name, ms in measured[n].items()} for n in threads}
    fits = fit_prices(works, seconds)
    prices = {n: fits[n].prices for n in threads}
    left_out = leave_one_out(works, seconds)
    folds = {n: _fold_summary(left_out[n]) for n in threads}
    for n in threads:
        say(
            f"fit at {n} thread(s): median error {100 * _median_abs(fits[n].relative_errors):.1f}% on the suite, "
            f"{100 * folds[n]['median_abs_error']:.1f}% left out (worst {100 * folds[n]['worst_abs_error']:.0f}%)"
        )
    return Calibration(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        target=transport.name,
        machine={key: last["host"].get(key) for key in ("machine", "system", "cpu_count")},
        runtime=last["runtime"],
        runtime_version=last["runtime_version"],
        graph=f"work counted on {how}, on the calibrating machine",
        threads=list(threads),
        method=(
            f"micro-benchmark suite '{suite_name}' ({len(benchmarks)} graphs built in code, "
            f"edgecompress/measure/calibration/suite.py) measured through {last['runner']} on {transport.name}: "
            f"p50 of up to {runs} runs (as many as fit {TIMED_BUDGET_S:g} s, at least {MIN_RUNS}) after {warmup} "
            f"warm-up runs per graph and thread count, median over {rounds} "
            f"rounds in rotating order; prices fitted by non-negative least squares on relative error, "
            f"at all thread counts at once as serial + parallel / threads (edgecompress/measure/calibration/model.py)"
        ),
        load_1m=[loads[0], loads[-1]],
        prices=prices,
        parallel_fractions=parallel_fractions(prices),
        benchmarks=[
            {
                "name": b.name,
                "work": works[b.name],
                "measured_ms": {str(n): round(seconds[n][b.name] * 1e3, 4) for n in threads},
                "fitted_ms": {str(n): round(predict(works[b.name], prices[n]) * 1e3, 4) for n in threads},
                "memory_growth_mb": memory.get(b.name),
            }
            for b in benchmarks
        ],
        cross_validation=folds,
        memory=_session_overhead(benchmarks, memory),
    )


def _session_overhead(benchmarks: list[Benchmark], growth: dict[str, float]) -> dict | None:
    """What a session adds besides what the memory estimate counts (weights, load spike or packed copies,
    activations): fitted over the benchmarks whose growth was measured as a fixed part plus a part per node (the
    suite's 512-node graph sets the latter), both at least 0."""
    from edgecompress.measure.estimate import SessionOverhead, estimate_memory

    nothing = SessionOverhead(0, 0, "")
    rows, residuals = [], []
    for benchmark in benchmarks:
        if benchmark.name in growth:
            counted = estimate_memory(benchmark.model, overhead=nothing).total_bytes / 2**20
            rows.append([1.0, float(len(runtime_graph(benchmark.model).model.graph.node))])
            residuals.append(growth[benchmark.name] - counted)
    if len(rows) < 2:
        return None
    fixed, per_node = nnls(np.array(rows), np.array(residuals))
    return {
        "session_overhead_mb": round(float(fixed), 2),
        "per_node_kb": round(float(per_node) * 1024, 2),
        "how": f"fitted over {len(rows)} benchmark graphs to the runner's peak minus baseline resident memory, "
        "less what the estimate counts for their weights, packed weights and activations",
    }


def _works(benchmarks: list[Benchmark]) -> tuple[dict[str, dict[str, float]], str]:
    from edgecompress.measure.estimate import topological_order

    works, how = {}, ""
    for benchmark in benchmarks:
        graph = runtime_graph(benchmark.model)
        shapes = infer_shapes(graph.model)
        nodes = graph_work(graph.model, shapes, topological_order(graph.model.graph))
        works[benchmark.name], how = work_vector(nodes), graph.how
    return works, how


def _save(benchmarks: list[Benchmark], folder: Path) -> dict[str, Path]:
    files = {}
    for index, benchmark in enumerate(benchmarks):
        path = folder / f"benchmark_{index:03d}.onnx"
        onnx.save(benchmark.model, str(path))
        files[benchmark.name] = path
    return files


def _measure(transport, files: dict[str, Path], threads: list[int], rounds: int, runs: int, warmup: int, say):
    """{threads: {benchmark: [p50 ms per round]}}, {benchmark: peak - baseline RSS MB}, load averages, a result."""
    names = list(files)
    measured: dict[int, dict[str, list[float]]] = {n: {name: [] for name in names} for n in threads}
    memory: dict[str, float] = {}
    loads: list[float | None] = []
    total, done = rounds * len(threads) * len(names), 0
    result: dict = {}
    planned = {(name, n): min(runs, 10) for name in names for n in threads}  # until a first p50 says more
    for round_index in range(rounds):
        start = round_index * len(names) // max(rounds, 1)
        for name in names[start:] + names[:start]:
            for n in threads:
                request = RunRequest(files[name], "ort_runner", n, planned[name, n], warmup)
                result = transport.measure(request)
                p50 = result["latency_ms"]["p50"]
                planned[name, n] = max(min(MIN_RUNS, runs), min(runs, int(TIMED_BUDGET_S * 1e3 / max(p50, 1e-3))))
                measured[n][name].append(p50)
                loads.append(result.get("host", {}).get("load_1m_after"))
                if result.get("baseline_rss_mb") is not None and result.get("peak_rss_mb") is not None:
                    memory[name] = round(result["peak_rss_mb"] - result["baseline_rss_mb"], 1)
                done += 1
                say(f"[{done}/{total}] {name}, {n} thread(s): p50 {p50:.3f} ms")
    return measured, memory, loads or [None], result


def _median_abs(errors: dict[str, float]) -> float:
    return statistics.median(abs(e) for e in errors.values())


def _fold_summary(errors: dict[str, float]) -> dict:
    if not errors:
        return {"median_abs_error": 0.0, "worst_abs_error": 0.0, "benchmarks": 0, "how": "no benchmark can be left out"}
    return {
        "median_abs_error": round(_median_abs(errors), 4),
        "worst_abs_error": round(max(abs(e) for e in errors.values()), 4),
        "benchmarks": len(errors),
        "how": "each benchmark predicted by prices fitted without it (unless it alone has one of its classes)",
    }
