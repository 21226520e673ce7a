"""Static memory and latency estimates for an ONNX model whose input shapes are fixed.

These are first-order numbers for checking a model against a device budget before anything runs
on the device: weights plus peak live activations for memory, a per-node roofline for latency.
They say nothing about arena overhead, kernel quality or threading; the `method` strings say so.
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
from onnx import TensorProto, helper

from edgecompress.errors import UserError
from edgecompress.onnx_facts import Shapes, infer_shapes, load_model, node_attribute, op_key

log = logging.getLogger(__name__)

# Uncalibrated first guesses at the fraction of a device's peak compute and memory bandwidth that
# ONNX Runtime's CPU kernels reach on a phone. A calibrated estimator (fitted to measured runs)
# will replace them; until then treat latency estimates as order-of-magnitude.
DEFAULT_COMPUTE_EFFICIENCY = 0.3
DEFAULT_BANDWIDTH_EFFICIENCY = 0.6

MEMORY_METHOD = (
    "static: initializer bytes + peak live activations from graph liveness "
    "(topological order, no buffer reuse or arena overhead)"
)


# Packed sub-byte element types: their byte size is ceil(elements * bits / 8), not elements * itemsize.
_SUB_BYTE_BITS: dict[int, int] = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
    TensorProto.FLOAT4E2M1: 4,
    TensorProto.INT2: 2,
    TensorProto.UINT2: 2,
}

# Matmul-like ops whose first input is A [..., K] and whose output is [..., N]: 2*K flops per output.
_MATMUL_OPS = {
    "MatMul",
    "FusedMatMul",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
}
# Convolutions, with the index of their weight input [M, C/group, k...].
_CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
# Recurrent ops: (index of W, is W stored [dirs, in, 4H] rather than [dirs, 4H, in]); R is the next input.
_LSTM_OPS = {"LSTM": (1, False), "DynamicQuantizeLSTM": (1, True)}
# Elementwise ops per hidden unit and step of an LSTM cell: bias and two pre-activation adds for each of
# the four gates (12), three sigmoids (3 x 4), two tanh (2 x 8), c = f*c + i*g (3), h = o*tanh(c) (1).
_LSTM_CELL_OPS_PER_UNIT = 44
# Index of the `past` input of fused attention ops (a [2, B, heads, past_len, head_size] cache).
_ATTENTION_PAST_INPUT = {"Attention": 4, "QAttention": 8}

# Ops that run on integer matmul kernels and so are timed against the int8 peak. MatMulNBits has
# 4-bit weights; ORT either dequantizes them to fp32 or (accuracy_level=4) runs int8 kernels; we
# count it as int8-class, which is optimistic for accuracy_level < 4. QAttention is int8-class as
# a whole although only its projections are integer.
_INT8_OPS = {
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "MatMulNBits",
    "ConvInteger",
    "MatMulIntegerToFloat",
    "QGemm",
    "DynamicQuantizeLSTM",
}

# Ops per element of the largest input or output; every op not listed here or below costs 1.
_OPS_PER_ELEMENT = {
    "Softmax": 5,  # max, subtract, exp, sum, divide
    "LayerNormalization": 8,  # mean, subtract, square, mean, rsqrt, scale, gamma, beta
    "SimplifiedLayerNormalization": 6,  # RMSNorm: no mean subtraction, no beta
    "SkipLayerNormalization": 10,  # layer norm + residual add + bias add
    "SkipSimplifiedLayerNormalization": 8,
    "EmbedLayerNormalization": 10,  # two embedding adds + layer norm
    "Gelu": 8,
    "FastGelu": 8,
    "BiasGelu": 9,
    "QuickGelu": 4,  # erf/tanh approximations
    "Erf": 8,
    "Tanh": 8,
    "Exp": 4,
    "Sigmoid": 4,
    "Pow": 4,
    "Sqrt": 4,
    "DynamicQuantizeLinear": 4,  # min/max reduction, scale, round and saturate
}
# Pure data movement: no arithmetic, but their bytes still cost time.
_DATA_MOVEMENT_OPS = {
    "Transpose",
    "Gather",
    "GatherElements",
    "GatherND",
    "Concat",
    "Slice",
    "Split",
    "Expand",
    "Tile",
    "Pad",
    "ConstantOfShape",
    "Range",
}
# Views and metadata: ORT aliases or never touches the data, so they cost neither flops nor bytes.
_FREE_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant"}
# Inputs that are indexed rather than streamed (embedding tables): they read at most as many
# bytes as the node writes, not the whole table.
_INDEXED_INPUTS = {"Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "EmbedLayerNormalization": (2, 3, 4)}


@dataclass(frozen=True)
class MemoryEstimate:
    """Weights plus peak live activations; `peak_node` is the node executing at the peak."""

    weight_bytes: int
    weight_bytes_by_dtype: dict[str, int]
    peak_activation_bytes: int
    peak_node: str
    peak_node_op_type: str
    peak_node_index: int
    total_bytes: int
    method: str = MEMORY_METHOD


@dataclass(frozen=True)
class NodeCost:
    """One node's roofline: `bound` is "compute" or "memory", whichever term set its time."""

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
    """Sum of per-node roofline times; `by_op_type` is sorted by time, slowest first."""

    total_ms: float
    total_flops: int
    total_bytes: int
    by_op_type: dict[str, OpTypeCost]
    nodes: list[NodeCost] = field(repr=False)
    method: str


