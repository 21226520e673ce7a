"""The calibrated latency model: a price per unit of work for each op class, fitted to measurements.

    time(graph, threads) = run(threads) + sum over nodes of  sum over the node's features f:
                                          price[threads][class.f] x work_f(node)

`run` is the fixed cost of one session.run (feeds in, outputs out); `class.nodes` the per-node overhead of that
class (dispatch, allocation, thread-pool hand-off); `class.ops` seconds per arithmetic op; `class.bytes` seconds
per byte moved; attention's `score_ops` and the LSTM's `steps` and `step_bytes` price the parts of those nodes
that run at another speed than their projections (op_work.FEATURES). The sum of a compute and a memory term,
rather than a roofline's max, keeps the model linear in its prices, so they are fitted by non-negative least
squares on relative error: a 0.1 ms benchmark weighs as much as a 10 ms one.

Threads: every price is fitted at all calibrated thread counts at once, as Amdahl's law says it scales:
price(n) = serial + parallel / n, both parts at least 0. So a price at two threads lies between half its price at
one thread and that price: the fit cannot move one-thread-cost onto a feature at two threads that the suite's few
graphs of that class cannot tell apart (fitted independently per thread count, one suite put a per-node price of
0 at one thread and 305 us at two on s8s8 MatMulInteger, and estimated a 1.3x faster model 8% slower). Only two
costs really grow with threads, and they get one term each that grows with n - 1: the hand-off to the thread pool
that every node pays (one price shared by all classes) and the run's fixed cost. At a count that was not
calibrated each price follows Amdahl with its parallel fraction (prices_at); beyond the device's cores nothing is
gained.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from edgecompress.measure.calibration.nnls import nnls
from edgecompress.measure.op_work import NodeWork

RUN = "run"
# When a class was not calibrated (a smaller suite, or an op no benchmark has), its nodes are priced as the
# nearest class that was: the next in this chain that has prices.
CLASS_FALLBACK = {
    "qattention": "attention",
    "mha": "attention",
    "matmul_act": "matmul",
    "attention": "matmul",
    "matmul_s8s8": "matmul_u8s8",
    "dq_matmul": "matmul_u8s8",
    "matmul_u8s8": "matmul",
    "matmul_nbits_int8": "matmul_nbits",
    "matmul_nbits": "matmul",
    "conv_int8": "conv",
    "conv_depthwise": "conv",
    "conv": "matmul",
    "lstm": "matmul",
    "skip_layernorm": "layernorm",
    "embed_layernorm": "layernorm",
    "layernorm": "elementwise",
    "gelu": "elementwise",
    "softmax": "elementwise",
    "elementwise_int": "elementwise",
    "quantize": "elementwise",
    "gather": "copy",
    "copy": "elementwise",
    "transpose": "copy",
    "view": "elementwise",
    "other": "elementwise",
}
# A class-specific feature its fallback class has no price for is priced as this general feature.
FEATURE_FALLBACK = {
    "wide_ops": "ops",
    "score_ops": "ops",
    "step_bytes": "bytes",
    "weight_bytes": "bytes",
    "steps": "nodes",
}


def work_vector(nodes: Iterable[NodeWork]) -> dict[str, float]:
    """One graph's total work per parameter: `run` once, `class.feature` summed over its nodes."""
    total: dict[str, float] = defaultdict(float)
    total[RUN] = 1.0
    for node in nodes:
        for feature, amount in node.work.items():
            total[f"{node.op_class}.{feature}"] += amount
    return dict(total)


@dataclass(frozen=True)
class Fit:
    """Prices (seconds per unit) at one thread count, and how well they explain the benchmarks they came from."""

    prices: dict[str, float]
    relative_errors: dict[str, float]  # benchmark -> (fitted - measured) / measured


# The parts of the joint fit's unknowns: each price's serial and parallel part, and the two costs that grow with
# threads (see the module's docstring).
SERIAL, PARALLEL, GROWTH = "serial", "parallel", "growth"
NODE_HANDOFF = "nodes"


def _columns(params: list[str], threads: list[int]) -> list[tuple[str, str]]:
    """(kind, param) for every unknown. With one thread count the parallel part cannot be told from the serial
    one, and nothing grows, so only the serial part is fitted."""
    columns = [(SERIAL, p) for p in params]
    if len(threads) > 1:
        columns += [(PARALLEL, p) for p in params]
        if any(p.endswith(".nodes") for p in params):
            columns.append((GROWTH, NODE_HANDOFF))
        columns.append((GROWTH, RUN))
    return columns


def _unit_terms(param: str, n: int) -> list[tuple[tuple[str, str], float]]:
    """One unit of `param` at `n` threads, in the unknowns: (column, factor). The one rule of the thread model,
    read both ways: a benchmark's design row sums it over its work, a price sums it over the solution."""
    terms = [((SERIAL, param), 1.0), ((PARALLEL, param), 1.0 / n)]
    if param.endswith(".nodes"):
        terms.append(((GROWTH, NODE_HANDOFF), n - 1.0))
    elif param == RUN:
        terms.append(((GROWTH, RUN), n - 1.0))
    return terms


def _design_row(work: Mapping[str, float], n: int, index: Mapping[tuple[str, str], int]) -> np.ndarray:
    """A benchmark's coefficients on the unknowns (`index`: column -> position) at `n` threads."""
    row = np.zeros(len(index))
    for param, amount in work.items():
        for column, factor in _unit_terms(param, n):
            if column in index:
                row[index[column]] += amount * factor
    return row


def _prices_from(solution: Mapping[tuple[str, str], float], params: list[str], n: int) -> dict[str, float]:
    return {p: sum(solution.get(column, 0.0) * factor for column, factor in _unit_terms(p, n)) for p in params}


