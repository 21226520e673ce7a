"""Static memory and latency estimates for an ONNX model whose input shapes are fixed.

Both read the graph ONNX Runtime really executes (runtime_graph.py: its load-time fusions applied), not the file
as written: fused-away nodes cost nothing, a QDQ MatMul or Conv is the integer kernel ORT fuses it into, and a
static int8 model's dequantized weights are not activations because ORT never materializes them.

Latency, two models over the same per-node work (op_work.py):
  calibrated   a device's measured prices per op class and thread count (calibration/), when its profile names
               a calibration file: time = session.run's fixed cost + per node the class's per-node overhead and
               prices per op and per byte. Its error band comes with it.
  roofline     otherwise: max(ops / (peak x compute efficiency), bytes / (bandwidth x bandwidth efficiency)) per
               node plus a per-node overhead, from the profile's peak figures. The efficiencies are first guesses,
               not measured on the device; the report gives the error this model showed on calibrated targets.

Memory: what a session adds to the process at its peak: the weights as loaded, the copies ONNX Runtime's kernels
pack them into at load (MatMul, Gemm, attention, integer and 4-bit matmuls, LSTMs), the peak of live activations,
and a fixed session overhead (thread pool, allocators, kernel registry).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from edgecompress.errors import UserError
from edgecompress.measure.op_work import NodeWork, graph_work, lstm_phases, nbytes, node_bytes, value_bytes
from edgecompress.measure.runtime_graph import runtime_graph
from edgecompress.onnx_facts import Shapes, infer_shapes, load_model, op_key

log = logging.getLogger(__name__)

# Uncalibrated first guesses at the fraction of a device's peak compute and memory bandwidth that ONNX Runtime's
# CPU kernels reach; a profile that names a calibration file is priced by measurement instead.
DEFAULT_COMPUTE_EFFICIENCY = 0.3
DEFAULT_BANDWIDTH_EFFICIENCY = 0.6
# Per-node cost of dispatching a kernel: calibrated on an x86 host with onnxruntime 1.31 at 0.5 us (small
# elementwise nodes) to 11 us (quantized attention) by op class, about 2 us for a typical node; not measured on any
# phone, where a core is no faster at it.
DEFAULT_NODE_OVERHEAD_S = 2e-6


@dataclass(frozen=True)
class SessionOverhead:
    """What a session adds besides weights and activations: a fixed part (thread pool, allocators, kernel
    registry) and a part per node (the node, its kernel and their state)."""

    fixed_bytes: int
    per_node_bytes: int
    how: str


# Measured by `edgecompress calibrate` on an x86 host with onnxruntime 1.31 (fitted over its 118 benchmark graphs):
# 12.4 MB plus 9 kB per node. A calibration measures its own device's.
DEFAULT_SESSION_OVERHEAD = SessionOverhead(
    int(12.4 * 2**20),
    9 * 2**10,
    "12.4 MB + 9 kB per node, measured on an x86 host with onnxruntime 1.31, not on the device",
)

# ONNX Runtime's activation arena after a run, in multiples of the liveness peak: its allocation plan reuses a
# freed buffer only for a tensor that fits it, and the arena grows in chunks. Measured 3.0-3.2x on the dynamic
# int8, DeBERTa and integer-only MiniLM exports with onnxruntime 1.31 (resident growth over the first run).
ARENA_FACTOR = 3.0

# Weight inputs that ONNX Runtime's CPU kernels copy into their own packed layout at load, when constant, and the
# share of those bytes that stays resident: integer, 4-bit, attention and LSTM kernels keep the original beside
# the packed copy; a float MatMul/Gemm's original is mostly released (measured on MiniLM-size models with
# onnxruntime 1.31: session.disable_prepacking saves 0.16-0.64 of the packed float bytes; 0.35 is taken).
_PREPACKED_INPUTS = {
    "MatMul": ((1,), 0.35),
    "FusedMatMul": ((1,), 0.35),
    "Gemm": ((1,), 0.35),
    "FusedGemm": ((1,), 0.35),
    "Attention": ((1,), 1.0),
    "QAttention": ((1,), 1.0),
    "DynamicQuantizeMatMul": ((1,), 1.0),
    "MatMulInteger": ((1,), 1.0),
    "MatMulIntegerToFloat": ((1,), 1.0),
    "QLinearMatMul": ((3,), 1.0),
    "QGemm": ((3,), 1.0),
    "MatMulNBits": ((1,), 1.0),
    "LSTM": ((1, 2), 1.0),
    "DynamicQuantizeLSTM": ((1, 2), 1.0),
    "QLinearConv": ((3,), 1.0),
}
# Op classes timed against the int8 peak in the roofline: the integer kernels. MatMulNBits below accuracy level 4
# dequantizes its 4-bit blocks and runs float math, so it is fp32-class (its bytes are the packed weights).
_INT8_CLASSES = {"matmul_u8s8", "matmul_s8s8", "dq_matmul", "qattention", "conv_int8", "matmul_nbits_int8"}


@dataclass(frozen=True)
class MemoryEstimate:
    """What a session adds at its peak; `peak_node` is the node executing at the activations' peak."""

    weight_bytes: int
    weight_bytes_by_dtype: dict[str, int]
    largest_weight_bytes: int
    prepacked_bytes: int
    peak_activation_bytes: int
    peak_node: str
    peak_node_op_type: str
    peak_node_index: int
    session_overhead_bytes: int
    total_bytes: int
    method: str