def estimate_memory(model: onnx.ModelProto | str | Path, *, shapes: Shapes | None = None) -> MemoryEstimate:
    """Weights (initializers and Constant nodes) plus the peak of live activations.

    A value is live from the node that produces it (graph inputs: from the start) until its last
    consumer (graph outputs: until the end). Both inputs and outputs of the executing node count.
    Pass `shapes` from `infer_shapes` to avoid running the model again.
    """
    model = load_model(model)
    shapes = shapes if shapes is not None else infer_shapes(model)
    graph = model.graph
    order = _topological_order(graph)
    weights = [t.name for t in graph.initializer]
    weights += [n.output[0] for n in graph.node if n.op_type == "Constant"]
    by_dtype: Counter[str] = Counter()
    for name in weights:
        dims, elem_type = shapes[name]
        by_dtype[TensorProto.DataType.Name(elem_type).lower()] += _nbytes(dims, elem_type)

    peak, step = _peak_liveness(graph, order, shapes, set(weights))
    index = order[step] if order else -1
    node = graph.node[index] if order else onnx.NodeProto()
    weight_bytes = sum(by_dtype.values())
    return MemoryEstimate(
        weight_bytes=weight_bytes,
        weight_bytes_by_dtype=dict(by_dtype.most_common()),
        peak_activation_bytes=peak,
        peak_node=node.name or f"{node.op_type}#{index}",
        peak_node_op_type=node.op_type,
        peak_node_index=index,
        total_bytes=weight_bytes + peak,
    )