def fit_prices(works: Mapping[str, Mapping[str, float]], seconds: Mapping[int, Mapping[str, float]]) -> dict[int, Fit]:
    """Non-negative prices at every thread count (threads -> benchmark -> seconds), fitted jointly, minimizing the
    relative error over all benchmarks and counts.

    Parameters no benchmark exercises are left out (not zero): a prediction then falls back to another class.
    """
    threads = sorted(seconds)
    rows = [(n, name) for n in threads for name in sorted(seconds[n])]
    params = sorted({p for _, name in rows for p, amount in works[name].items() if amount > 0})
    columns = _columns(params, threads)
    index = {column: i for i, column in enumerate(columns)}
    design = np.array([_design_row(works[name], n, index) for n, name in rows])
    measured = np.array([seconds[n][name] for n, name in rows])
    # Rows scaled by 1/measured: the residual of each row is the relative error. Columns scaled to unit norm
    # so that ops (~1e9) and nodes (~10) are on one footing for the solver; prices are unscaled after.
    weighted = design / measured[:, None]
    norms = np.linalg.norm(weighted, axis=0)
    norms[norms == 0] = 1.0
    solution = dict(zip(columns, nnls(weighted / norms, np.ones(len(rows))) / norms))
    fits = {}
    for n in threads:
        prices = _prices_from(solution, params, n)
        errors = {name: (predict(works[name], prices) - s) / s for name, s in seconds[n].items()}
        fits[n] = Fit(prices={p: float(v) for p, v in prices.items()}, relative_errors=errors)
    return fits


def leave_one_out(
    works: Mapping[str, Mapping[str, float]], seconds: Mapping[int, Mapping[str, float]]
) -> dict[int, dict[str, float]]:
    """Each benchmark's relative error at each thread count when predicted by prices fitted without it (at any
    count: cross-validation). A benchmark that alone exercises one of its parameters is not left out: without it
    that price is not fitted at all."""
    errors: dict[int, dict[str, float]] = {n: {} for n in seconds}
    names = set().union(*(set(by_name) for by_name in seconds.values()))
    for left_out in sorted(names):
        rest = {n: {name: s for name, s in by_name.items() if name != left_out} for n, by_name in seconds.items()}
        needed = {p for p, amount in works[left_out].items() if amount > 0}
        if any(all(works[name].get(p, 0) <= 0 for by_name in rest.values() for name in by_name) for p in needed):
            continue
        fits = fit_prices(works, rest)
        for n, by_name in seconds.items():
            if left_out in by_name:
                predicted = predict(works[left_out], fits[n].prices)
                errors[n][left_out] = (predicted - by_name[left_out]) / by_name[left_out]
    return errors


def price_of(prices: Mapping[str, float], op_class: str, feature: str) -> tuple[float, str]:
    """(seconds per unit, the parameter used) for one class and feature, following the fallbacks."""
    current: str | None = op_class
    while current is not None:
        if any(key.startswith(current + ".") for key in prices):
            key = f"{current}.{feature}"
            if key in prices:
                return prices[key], key
            general = f"{current}.{FEATURE_FALLBACK.get(feature, feature)}"
            return prices.get(general, 0.0), general
        current = CLASS_FALLBACK.get(current)
    return 0.0, "none"


def predict(work: Mapping[str, float], prices: Mapping[str, float]) -> float:
    """Seconds for one graph's work vector."""
    total = prices.get(RUN, 0.0) * work.get(RUN, 0.0)
    for param, amount in work.items():
        if param == RUN or amount == 0:
            continue
        op_class, feature = param.split(".", 1)
        total += price_of(prices, op_class, feature)[0] * amount
    return total


def node_seconds(node: NodeWork, prices: Mapping[str, float]) -> float:
    return sum(price_of(prices, node.op_class, feature)[0] * amount for feature, amount in node.work.items())


def parallel_fractions(prices_by_threads: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """Amdahl's parallel fraction p of every price, from its value at the fewest and the most calibrated threads:
    price(n) / price(1) = (1 - p) + p / n. Clamped to [0, 1]: a price that grew with threads (contention) is
    taken as not parallel, one that fell faster than 1/n as perfectly parallel."""
    counts = sorted(prices_by_threads)
    if len(counts) < 2:
        return {}
    low, high = counts[0], counts[-1]
    fractions = {}
    for param, base in prices_by_threads[low].items():
        top = prices_by_threads[high].get(param)
        if top is None or base <= 0:
            continue
        # Both relative to one thread: price(n) = c ((1-p) + p/n), so price(high)/price(low) fixes p.
        ratio = top / base
        p = (1 - ratio) / ((1 - 1 / high) - ratio * (1 - 1 / low)) if high != low else 0.0
        fractions[param] = float(min(max(p, 0.0), 1.0))
    return fractions


def prices_at(
    prices_by_threads: Mapping[int, Mapping[str, float]], fractions: Mapping[str, float], threads: int
) -> dict[str, float]:
    """Prices at `threads`: the calibrated ones when that count was measured, else Amdahl from the nearest
    calibrated count below (or the fewest) with each price's own parallel fraction."""
    if threads in prices_by_threads:
        return dict(prices_by_threads[threads])
    below = [n for n in prices_by_threads if n <= threads]
    base_threads = max(below) if below else min(prices_by_threads)
    base = prices_by_threads[base_threads]
    scaled = {}
    for param, price in base.items():
        p = fractions.get(param, 0.0)
        scaled[param] = price * ((1 - p) + p / threads) / ((1 - p) + p / base_threads)
    return scaled