@dataclass(frozen=True)
class NodeCost:
    """One node's time; `bound` is "compute" or "memory" (roofline) or "calibrated"."""

    name: str
    op_type: str
    compute_class: str
    flops: int
    bytes: int
    ms: float
    bound: str


@dataclass
class OpTypeCost:
    """All nodes of one op type (keyed like `op_histogram`)."""

    compute_class: str
    count: int = 0
    flops: int = 0
    bytes: int = 0
    ms: float = 0.0


@dataclass(frozen=True)
class LatencyEstimate:
    """Sum of per-node times plus the fixed per-run cost; `by_op_type` is sorted by time, slowest first."""

    total_ms: float
    total_flops: int
    total_bytes: int
    by_op_type: dict[str, OpTypeCost]
    nodes: list[NodeCost] = field(repr=False)
    method: str
    run_ms: float = 0.0  # session.run's own fixed cost, in total_ms but in no node


@dataclass(frozen=True)
class _Graph:
    """The graph an estimate reads, its value shapes, a topological order, and how it was obtained."""

    model: onnx.ModelProto
    shapes: Shapes
    order: list[int]
    how: str


def executed_graph(model: onnx.ModelProto | str | Path, *, as_written: bool = False) -> _Graph:
    """The graph ORT runs (or, with `as_written`, the file itself), with shapes from one run on zeros."""
    model = load_model(model)
    if as_written:
        return _Graph(model, infer_shapes(model), topological_order(model.graph), "the graph as written")
    graph = runtime_graph(model)
    return _Graph(graph.model, infer_shapes(graph.model), topological_order(graph.model.graph), graph.how)


def estimate_memory(
    model: onnx.ModelProto | str | Path,
    *,
    overhead: SessionOverhead = DEFAULT_SESSION_OVERHEAD,
    graph: _Graph | None = None,
) -> MemoryEstimate:
    """Peak resident memory a session adds: weights + the larger of the load spike and what a run holds on top
    of the weights (packed copies and the activation arena) + the session's own overhead.

    Load spike: ONNX Runtime turns the parsed file's initializers into tensors one at a time while the rest are
    held, so the largest one (an embedding table) is briefly there twice. Packed copies: what its kernels keep
    beside the weights after packing them at load (_PREPACKED_INPUTS). The spike is over before packing starts,
    so the two do not add up. Activations: a value is live from the node that produces it (graph inputs: from
    the start) until its last consumer (graph outputs: until the end); both inputs and outputs of the executing
    node count; the arena holding them is ARENA_FACTOR times that peak. Pass `graph` from `executed_graph` to
    avoid optimizing and running the model again.
    """
    graph = graph or executed_graph(model)
    g, shapes = graph.model.graph, graph.shapes
    weights = [t.name for t in g.initializer]
    weights += [n.output[0] for n in g.node if n.op_type == "Constant"]
    by_dtype: Counter[str] = Counter()
    for name in weights:
        dims, elem_type = shapes[name]
        by_dtype[TensorProto.DataType.Name(elem_type).lower()] += nbytes(dims, elem_type)
    largest = max((value_bytes(shapes, name) for name in weights), default=0)
    prepacked = _prepacked_bytes(g, shapes, set(weights))
    peak, step = _peak_liveness(g, graph.order, shapes, set(weights))
    index = graph.order[step] if graph.order else -1
    node = g.node[index] if graph.order else onnx.NodeProto()
    weight_bytes = sum(by_dtype.values())
    session = overhead.fixed_bytes + overhead.per_node_bytes * len(g.node)
    return MemoryEstimate(
        weight_bytes=weight_bytes,
        weight_bytes_by_dtype=dict(by_dtype.most_common()),
        largest_weight_bytes=largest,
        prepacked_bytes=prepacked,
        peak_activation_bytes=peak,
        peak_node=node.name or f"{node.op_type}#{index}",
        peak_node_op_type=node.op_type,
        peak_node_index=index,
        session_overhead_bytes=session,
        total_bytes=int(weight_bytes + max(largest, prepacked + ARENA_FACTOR * peak) + session),
        method=(
            f"static, on {graph.how}: initializer bytes + the larger of the load spike (the largest initializer, "
            "copied while the others are held) and what a run holds: the packed copies ONNX Runtime's kernels keep "
            "of constant MatMul/Gemm/attention/integer/4-bit/LSTM weights plus its activation arena "
            f"({ARENA_FACTOR:g} x the peak of live activations from graph liveness in topological order) + the "
            f"session's overhead ({overhead.how})"
        ),
    )