def estimate_latency(
    model: onnx.ModelProto | str | Path,
    *,
    peak_fp32_ops_per_s: float,
    peak_int8_ops_per_s: float,
    bandwidth_bytes_per_s: float,
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY,
    shapes: Shapes | None = None,
) -> LatencyEstimate:
    """Sum over nodes of max(flops / achievable compute, bytes / achievable bandwidth).

    Nodes run one after another (ORT's default sequential executor), so times add up; within a
    node, compute and memory traffic overlap, hence the max. Pass `shapes` from `infer_shapes` to
    avoid running the model again.
    """
    _check_latency_params(
        peak_fp32_ops_per_s=peak_fp32_ops_per_s,
        peak_int8_ops_per_s=peak_int8_ops_per_s,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        compute_efficiency=compute_efficiency,
        bandwidth_efficiency=bandwidth_efficiency,
    )
    model = load_model(model)
    shapes = shapes if shapes is not None else infer_shapes(model)
    model = _as_onnxruntime_runs_it(model)
    peaks = {"fp32": peak_fp32_ops_per_s * compute_efficiency, "int8": peak_int8_ops_per_s * compute_efficiency}
    bandwidth = bandwidth_bytes_per_s * bandwidth_efficiency
    order = _topological_order(model.graph)
    nodes = [_node_cost(model.graph.node[i], i, shapes, peaks, bandwidth) for i in order]
    by_type: dict[str, OpTypeCost] = {}
    for index, cost in zip(order, nodes):
        agg = by_type.setdefault(op_key(model.graph.node[index]), OpTypeCost(cost.compute_class))
        agg.count += 1
        agg.flops += cost.flops
        agg.bytes += cost.bytes
        agg.ms += cost.ms
    method = (
        f"roofline per node: time = max(flops / (peak ops/s x compute efficiency "
        f"{compute_efficiency}), bytes / ({bandwidth_bytes_per_s:.3g} B/s x bandwidth "
        f"efficiency {bandwidth_efficiency})), summed over nodes in topological order; "
        f"peak {peak_int8_ops_per_s:.3g} op/s for int8-class ops ({', '.join(sorted(_INT8_OPS))}, "
        f"QLinear*; MatMulNBits is counted as int8-class), {peak_fp32_ops_per_s:.3g} op/s "
        "otherwise; flops = 2*M*N*K for matmul/conv/attention products, else ops per "
        "element (1; softmax 5, layer norms 8-10, gelu 8); bytes = inputs + weights read + "
        "outputs (gathers read only the rows they write; reshape-like views are free; convolutions "
        "wider than 1 add their im2col buffer, written and read); an LSTM is its input projection "
        "(one GEMM) plus seq_len dependent steps per direction, each timed on its own roofline and "
        "reading all recurrent weights R; QDQ MatMuls are timed as the integer kernel ORT fuses them "
        "into, and dequantizations of constant weights as folded at load; "
        "efficiency factors are uncalibrated first guesses; no threading, cache or "
        "kernel-launch model"
    )
    return LatencyEstimate(
        total_ms=sum(c.ms for c in nodes),
        total_flops=sum(c.flops for c in nodes),
        total_bytes=sum(c.bytes for c in nodes),
        by_op_type=dict(sorted(by_type.items(), key=lambda kv: -kv[1].ms)),
        nodes=nodes,
        method=method,
    )


