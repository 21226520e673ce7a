"""What one node of a graph costs to run, in units a latency model prices: its op class, and per class the work
it does (nodes, arithmetic ops, bytes moved, and a few class-specific terms).

Both latency models read these: the peak-based roofline (estimate.py) and the calibrated one (calibration/),
whose per-class prices are fitted to measured micro-benchmarks described by the very same features. The graph
they see is the one the runtime executes (runtime_graph.py), so fused-away nodes cost nothing and fused ones
(FusedGemm, DynamicQuantizeMatMul, MatMulIntegerToFloat, BiasGelu...) are priced as what they are.

Classes: integer matmul kernels are split by how ONNX Runtime's CPU kernels run them, because their speed differs
by an order of magnitude on one machine: u8 x s8 integer GEMM (the VNNI/dot-product path), s8 x s8, 4-bit weights
dequantized to float (MatMulNBits below accuracy level 4) and 4-bit weights run on int8 kernels (level 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from edgecompress.onnx_facts import Shapes, node_attribute

# Packed sub-byte element types: their byte size is ceil(elements * bits / 8), not elements * itemsize.
_SUB_BYTE_BITS: dict[int, int] = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
    TensorProto.FLOAT4E2M1: 4,
    TensorProto.INT2: 2,
    TensorProto.UINT2: 2,
}

# Matmul-like ops whose first input is A [..., K] and whose output is [..., N]: 2*K ops per output.
MATMUL_OPS = {
    "MatMul",
    "FusedMatMul",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
}
GEMM_OPS = {"Gemm", "FusedGemm", "QGemm"}
# Convolutions, with the index of their weight input [M, C/group, k...].
CONV_WEIGHT_INPUT = {"Conv": 1, "FusedConv": 1, "NchwcConv": 1, "ConvInteger": 1, "QLinearConv": 3}
# Recurrent ops: (index of W, is W stored [dirs, in, 4H] rather than [dirs, 4H, in]); R is the next input.
LSTM_OPS = {"LSTM": (1, False), "DynamicQuantizeLSTM": (1, True)}
# Elementwise ops per hidden unit and step of an LSTM cell: bias and two pre-activation adds for each of
# the four gates (12), three sigmoids (3 x 4), two tanh (2 x 8), c = f*c + i*g (3), h = o*tanh(c) (1).
_LSTM_CELL_OPS_PER_UNIT = 44
# Index of the `past` input of fused attention ops (a [2, B, heads, past_len, head_size] cache).
ATTENTION_PAST_INPUT = {"Attention": 4, "QAttention": 8}

# Ops per element of the output (the largest activation for reductions); every op not listed costs 1.
OPS_PER_ELEMENT = {
    "Softmax": 5,  # max, subtract, exp, sum, divide
    "LayerNormalization": 8,  # mean, subtract, square, mean, rsqrt, scale, gamma, beta
    "SimplifiedLayerNormalization": 6,  # RMSNorm: no mean subtraction, no beta
    "SkipLayerNormalization": 10,  # layer norm + residual add + bias add
    "SkipSimplifiedLayerNormalization": 8,
    "EmbedLayerNormalization": 10,  # two embedding adds + layer norm
    "QEmbedLayerNormalization": 12,
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
    "QuantizeLinear": 3,
    "DequantizeLinear": 2,
}
# Integer elementwise ops per element of the largest input or output, relative to an int64 Add: ORT's CPU
# kernels for these have no fast vector path, and division, remainder and int64 reductions cost several times an
# add. Measured on an x86 host with onnxruntime 1.31's profiler on the integer-only MiniLM (ns per element: Add
# 0.46, Where 1.3, BitShift 0.8, Div 2.2, ReduceSum 3.2, Mod 4.8); a calibration prices the class as a whole.
INT_OPS_PER_ELEMENT = {"Where": 3, "BitShift": 2, "Div": 5, "ReduceSum": 7, "Mod": 10, "Cast": 0.7, "Abs": 0.8}
# Element-wise kernels that ONNX Runtime splits across its intra-op threads, and from how many output elements:
# the binary broadcast kernels (measured on ORT 1.2x, int32 and float alike: Add over 65,536 elements runs on one
# thread, over 98,304 on two at 0.7x the time). Where, Cast, Abs, Min/Max, Mod and ReduceSum stayed on one thread
# at every size measured. Their ops are the `wide_ops` feature, so a calibration can price them as parallel.
THREADED_ELEMENTWISE_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "BitShift", "PRelu",
    "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Xor",
}  # fmt: skip
THREADED_MIN_ELEMENTS = 65_536
# Pure data movement: no arithmetic, but their bytes still cost time.
DATA_MOVEMENT_OPS = {
    "Transpose",
    "Concat",
    "Slice",
    "Split",
    "Expand",
    "Tile",
    "Pad",
    "ConstantOfShape",
    "Range",
    "ReorderInput",
    "ReorderOutput",
}
GATHER_OPS = {"Gather", "GatherElements", "GatherND", "GatherBlockQuantized"}
# Views and metadata: ORT aliases or never touches the data, so they cost no ops and no bytes, only the node.
FREE_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant"}
# Inputs that are indexed rather than streamed (embedding tables): a node reads at most as many of their bytes
# as it writes, never the whole table.
INDEXED_INPUTS = {
    "Gather": (0,),
    "GatherElements": (0,),
    "GatherND": (0,),
    "GatherBlockQuantized": (0, 2),
    "EmbedLayerNormalization": (2, 3, 4),
    "QEmbedLayerNormalization": (2, 3, 4),
}

# Op class of each op type that is not classified by its inputs (see `op_class`). Anything else is "other",
# which a calibration prices like "elementwise" (its per-node overhead and per-byte cost).
_CLASS_OF = {
    "Attention": "attention",
    "MultiHeadAttention": "mha",  # Q, K, V projected by MatMuls of their own: only the per-head products inside
    "QAttention": "qattention",
    **dict.fromkeys(("LayerNormalization", "SimplifiedLayerNormalization"), "layernorm"),
    **dict.fromkeys(("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"), "skip_layernorm"),
    **dict.fromkeys(("EmbedLayerNormalization", "QEmbedLayerNormalization"), "embed_layernorm"),
    **dict.fromkeys(("Gelu", "BiasGelu", "FastGelu", "QuickGelu"), "gelu"),
    "Softmax": "softmax",
    **dict.fromkeys(GATHER_OPS, "gather"),
    **dict.fromkeys(DATA_MOVEMENT_OPS, "copy"),
    "Transpose": "transpose",  # strided: several times the price per byte of a contiguous copy
    **dict.fromkeys(FREE_OPS, "view"),
    **dict.fromkeys(LSTM_OPS, "lstm"),
    **dict.fromkeys(("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"), "quantize"),
    **dict.fromkeys(("ConvInteger", "QLinearConv"), "conv_int8"),
}
_ELEMENTWISE = "elementwise"
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
# Every op class a graph can produce, in a fixed order (calibration files and reports list them in it).
OP_CLASSES = (
    "matmul",
    "matmul_act",
    "matmul_u8s8",
    "matmul_s8s8",
    "dq_matmul",
    "matmul_nbits",
    "matmul_nbits_int8",
    "attention",
    "qattention",
    "mha",
    "layernorm",
    "skip_layernorm",
    "embed_layernorm",
    "gelu",
    "softmax",
    "elementwise",
    "elementwise_int",
    "gather",
    "copy",
    "transpose",
    "view",
    "quantize",
    "lstm",
    "conv",
    "conv_depthwise",
    "conv_int8",
    "other",
)
# What each work feature counts. "nodes" prices the per-node overhead (kernel dispatch, allocation, threading).
FEATURES = {
    "nodes": "nodes executed",
    "ops": "arithmetic ops (a multiply-add is 2)",
    "bytes": "activation bytes read and written",
    "weight_bytes": "bytes read from constant inputs (weights; indexed tables only as far as rows are read)",
    "wide_ops": "element-wise: ops of nodes that ONNX Runtime runs on all its threads (THREADED_ELEMENTWISE_OPS)",
    "score_ops": "attention: ops of QK^T, softmax and AV (the per-head products, as opposed to the projection)",
    "steps": "LSTM: recurrent time steps, each a dependent matrix-vector product",
    "step_bytes": "LSTM: bytes of the recurrent weights read at every step",
}


@dataclass(frozen=True)
class NodeWork:
    """One node's op class and work; `work` maps FEATURES names to amounts."""

    name: str
    op_type: str
    op_class: str
    work: dict[str, float]

    @property
    def ops(self) -> float:
        return sum(self.work.get(f, 0.0) for f in ("ops", "wide_ops", "score_ops"))

    @property
    def bytes(self) -> float:
        return sum(self.work.get(f, 0.0) for f in ("bytes", "weight_bytes", "step_bytes"))