def _prepacked_bytes(graph: onnx.GraphProto, shapes: Shapes, weights: set[str]) -> int:
    kept: dict[str, float] = {}
    for node in graph.node:
        inputs, share = _PREPACKED_INPUTS.get(node.op_type, ((), 0.0))
        for i in inputs:
            if i < len(node.input) and node.input[i] in weights:
                kept[node.input[i]] = max(kept.get(node.input[i], 0.0), share)
    return int(sum(share * value_bytes(shapes, name) for name, share in kept.items()))


def estimate_latency(
    model: onnx.ModelProto | str | Path,
    *,
    peak_fp32_ops_per_s: float,
    peak_int8_ops_per_s: float,
    bandwidth_bytes_per_s: float,
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY,
    node_overhead_s: float = DEFAULT_NODE_OVERHEAD_S,
    graph: _Graph | None = None,
) -> LatencyEstimate:
    """The roofline: per node max(ops / achievable compute, bytes / achievable bandwidth) + a per-node overhead.

    Nodes run one after another (ORT's default sequential executor), so times add up; within a node, compute
    and memory traffic overlap, hence the max. Pass `graph` from `executed_graph` to reuse it.
    """
    _check_latency_params(
        peak_fp32_ops_per_s=peak_fp32_ops_per_s,
        peak_int8_ops_per_s=peak_int8_ops_per_s,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        compute_efficiency=compute_efficiency,
        bandwidth_efficiency=bandwidth_efficiency,
    )
    graph = graph or executed_graph(model)
    rates = {"fp32": peak_fp32_ops_per_s * compute_efficiency, "int8": peak_int8_ops_per_s * compute_efficiency}
    bandwidth = bandwidth_bytes_per_s * bandwidth_efficiency
    works = graph_work(graph.model, graph.shapes, graph.order)
    costs = [
        _roofline_cost(graph.model.graph.node[i], work, graph.shapes, rates, bandwidth, node_overhead_s)
        for i, work in zip(graph.order, works)
    ]
    method = (
        f"roofline per node on {graph.how}: time = max(ops / (peak op/s x compute efficiency "
        f"{compute_efficiency}), bytes / ({bandwidth_bytes_per_s:.3g} B/s x bandwidth efficiency "
        f"{bandwidth_efficiency})) + {1e6 * node_overhead_s:g} us per node, summed over nodes in topological order; "
        f"peak {peak_int8_ops_per_s:.3g} op/s for the integer kernels ({', '.join(sorted(_INT8_CLASSES))}), "
        f"{peak_fp32_ops_per_s:.3g} op/s otherwise (MatMulNBits below accuracy level 4 dequantizes to float); "
        "ops = 2*M*N*K for matmul/conv/attention products, else ops per element (1; softmax 5, layer norms "
        "8-12, gelu 8); bytes = inputs + weights read + outputs (gathers and embedding layer norms read only the "
        "rows they write; reshape-like views are free; convolutions wider than 1, unless depthwise, add their "
        "im2col buffer); an LSTM is its input projection plus seq_len dependent steps per direction, each timed "
        "on its own roofline and reading all recurrent weights R; efficiency factors and the per-node overhead "
        "are first guesses, not measured on the device; threads enter only through the summed peaks of the cores "
        "they use"
    )
    return _summary(graph, works, costs, 0.0, method)


def estimate_latency_calibrated(
    model: onnx.ModelProto | str | Path,
    calibration,
    *,
    threads: int,
    cores: int | None = None,
    graph: _Graph | None = None,
) -> LatencyEstimate:
    """The calibrated model (calibration/model.py) at `threads`: prices measured at that count, or scaled to it
    by each price's fitted parallel fraction; threads beyond `cores` add nothing."""
    from edgecompress.measure.calibration.model import RUN, node_seconds, prices_at

    graph = graph or executed_graph(model)
    used = min(threads, cores) if cores else threads
    prices = prices_at(calibration.prices, calibration.parallel_fractions, used)
    works = graph_work(graph.model, graph.shapes, graph.order)
    costs = [
        NodeCost(w.name, w.op_type, w.op_class, int(w.ops), int(w.bytes), 1e3 * node_seconds(w, prices), "calibrated")
        for w in works
    ]
    scaled = (
        f"prices measured at {used} thread(s)"
        if used in calibration.prices
        else f"prices at {used} thread(s) scaled by Amdahl's law from the calibrated counts"
        + ("" if len(calibration.threads) > 1 else " (one calibrated count: no parallel fraction, taken as 0)")
    )
    method = (
        f"calibrated per-op-class prices on {graph.how}: time = session.run's fixed cost + per node its class's "
        f"overhead + ops and bytes at the class's measured prices; {scaled}; {calibration.describe()}; "
        f"{calibration.band().text()}"
    )
    return _summary(graph, works, costs, 1e3 * prices.get(RUN, 0.0), method)