def _as_onnxruntime_runs_it(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ graph as ONNX Runtime executes it, for timing (a copy; the file is not changed).

    At session start ORT folds DequantizeLinear of constant weights and fuses `MatMul(DQ(x), DQ(W))`
    into one integer kernel (MatMulIntegerToFloat / QLinearMatMul) reading the int8 tensors. Timing the
    QDQ graph as written would charge float matmuls plus a dequantization of every weight on every run.
    Before -> After: DQ(xq) -> MatMul <- DQ(Wq)  becomes  MatMulIntegerToFloat(xq, Wq); a DQ of a
    constant that feeds anything else is free (folded once at load).
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    dequantized = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    if not dequantized:
        return model
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    fused_inputs: set[str] = set()
    nodes = []
    for node in graph.node:
        sources = [dequantized[name] for name in node.input[:2] if name in dequantized]
        if node.op_type == "MatMul" and len(sources) == 2:
            nodes.append(
                onnx.helper.make_node(
                    "MatMulIntegerToFloat", [d.input[0] for d in sources], list(node.output), name=node.name
                )
            )
            fused_inputs.update(node.input[:2])
        else:
            nodes.append(node)
    kept = [
        n
        for n in nodes
        if not (
            n.op_type == "DequantizeLinear"
            and (n.input[0] in constants or (n.output[0] in fused_inputs and consumers[n.output[0]] == 1))
        )
    ]
    view = onnx.ModelProto()
    view.CopyFrom(model)
    del view.graph.node[:]
    view.graph.node.extend(kept)  # a folded weight's float value is still read by its consumer
    return view


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


def _nbytes(dims: tuple[int, ...], elem_type: int) -> int:
    """Byte size from shape and dtype, so external-data initializers need not be loaded."""
    numel = math.prod(dims)
    if elem_type in _SUB_BYTE_BITS:
        return math.ceil(numel * _SUB_BYTE_BITS[elem_type] / 8)
    return numel * helper.tensor_dtype_to_np_dtype(elem_type).itemsize


def _value_bytes(shapes: Shapes, name: str) -> int:
    return _nbytes(*shapes[name]) if name in shapes else 0


def _numel(shapes: Shapes, name: str) -> int:
    return math.prod(shapes[name][0]) if name in shapes else 0


def _topological_order(graph: onnx.GraphProto) -> list[int]:
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
        delta[first] += _value_bytes(shapes, name)
        delta[end[name] + 1] -= _value_bytes(shapes, name)
    live = np.cumsum(delta[:-1])
    return int(live.max()), int(live.argmax())


def _is_int8(node: onnx.NodeProto) -> bool:
    return node.op_type in _INT8_OPS or node.op_type.startswith("QLinear")


def _node_cost(
    node: onnx.NodeProto, index: int, shapes: Shapes, achievable_ops: dict[str, float], achievable_bandwidth: float
) -> NodeCost:
    """One node's roofline time against the achievable (peak x efficiency) rates."""
    compute_class = "int8" if _is_int8(node) else "fp32"
    if node.op_type in _LSTM_OPS:
        phases = _lstm_phases(node, shapes)
    else:
        phases = [(1, _node_flops(node, shapes), _node_bytes(node, shapes))]
    seconds = {"compute": 0.0, "memory": 0.0}
    for repeats, flops, nbytes in phases:
        compute_s, memory_s = flops / achievable_ops[compute_class], nbytes / achievable_bandwidth
        seconds["compute" if compute_s > memory_s else "memory"] += repeats * max(compute_s, memory_s)
    return NodeCost(
        node.name or f"{node.op_type}#{index}",
        node.op_type,
        compute_class,
        sum(r * f for r, f, _ in phases),
        sum(r * b for r, _, b in phases),
        1e3 * sum(seconds.values()),
        max(seconds, key=lambda bound: seconds[bound]),
    )


def _lstm_phases(node: onnx.NodeProto, shapes: Shapes) -> list[tuple[int, int, int]]:
    """An LSTM as (repeats, flops, bytes) phases, each timed on its own roofline and the times added.

    The input projection X.W for all steps and directions is one large GEMM (compute-bound). The recurrence
    is not: step t needs h_{t-1}, so each direction runs seq_len dependent steps of [batch, H] x [H, 4H]
    plus the cell's elementwise math. At batch 1 that is a matrix-vector product that reads all of R
    (4H x H weights) for 2 x 4H x H flops, 0.5 flop per fp32 byte: memory-bound, and paid seq_len times.
    Charging the recurrence as one big GEMM (what a flops-only rule does) makes a BiLSTM look ~100x cheaper
    than it runs. Every step is counted, padded ones included: LiteRT's sequence LSTM has no per-row
    lengths, and ONNX Runtime's skipping of padded steps depends on the text, not on the graph. R is charged
    at DRAM bandwidth like every weight here; a small R that stays in L2 runs faster (an upper bound).
    """
    weight_index, input_major = _LSTM_OPS[node.op_type]
    x_dims = shapes[node.input[0]][0]
    seq, batch = (x_dims[1], x_dims[0]) if node_attribute(node, "layout", 0) else (x_dims[0], x_dims[1])
    w_dims = shapes[node.input[weight_index]][0]
    directions, inputs = w_dims[0], (w_dims[1] if input_major else w_dims[2])
    hidden = node_attribute(node, "hidden_size", 0) or w_dims[2 if input_major else 1] // 4
    recurrent_bytes = _value_bytes(shapes, node.input[weight_index + 1]) // directions
    gates = 4 * hidden * batch * 4  # fp32 pre-activations of one step
    projection = (
        1,
        2 * seq * batch * inputs * 4 * hidden * directions,
        _value_bytes(shapes, node.input[0]) + _value_bytes(shapes, node.input[weight_index]) + seq * gates * directions,
    )
    step = (
        seq * directions,
        2 * batch * hidden * 4 * hidden + _LSTM_CELL_OPS_PER_UNIT * batch * hidden,
        recurrent_bytes + 2 * gates + 2 * 4 * batch * hidden,
    )
    return [projection, step]


def _node_flops(node: onnx.NodeProto, shapes: Shapes) -> int:
    """Arithmetic ops of one node; matmuls count a multiply-add as 2."""
    op = node.op_type
    if op in _FREE_OPS or op in _DATA_MOVEMENT_OPS:
        return 0
    if op in _MATMUL_OPS:
        a_dims = shapes[node.input[0]][0]
        transposed_a = op == "FusedMatMul" and node_attribute(node, "transA", 0)
        k = a_dims[-2] if transposed_a else a_dims[-1]
        return 2 * _numel(shapes, node.output[0]) * k
    if op == "Gemm":
        a_dims = shapes[node.input[0]][0]
        k = a_dims[0] if node_attribute(node, "transA", 0) else a_dims[1]
        out = _numel(shapes, node.output[0])
        return 2 * out * k + (out if len(node.input) > 2 and node.input[2] else 0)
    if op in _CONV_WEIGHT_INPUT:
        w_dims = shapes[node.input[_CONV_WEIGHT_INPUT[op]]][0]
        return 2 * _numel(shapes, node.output[0]) * math.prod(w_dims[1:])
    if op in _ATTENTION_PAST_INPUT:
        return _attention_flops(node, shapes)
    if op == "MultiHeadAttention":
        return _multi_head_attention_flops(node, shapes)
    elements = max((_numel(shapes, name) for name in [*node.input, *node.output] if name), default=0)
    return _OPS_PER_ELEMENT.get(op, 1) * elements


def _attention_flops(node: onnx.NodeProto, shapes: Shapes) -> int:
    """com.microsoft (Q)Attention: QKV projection + bias, QK^T, softmax (+scale, mask), AV.

    Input [B, S, H_in], weight [H_in, Hq + Hk + Hv]; the output projection is a separate MatMul.
    """
    batch, seq, hidden_in = shapes[node.input[0]][0]
    qkv_cols = shapes[node.input[1]][0][1]
    hq, _, hv = node_attribute(node, "qkv_hidden_sizes", [qkv_cols // 3] * 3)
    past_index = _ATTENTION_PAST_INPUT[node.op_type]
    has_past = len(node.input) > past_index and node.input[past_index] in shapes
    seq_kv = seq + (shapes[node.input[past_index]][0][3] if has_past else 0)
    tokens, scores = batch * seq, batch * node_attribute(node, "num_heads", 1) * seq * seq_kv
    projection = 2 * tokens * hidden_in * qkv_cols + tokens * qkv_cols
    products = 2 * batch * seq * seq_kv * (hq + hv)
    return projection + products + (_OPS_PER_ELEMENT["Softmax"] + 2) * scores


def _multi_head_attention_flops(node: onnx.NodeProto, shapes: Shapes) -> int:
    """com.microsoft MultiHeadAttention on projected Q [B, S, Hq], K [B, T, Hq], V [B, T, Hv]: QK^T, softmax
    (+scale, mask, attention bias), AV; the projections are MatMuls of their own."""
    batch, seq, hq = shapes[node.input[0]][0]
    seq_kv, hv = shapes[node.input[2]][0][1:]
    scores = batch * node_attribute(node, "num_heads", 1) * seq * seq_kv
    return 2 * batch * seq * seq_kv * (hq + hv) + (_OPS_PER_ELEMENT["Softmax"] + 3) * scores


def _node_bytes(node: onnx.NodeProto, shapes: Shapes) -> int:
    """Bytes read (activations and weights) plus bytes written."""
    if node.op_type in _FREE_OPS:
        return 0
    written = sum(_value_bytes(shapes, name) for name in node.output if name)
    indexed = _INDEXED_INPUTS.get(node.op_type, ())
    read = sum(
        min(_value_bytes(shapes, name), written) if i in indexed else _value_bytes(shapes, name)
        for i, name in enumerate(node.input)
        if name
    )
    return read + written + _im2col_bytes(node, shapes)


def _im2col_bytes(node: onnx.NodeProto, shapes: Shapes) -> int:
    """A convolution with a kernel wider than 1 runs as im2col + GEMM in ONNX Runtime's CPU kernels: the
    [C x k, output positions] patch matrix is written and read back once (k times the input's bytes for a
    1-D conv of stride 1), so it is traffic that reading the input and the weights once does not count."""
    if node.op_type not in _CONV_WEIGHT_INPUT:
        return 0
    weight = node.input[_CONV_WEIGHT_INPUT[node.op_type]]
    if weight not in shapes or node.output[0] not in shapes or node.input[0] not in shapes:
        return 0
    w_dims, out_dims = shapes[weight][0], shapes[node.output[0]][0]
    kernel = math.prod(w_dims[2:])
    if kernel == 1:
        return 0
    channels = w_dims[1] * node_attribute(node, "group", 1)
    itemsize = _nbytes((1,), shapes[node.input[0]][1])
    return 2 * out_dims[0] * math.prod(out_dims[2:]) * channels * kernel * itemsize