def graph_work(model: onnx.ModelProto, shapes: Shapes, order: list[int]) -> list[NodeWork]:
    """The work of every node, in `order` (a topological order of model.graph.node)."""
    constants = {t.name for t in model.graph.initializer}
    return [node_work(model.graph.node[i], i, shapes, constants) for i in order]


def node_work(
    node: onnx.NodeProto, index: int, shapes: Shapes, constants: set[str] | frozenset = frozenset()
) -> NodeWork:
    op_class = op_class_of(node, shapes, constants)
    work: dict[str, float] = {"nodes": 1.0}
    if op_class == "lstm":
        work.update(_lstm_work(node, shapes))
    elif op_class == "elementwise_int":  # priced per weighted element: its bytes add nothing the weights miss
        work[_ops_feature(node, op_class, shapes)] = float(_node_ops(node, shapes))
    elif op_class != "view":
        work[_ops_feature(node, op_class, shapes)] = float(_node_ops(node, shapes))
        weights = weight_bytes(node, shapes, constants)
        work["bytes"] = float(node_bytes(node, shapes) - weights)
        if weights:
            work["weight_bytes"] = float(weights)
        if op_class in ("attention", "qattention"):
            work["score_ops"] = float(_attention_score_ops(node, shapes))
            work["ops"] -= work["score_ops"]
        elif op_class == "mha":
            work["score_ops"], work["ops"] = work["ops"], 0.0
    return NodeWork(node.name or f"{node.op_type}#{index}", node.op_type, op_class, work)