def _summary(graph: _Graph, works: list[NodeWork], costs: list[NodeCost], run_ms: float, method: str):
    by_type: dict[str, OpTypeCost] = {}
    for index, cost in zip(graph.order, costs):
        agg = by_type.setdefault(op_key(graph.model.graph.node[index]), OpTypeCost(cost.compute_class))
        agg.count += 1
        agg.flops += cost.flops
        agg.bytes += cost.bytes
        agg.ms += cost.ms
    return LatencyEstimate(
        total_ms=run_ms + sum(c.ms for c in costs),
        total_flops=sum(c.flops for c in costs),
        total_bytes=sum(c.bytes for c in costs),
        by_op_type=dict(sorted(by_type.items(), key=lambda kv: -kv[1].ms)),
        nodes=costs,
        method=method,
        run_ms=run_ms,
    )


def _roofline_cost(
    node: onnx.NodeProto,
    work: NodeWork,
    shapes: Shapes,
    rates: dict[str, float],
    bandwidth: float,
    node_overhead_s: float,
) -> NodeCost:
    """One node's roofline time against the achievable (peak x efficiency) rates."""
    compute_class = "int8" if work.op_class in _INT8_CLASSES or node.op_type == "DynamicQuantizeLSTM" else "fp32"
    if work.op_class == "lstm":
        phases = lstm_phases(node, shapes)
    else:  # bytes always: a class a calibration prices per element alone still moves them
        phases = [(1, int(work.ops), node_bytes(node, shapes) if work.op_class != "view" else 0)]
    seconds = {"compute": 0.0, "memory": 0.0}
    for repeats, ops, nbytes_ in phases:
        compute_s, memory_s = ops / rates[compute_class], nbytes_ / bandwidth
        seconds["compute" if compute_s > memory_s else "memory"] += repeats * max(compute_s, memory_s)
    return NodeCost(
        work.name,
        node.op_type,
        compute_class,
        sum(r * f for r, f, _ in phases),
        sum(r * b for r, _, b in phases),
        1e3 * (sum(seconds.values()) + node_overhead_s),
        max(seconds, key=lambda bound: seconds[bound]),
    )


def _check_latency_params(**values: float) -> None:
    """Device-profile numbers come from users: reject ones that would divide by zero or mislead."""
    for name, value in values.items():
        limit = 1 if name.endswith("efficiency") else math.inf
        if not 0 < value <= limit:
            raise UserError(
                f"{name} is {value}",
                where="estimate_latency",
                expected="a positive number" + (" <= 1" if limit == 1 else ""),
            )


def topological_order(graph: onnx.GraphProto) -> list[int]:
    """Node indices in a topological order that keeps the file's order wherever it is valid."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    consumers: list[list[int]] = [[] for _ in graph.node]
    waiting = [0] * len(graph.node)
    for i, node in enumerate(graph.node):
        for p in {producer[x] for x in node.input if x in producer}:
            consumers[p].append(i)
            waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in consumers[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(graph.node):
        raise UserError("graph has a cycle", where="estimate", expected="a directed acyclic graph")
    return order


def _peak_liveness(graph: onnx.GraphProto, order: list[int], shapes: Shapes, weights: set[str]) -> tuple[int, int]:
    """(peak live activation bytes, step in `order` where it occurs)."""
    last_step = max(len(order) - 1, 0)
    start = {i.name: 0 for i in graph.input if i.name not in weights}
    end = dict.fromkeys(start, 0)
    for step, index in enumerate(order):
        node = graph.node[index]
        for name in node.input:
            if name in end:
                end[name] = step
        for name in node.output:
            if name and name not in weights:
                start[name] = end[name] = step
    for output in graph.output:
        if output.name in end:
            end[output.name] = last_step
    delta = [0] * (last_step + 2)
    for name, first in start.items():
        delta[first] += value_bytes(shapes, name)
        delta[end[name] + 1] -= value_bytes(shapes, name)
    live = np.cumsum(delta[:-1])
    return int(live.max()), int(live.argmax())