def _ops_feature(node: onnx.NodeProto, op_class: str, shapes: Shapes) -> str:
    """ "wide_ops" for an element-wise node that ONNX Runtime runs on all its threads, else "ops"."""
    output = node.output[0] if node.output else ""
    threaded = op_class in (_ELEMENTWISE, "elementwise_int") and node.op_type in THREADED_ELEMENTWISE_OPS
    return "wide_ops" if threaded and output in shapes and numel(shapes, output) > THREADED_MIN_ELEMENTS else "ops"


def op_class_of(node: onnx.NodeProto, shapes: Shapes, constants: set[str] | frozenset = frozenset()) -> str:
    """The node's op class (see OP_CLASSES); `constants` are the graph's initializer names."""
    op = node.op_type
    if op in ("MatMul", "FusedMatMul", "Gemm", "FusedGemm"):
        # Activation x activation (attention's per-head QK^T and AV when attention is not fused): small batched
        # products with nothing packed ahead, slower per op than a GEMM against constant, prepacked weights.
        return "matmul" if len(node.input) > 1 and node.input[1] in constants else "matmul_act"
    if op == "DynamicQuantizeMatMul":
        return "dq_matmul"  # A is quantized to u8 inside the node, then a u8 x s8 GEMM
    if op in ("MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm"):
        activation = node.input[0]
        signed = activation in shapes and shapes[activation][1] == TensorProto.INT8
        return "matmul_s8s8" if signed else "matmul_u8s8"
    if op == "MatMulNBits":
        return "matmul_nbits_int8" if node_attribute(node, "accuracy_level", 0) == 4 else "matmul_nbits"
    if op in ("Conv", "FusedConv", "NchwcConv"):
        return "conv_depthwise" if _is_depthwise(node, shapes) else "conv"
    if op in _CLASS_OF:
        return _CLASS_OF[op]
    if node.domain in ("", "ai.onnx") or op in OPS_PER_ELEMENT:
        # Integer arithmetic (an integer-only graph's int64 compare-and-select, division, shifts and sums) has no
        # fast vector kernels in ORT: several times the price per element of float math.
        return "elementwise_int" if _is_integer(node, shapes) else _ELEMENTWISE
    return "other"


def _is_integer(node: onnx.NodeProto, shapes: Shapes) -> bool:
    """The node writes integers (or booleans): an integer-only graph's arithmetic."""
    output = node.output[0] if node.output else ""
    return output in shapes and shapes[output][1] not in _FLOAT_TYPES


def nbytes(dims: tuple[int, ...], elem_type: int) -> int:
    """Byte size from shape and dtype, so external-data initializers need not be loaded."""
    numel = math.prod(dims)
    if elem_type in _SUB_BYTE_BITS:
        return math.ceil(numel * _SUB_BYTE_BITS[elem_type] / 8)
    return numel * helper.tensor_dtype_to_np_dtype(elem_type).itemsize


def value_bytes(shapes: Shapes, name: str) -> int:
    return nbytes(*shapes[name]) if name in shapes else 0


def numel(shapes: Shapes, name: str) -> int:
    return math.prod(shapes[name][0]) if name in shapes else 0


def _is_depthwise(node: onnx.NodeProto, shapes: Shapes) -> bool:
    """One filter per input channel (group == channels > 1): ORT runs these without im2col."""
    group = node_attribute(node, "group", 1)
    x = node.input[0]
    return group > 1 and x in shapes and len(shapes[x][0]) > 1 and shapes[x][0][1] == group


def _node_ops(node: onnx.NodeProto, shapes: Shapes) -> float:
    """Arithmetic ops of one node; matmuls count a multiply-add as 2."""
    op = node.op_type
    if op in FREE_OPS or op in DATA_MOVEMENT_OPS or op in GATHER_OPS:
        return 0
    if op in MATMUL_OPS:
        a_dims = shapes[node.input[0]][0]
        transposed_a = op == "FusedMatMul" and node_attribute(node, "transA", 0)
        k = a_dims[-2] if transposed_a else a_dims[-1]
        quantize_a = OPS_PER_ELEMENT["DynamicQuantizeLinear"] * numel(shapes, node.input[0])
        return 2 * numel(shapes, node.output[0]) * k + (quantize_a if op == "DynamicQuantizeMatMul" else 0)
    if op in GEMM_OPS:
        a_dims = shapes[node.input[0]][0]
        k = a_dims[0] if node_attribute(node, "transA", 0) else a_dims[1]
        out = numel(shapes, node.output[0])
        return 2 * out * k + (out if len(node.input) > 2 and node.input[2] else 0)
    if op in CONV_WEIGHT_INPUT:
        w_dims = shapes[node.input[CONV_WEIGHT_INPUT[op]]][0]
        return 2 * numel(shapes, node.output[0]) * math.prod(w_dims[1:])
    if op in ATTENTION_PAST_INPUT:
        return _attention_ops(node, shapes)
    if op == "MultiHeadAttention":
        return _multi_head_attention_ops(node, shapes)
    if op in INDEXED_INPUTS:  # embed layer norm: the work is per output element, not per table element
        return OPS_PER_ELEMENT.get(op, 1) * numel(shapes, node.output[0])
    elements = max((numel(shapes, name) for name in [*node.input, *node.output] if name), default=0)
    if _is_integer(node, shapes):  # in int64-element equivalents: an int32 or int8 element moves less
        widest = max(
            (nbytes((1,), shapes[name][1]) for name in [*node.input, *node.output] if name in shapes), default=8
        )
        return INT_OPS_PER_ELEMENT.get(op, 1) * elements * widest / 8
    return OPS_PER_ELEMENT.get(op, 1) * elements


def _attention_ops(node: onnx.NodeProto, shapes: Shapes) -> int:
    """com.microsoft (Q)Attention: QKV projection + bias, then the score products (see _attention_score_ops).

    Input [B, S, H_in], weight [H_in, Hq + Hk + Hv]; the output projection is a separate MatMul.
    """
    batch, seq, hidden_in = shapes[node.input[0]][0]
    qkv_cols = shapes[node.input[1]][0][1]
    tokens = batch * seq
    projection = 2 * tokens * hidden_in * qkv_cols + tokens * qkv_cols
    return projection + _attention_score_ops(node, shapes)


def _multi_head_attention_ops(node: onnx.NodeProto, shapes: Shapes) -> int:
    """com.microsoft MultiHeadAttention on projected Q [B, S, Hq], K [B, T, Hq], V [B, T, Hv]: QK^T, softmax
    (+scale, mask, attention bias), AV; the projections are MatMuls of their own."""
    batch, seq, hq = shapes[node.input[0]][0]
    seq_kv, hv = shapes[node.input[2]][0][1:]
    scores = batch * node_attribute(node, "num_heads", 1) * seq * seq_kv
    return 2 * batch * seq * seq_kv * (hq + hv) + (OPS_PER_ELEMENT["Softmax"] + 3) * scores


def _attention_score_ops(node: onnx.NodeProto, shapes: Shapes) -> int:
    """QK^T and AV per head, plus scale, mask and softmax over the scores."""
    batch, seq, _ = shapes[node.input[0]][0]
    qkv_cols = shapes[node.input[1]][0][1]
    hq, _, hv = node_attribute(node, "qkv_hidden_sizes", [qkv_cols // 3] * 3)
    past_index = ATTENTION_PAST_INPUT[node.op_type]
    has_past = len(node.input) > past_index and node.input[past_index] in shapes
    seq_kv = seq + (shapes[node.input[past_index]][0][3] if has_past else 0)
    scores = batch * node_attribute(node, "num_heads", 1) * seq * seq_kv
    products = 2 * batch * seq * seq_kv * (hq + hv)
    return products + (OPS_PER_ELEMENT["Softmax"] + 2) * scores


def weight_bytes(node: onnx.NodeProto, shapes: Shapes, constants: set[str] | frozenset) -> int:
    """The part of node_bytes read from constant inputs (weights, tables as far as rows are read): a model's weights
    are read once per run from wherever they live (L3, DRAM), at another price than its activations, which the
    previous node just wrote to the nearer caches."""
    written = sum(value_bytes(shapes, name) for name in node.output if name)
    indexed = INDEXED_INPUTS.get(node.op_type, ())
    return sum(
        min(value_bytes(shapes, name), written) if i in indexed else value_bytes(shapes, name)
        for i, name in enumerate(node.input)
        if name in constants
    )


def node_bytes(node: onnx.NodeProto, shapes: Shapes) -> int:
    """Bytes read (activations and weights) plus bytes written."""
    written = sum(value_bytes(shapes, name) for name in node.output if name)
    indexed = INDEXED_INPUTS.get(node.op_type, ())
    read = sum(
        min(value_bytes(shapes, name), written) if i in indexed else value_bytes(shapes, name)
        for i, name in enumerate(node.input)
        if name
    )
    return read + written + im2col_bytes(node, shapes)


def im2col_bytes(node: onnx.NodeProto, shapes: Shapes) -> int:
    """A convolution with a kernel wider than 1 runs as im2col + GEMM in ONNX Runtime's CPU kernels: the
    [C x k, output positions] patch matrix is written and read back once (k times the input's bytes for a
    1-D conv of stride 1), so it is traffic that reading the input and the weights once does not count.
    Depthwise convolutions (one filter per channel) run a direct kernel with no patch matrix."""
    if node.op_type not in CONV_WEIGHT_INPUT or _is_depthwise(node, shapes):
        return 0
    weight = node.input[CONV_WEIGHT_INPUT[node.op_type]]
    if weight not in shapes or node.output[0] not in shapes or node.input[0] not in shapes:
        return 0
    w_dims, out_dims = shapes[weight][0], shapes[node.output[0]][0]
    kernel = math.prod(w_dims[2:])
    if kernel == 1:
        return 0
    channels = w_dims[1] * node_attribute(node, "group", 1)
    itemsize = nbytes((1,), shapes[node.input[0]][1])
    return 2 * out_dims[0] * math.prod(out_dims[2:]) * channels * kernel * itemsize


def _lstm_work(node: onnx.NodeProto, shapes: Shapes) -> dict[str, float]:
    """An LSTM as its input projection plus its recurrence: `ops` and `bytes` of both, `steps` dependent steps
    and `step_bytes`, the recurrent weights R read at every step (see lstm_phases)."""
    (_, projection_ops, projection_bytes), (steps, step_ops, step_bytes) = lstm_phases(node, shapes)
    recurrent_bytes = _lstm_recurrent_bytes(node, shapes)
    return {
        "ops": float(projection_ops + steps * step_ops),
        "bytes": float(projection_bytes + steps * (step_bytes - recurrent_bytes)),
        "steps": float(steps),
        "step_bytes": float(steps * recurrent_bytes),
    }


def _lstm_recurrent_bytes(node: onnx.NodeProto, shapes: Shapes) -> int:
    weight_index, _ = LSTM_OPS[node.op_type]
    return value_bytes(shapes, node.input[weight_index + 1]) // shapes[node.input[weight_index]][0][0]


def lstm_phases(node: onnx.NodeProto, shapes: Shapes) -> list[tuple[int, int, int]]:
    """An LSTM as (repeats, ops, bytes) phases: the input projection X.W for all steps and directions, one
    large GEMM, then seq_len dependent steps per direction.

    Step t needs h_{t-1}, so each direction runs seq_len dependent [batch, H] x [H, 4H] products plus the cell's
    elementwise math: at batch 1 a matrix-vector product that reads all of R (4H x H weights) for 0.5 op per
    fp32 byte, paid seq_len times. Charging the recurrence as one big GEMM (what an ops-only rule does) makes a
    BiLSTM look ~100x cheaper than it runs. Every step is counted, padded ones included: LiteRT's sequence LSTM
    has no per-row lengths, and ONNX Runtime's skipping of padded steps depends on the text, not on the graph.
    """
    weight_index, input_major = LSTM_OPS[node.op_type]
    x_dims = shapes[node.input[0]][0]
    seq, batch = (x_dims[1], x_dims[0]) if node_attribute(node, "layout", 0) else (x_dims[0], x_dims[1])
    w_dims = shapes[node.input[weight_index]][0]
    directions, inputs = w_dims[0], (w_dims[1] if input_major else w_dims[2])
    hidden = node_attribute(node, "hidden_size", 0) or w_dims[2 if input_major else 1] // 4
    gates = 4 * hidden * batch * 4  # fp32 pre-activations of one step
    projection = (
        1,
        2 * seq * batch * inputs * 4 * hidden * directions,
        value_bytes(shapes, node.input[0]) + value_bytes(shapes, node.input[weight_index]) + seq * gates * directions,
    )
    step = (
        seq * directions,
        2 * batch * hidden * 4 * hidden + _LSTM_CELL_OPS_PER_UNIT * batch * hidden,
        _lstm_recurrent_bytes(node, shapes) + 2 * gates + 2 * 4 * batch * hidden,
    )
    return [projection, step]
