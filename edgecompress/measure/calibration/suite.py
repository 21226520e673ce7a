"""The micro-benchmark suite: small ONNX graphs built in code, one op kind each, at the shapes BERT-class models
and their students run (hidden 256-384, FFN 4x hidden, 12 heads of 32, 16-128 tokens; batch 1), plus the
matrix-vector shapes of a [CLS] row and a pooler, an LSTM step's and a 1-D convolution's.

A benchmark repeats its op as a chain of `repeat` nodes (each reading the previous one's output and its own
weights, so weights are not all cache-resident as one shared tensor would be) or, for ops whose output cannot feed
the next one (embedding lookups, quantization to uint8, LSTMs), as `repeat` side-by-side nodes. Fewer nodes
would leave a run dominated by session.run's fixed cost; the probes `overhead` (one tiny Add, almost nothing but
that fixed cost) and `nodes` (64 tiny Adds) separate the per-run cost from the per-node one.

Inputs follow the runner's synthetic-input rules (runtimes/ort_runner.py): float inputs get normal noise,
`input_ids` small ids, `*mask*` ones and `token_type_ids` zeros, so the runner feeds them with no .npz.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 would write 14
HEAD_SIZE = 32
# The integers an integer-only model's GELU, softmax and LayerNorm read: int32 accumulators of int8 products.
INTEGER_ACTIVATIONS = (-(2**22), 2**22)


@dataclass(frozen=True)
class Benchmark:
    name: str
    model: onnx.ModelProto


@dataclass(frozen=True)
class Shape:
    seq: int
    hidden: int

    @property
    def heads(self) -> int:
        return max(self.hidden // HEAD_SIZE, 1)


class _Builder:
    """Nodes, initializers and inputs of one graph; weights are seeded so a suite is the same every time."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self.rng = np.random.default_rng(seed)
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def weight(self, array: np.ndarray, stem: str = "w") -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def floats(self, *shape: int, scale: float = 0.05) -> str:
        return self.weight((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def input(self, name: str, elem_type: int, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def node(self, op: str, inputs: list[str], domain: str = "", outputs: int = 1, **attributes) -> list[str]:
        names = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(op), domain=domain, **attributes))
        return names

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        values = [onnx.ValueInfoProto(name=name) for name in outputs]  # ORT infers their types at load
        graph = helper.make_graph(self.nodes, "benchmark", self.inputs, values, self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = IR_VERSION
        return model


def _int8_weight(b: _Builder, rows: int, cols: int) -> tuple[str, str, str]:
    """(int8 weights, per-column float scales, int8 zero points) as dynamic/static int8 MatMuls store them."""
    weights = b.weight(b.rng.integers(-127, 128, (rows, cols)).astype(np.int8), "wq")
    scales = b.weight(np.full(cols, 0.01, np.float32), "ws")
    zeros = b.weight(np.zeros(cols, np.int8), "wz")
    return weights, scales, zeros


# --- one builder per op kind: (builder, shape, repeat) -> output names ------------------------------------------


def _matmul(b: _Builder, x: str, k: int, n: int, kind: str) -> str:
    """x [.., k] -> [.., n] with the op a `kind` export runs after ONNX Runtime's fusions."""
    if kind == "float":
        return b.node("MatMul", [x, b.floats(k, n)])[0]
    if kind == "dynamic":
        wq, ws, wz = _int8_weight(b, k, n)
        return b.node("DynamicQuantizeMatMul", [x, wq, ws, wz], domain="com.microsoft")[0]
    if kind in ("u8", "s8"):
        elem = np.uint8 if kind == "u8" else np.int8
        scale, zero = b.weight(np.array(0.05, np.float32)), b.weight(np.array(128 if kind == "u8" else 0, elem))
        xq = b.node("QuantizeLinear", [x, scale, zero])[0]
        wq, ws, wz = _int8_weight(b, k, n)
        return b.node("MatMulIntegerToFloat", [xq, wq, scale, ws, zero, wz], domain="com.microsoft")[0]
    level = 4 if kind == "nbits_int8" else 0
    block = 128 if k % 128 == 0 else 32
    packed = b.weight(b.rng.integers(0, 256, (n, k // block, block // 2)).astype(np.uint8), "w4")
    scales = b.weight(np.full(n * (k // block), 0.01, np.float32), "s4")
    return b.node(
        "MatMulNBits",
        [x, packed, scales],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=level,
    )[0]


def _ffn_chain(kind: str) -> Callable[[_Builder, Shape, int], list[str]]:
    """`repeat` FFN pairs [rows, H] -> [rows, 4H] -> [rows, H]; rows = seq, or 1 for hidden=seq=1 style gemv."""

    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
        for _ in range(repeat):
            x = _matmul(b, _matmul(b, x, shape.hidden, 4 * shape.hidden, kind), 4 * shape.hidden, shape.hidden, kind)
        return [x]

    return build


def _attention(quantized: bool) -> Callable[[_Builder, Shape, int], list[str]]:
    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
        mask = b.input("attention_mask", TensorProto.INT32, [1, shape.seq])
        for _ in range(repeat):
            bias = b.floats(3 * shape.hidden)
            if quantized:
                xq, scale, zero = b.node("DynamicQuantizeLinear", [x], outputs=3)
                wq = b.weight(b.rng.integers(-127, 128, (shape.hidden, 3 * shape.hidden)).astype(np.int8), "wq")
                inputs = [xq, wq, bias, scale, b.weight(np.array(0.01, np.float32)), mask, zero]
                x = b.node("QAttention", inputs, domain="com.microsoft", num_heads=shape.heads)[0]
            else:
                inputs = [x, b.floats(shape.hidden, 3 * shape.hidden), bias, mask]
                x = b.node("Attention", inputs, domain="com.microsoft", num_heads=shape.heads, mask_filter_value=-60.0)[
                    0
                ]
        return [x]

    return build


def _multi_head_attention(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """com.microsoft MultiHeadAttention on projected Q, K, V (what our own fusion writes for MobileBERT and MPNet),
    with a key padding mask; the output is the next block's query."""
    q = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    k = b.input("k", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    v = b.input("v", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    mask = b.input("attention_mask", TensorProto.INT32, [1, shape.seq])
    for _ in range(repeat):
        q = b.node("MultiHeadAttention", [q, k, v, "", mask], domain="com.microsoft", num_heads=shape.heads)[0]
    return [q]


def _norms(op: str) -> Callable[[_Builder, Shape, int], list[str]]:
    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
        skip = b.input("skip", TensorProto.FLOAT, [1, shape.seq, shape.hidden]) if op != "LayerNormalization" else ""
        for _ in range(repeat):
            gamma, beta = b.floats(shape.hidden, scale=1.0), b.floats(shape.hidden)
            if op == "LayerNormalization":
                x = b.node(op, [x, gamma, beta], axis=-1, epsilon=1e-12)[0]
            else:
                x = b.node(op, [x, skip, gamma, beta, b.floats(shape.hidden)], domain="com.microsoft", epsilon=1e-12)[0]
        return [x]

    return build


def _embed_layernorm(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    ids = b.input("input_ids", TensorProto.INT32, [1, shape.seq])
    types = b.input("token_type_ids", TensorProto.INT32, [1, shape.seq])
    mask = b.input("attention_mask", TensorProto.INT32, [1, shape.seq])
    outputs = []
    for _ in range(repeat):
        tables = [b.floats(1000, shape.hidden), b.floats(512, shape.hidden), b.floats(2, shape.hidden)]
        gamma, beta = b.floats(shape.hidden, scale=1.0), b.floats(shape.hidden)
        outputs.append(
            b.node(
                "EmbedLayerNormalization",
                [ids, types, *tables, gamma, beta, mask],
                domain="com.microsoft",
                outputs=2,
                epsilon=1e-12,
            )[0]
        )
    return outputs


def _gelu(op: str) -> Callable[[_Builder, Shape, int], list[str]]:
    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        width = 4 * shape.hidden
        x = b.input("x", TensorProto.FLOAT, [1, shape.seq, width])
        for _ in range(repeat):
            inputs = [x, b.floats(width)] if op in ("BiasGelu", "FastGelu") else [x]
            x = b.node(op, inputs, domain="com.microsoft")[0]
        return [x]

    return build


def _softmax(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    x = b.input("x", TensorProto.FLOAT, [1, shape.heads, shape.seq, shape.seq])
    for _ in range(repeat):
        x = b.node("Softmax", [x], axis=-1)[0]
    return [x]


def _elementwise(op: str, width: int | None = None) -> Callable[[_Builder, Shape, int], list[str]]:
    """A chain of one elementwise op: binary ones add a [hidden] bias (broadcast), as an unfused bias add does."""

    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        hidden = width or shape.hidden
        x = b.input("x", TensorProto.FLOAT, [1, shape.seq, hidden])
        for _ in range(repeat):
            x = b.node(op, [x, b.floats(hidden, scale=1.0)] if op in ("Add", "Mul") else [x])[0]
        return [x]

    return build


def _residual_add(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """x + skip, both activations: the residual adds a graph with unfused SkipLayerNorm runs."""
    x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    skip = b.input("skip", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    for _ in range(repeat):
        x = b.node("Add", [x, skip])[0]
    return [x]


def _head_products(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """Unfused attention's per-head products: scores = Q K^T [heads, seq, seq], then scores V [heads, seq, 32]."""
    q = b.input("x", TensorProto.FLOAT, [1, shape.heads, shape.seq, HEAD_SIZE])
    keys = b.input("k", TensorProto.FLOAT, [1, shape.heads, HEAD_SIZE, shape.seq])
    values = b.input("v", TensorProto.FLOAT, [1, shape.heads, shape.seq, HEAD_SIZE])
    for _ in range(repeat):
        q = b.node("MatMul", [b.node("MatMul", [q, keys])[0], values])[0]
    return [q]


def _integer_kernel(kind: str) -> Callable[[_Builder, Shape, int], list[str]]:
    """The integer-only recipe's own GELU, softmax and LayerNorm programs (compress/integer_only/kernels.py,
    lowered as that recipe lowers them): int32 requantizations, table lookups, divisions, shifts and row sums,
    the op mix an integer-only graph spends its time in. GELU is the model's: a requantization to the table's
    input bits, then the table."""

    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        from edgecompress.compress.integer_only import kernels
        from edgecompress.compress.integer_only.lower import OnnxOps
        from edgecompress.compress.integer_only.program import GELU_BITS, GELU_TOP

        ops = OnnxOps()
        if kind == "softmax":
            x = b.input("x", TensorProto.INT64, [1, shape.heads, shape.seq, shape.seq])
            mask = b.input("key_mask", TensorProto.BOOL, [1, 1, 1, shape.seq])
        else:
            x = b.input("x", TensorProto.INT64, [1, shape.seq, (4 if kind == "gelu" else 1) * shape.hidden])
        # The interval the integer-only model's activations lie in (int32 accumulators): with none declared the
        # emitter assumes any int64, and a LayerNorm's row sum would not even fit int64.
        ops.declare(x, TensorProto.INT64, INTEGER_ACTIVATIONS)
        table, _ = kernels.gelu_table(0.02, GELU_BITS)
        to_gelu = kernels.requantizer(2.0**-9, max(INTEGER_ACTIVATIONS[1], int(np.abs(table).max())), GELU_BITS)
        for _ in range(repeat):  # chained: side by side on one input, the copies would be merged at load
            if kind == "gelu":
                x = ops.lookup(table, ops.add(kernels.requantize(ops, x, to_gelu, GELU_BITS), GELU_TOP))
            elif kind == "softmax":
                x = kernels.i_softmax(ops, x, 0.01, mask, max_keys=shape.seq)[0]  # as the model bounds its keys
            else:
                params = kernels.layernorm_params(np.ones(shape.hidden), np.zeros(shape.hidden), 0.05, 8)
                x = kernels.i_layernorm(ops, x, params)
        b.nodes.extend(ops.nodes)
        b.initializers.extend(ops.initializers)
        return [x]

    return build


def _small_ops(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """The small ops around a student's convolutions and heads (scale, slice, activation, pooling), on small
    tensors: per-node costs of real ops, not of the smallest possible ones."""
    x = b.input("x", TensorProto.FLOAT, [1, shape.hidden, shape.seq])
    starts, ends, axes = (b.weight(np.array([v], np.int64)) for v in (0, shape.seq - 1, 2))
    pooled = []
    for _ in range(repeat):
        x = b.node("Mul", [x, b.weight(np.array(0.5, np.float32))])[0]
        x = b.node("Relu", [b.node("Slice", [x, starts, ends, axes])[0]])[0]
        x = b.node("Pad", [x, b.weight(np.array([0, 0, 0, 0, 0, 1], np.int64))])[0]
        pooled.append(b.node("ReduceMax", [x], axes=[2], keepdims=0)[0])
    return [b.node("Concat", pooled, axis=1)[0]]


def _reduce(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """Max over time of [1, channels, length] (a CNN student's pooling), side by side."""
    x = b.input("x", TensorProto.FLOAT, [1, shape.hidden, shape.seq])
    return [b.node("ReduceMax", [x], axes=[2], keepdims=0)[0] for _ in range(repeat)]


def _gather(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    ids = b.input("input_ids", TensorProto.INT64, [1, shape.seq])
    return [b.node("Gather", [b.floats(1000, shape.hidden), ids])[0] for _ in range(repeat)]


def _transpose(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """Head split/merge transposes, each followed by a reshape back to the input's shape (a view), so that no two
    transposes meet and cancel at load."""
    x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.heads, HEAD_SIZE])
    back = b.weight(np.array([1, shape.seq, shape.heads, HEAD_SIZE], np.int64))
    for _ in range(repeat):
        x = b.node("Reshape", [b.node("Transpose", [x], perm=[0, 2, 1, 3])[0], back])[0]
    return [x]


def _split_concat(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """Split off the first token row and join it back: what cls_row_apart's graphs run in every layer."""
    x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    sizes = b.weight(np.array([1, shape.seq - 1], np.int64))
    for _ in range(repeat):
        first, rest = b.node("Split", [x, sizes], outputs=2, axis=1)
        x = b.node("Concat", [rest, first], axis=1)[0]
    return [x]


def _reshape(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    """Views between adds (adjacent reshapes would be merged at load): the per-node cost of a node that moves
    no data, on top of the adds'."""
    x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    split = b.weight(np.array([1, shape.seq, shape.heads, shape.hidden // shape.heads], np.int64))
    merged = b.weight(np.array([1, shape.seq, shape.hidden], np.int64))
    for index in range(repeat):
        x = b.node("Reshape", [x, split if index % 2 == 0 else merged])[0]
        x = b.node("Relu", [x])[0]
    return [x]


def _quantize(b: _Builder, shape: Shape, repeat: int) -> list[str]:
    x = b.input("x", TensorProto.FLOAT, [1, shape.seq, shape.hidden])
    return [b.node("DynamicQuantizeLinear", [x], outputs=3)[0] for _ in range(repeat)]


def _lstm(units_per_input: int) -> Callable[[_Builder, Shape, int], list[str]]:
    """Bidirectional LSTMs over [seq, 1, hidden] inputs with `units_per_input` x hidden units, side by side (a
    BiLSTM student's); two widths, so that the input projection and the recurrent steps are told apart."""

    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        return _lstms(b, shape, repeat, units_per_input * shape.hidden)

    return build


def _lstms(b: _Builder, shape: Shape, repeat: int, hidden: int) -> list[str]:
    x = b.input("x", TensorProto.FLOAT, [shape.seq, 1, shape.hidden])
    outputs = []
    for _ in range(repeat):
        weights = [b.floats(2, 4 * hidden, shape.hidden), b.floats(2, 4 * hidden, hidden), b.floats(2, 8 * hidden)]
        outputs.append(b.node("LSTM", [x, *weights], hidden_size=hidden, direction="bidirectional")[0])
    return outputs


def _conv(kind: str) -> Callable[[_Builder, Shape, int], list[str]]:
    """1-D convolutions of kernel 3 over [1, channels=hidden, length=seq], padded to keep the length."""

    def build(b: _Builder, shape: Shape, repeat: int) -> list[str]:
        channels = shape.hidden
        x = b.input("x", TensorProto.FLOAT, [1, channels, shape.seq])
        if kind == "int8":
            scale, zero = b.weight(np.array(0.05, np.float32)), b.weight(np.array(128, np.uint8))
            x = b.node("QuantizeLinear", [x, scale, zero])[0]
        for _ in range(repeat):
            if kind == "int8":
                wq = b.weight(b.rng.integers(-127, 128, (channels, channels, 3)).astype(np.int8), "wq")
                ws, wz = b.weight(np.array(0.01, np.float32)), b.weight(np.array(0, np.int8))
                x = b.node("QLinearConv", [x, scale, zero, wq, ws, wz, scale, zero], pads=[1, 1])[0]
            else:
                group = channels if kind == "depthwise" else 1
                w = b.floats(channels, channels // group, 3)
                x = b.node("Conv", [x, w, b.floats(channels)], pads=[1, 1], group=group)[0]
        return [x]

    return build


# --- the suites --------------------------------------------------------------------------------------------------

_KINDS: dict[str, Callable[[_Builder, Shape, int], list[str]]] = {
    "matmul": _ffn_chain("float"),
    "dq_matmul": _ffn_chain("dynamic"),
    "matmul_u8s8": _ffn_chain("u8"),
    "matmul_s8s8": _ffn_chain("s8"),
    "matmul_nbits": _ffn_chain("nbits"),
    "matmul_nbits_int8": _ffn_chain("nbits_int8"),
    "attention": _attention(quantized=False),
    "qattention": _attention(quantized=True),
    "mha": _multi_head_attention,
    "layernorm": _norms("LayerNormalization"),
    "skip_layernorm": _norms("SkipLayerNormalization"),
    "embed_layernorm": _embed_layernorm,
    "bias_gelu": _gelu("BiasGelu"),
    "fast_gelu": _gelu("FastGelu"),
    "gelu": _gelu("Gelu"),
    "softmax": _softmax,
    "add": _elementwise("Add"),
    "residual_add": _residual_add,
    "mul": _elementwise("Mul"),
    "tanh": _elementwise("Tanh"),
    "head_products": _head_products,
    "reduce": _reduce,
    "int_gelu": _integer_kernel("gelu"),
    "int_softmax": _integer_kernel("softmax"),
    "int_layernorm": _integer_kernel("layernorm"),
    "gather": _gather,
    "transpose": _transpose,
    "split_concat": _split_concat,
    "reshape": _reshape,
    "quantize": _quantize,
    "lstm": _lstm(1),
    "lstm_wide": _lstm(2),
    "small_ops": _small_ops,
    "conv": _conv("float"),
    "conv_depthwise": _conv("depthwise"),
    "conv_int8": _conv("int8"),
}

# FFN pairs per matmul benchmark: as many weight bytes as a MiniLM's layers stream through the caches on every run
# (fp32 ~28 MB, int8 ~14 MB, 4-bit ~8 MB at hidden 384), so that weights come from where they come from in a model,
# not from a cache a smaller chain would fit in.
_MATMUL_REPEATS = {"matmul": 6, "dq_matmul": 12, "matmul_u8s8": 12, "matmul_nbits": 12}
# (kind, seq, hidden, repeat). Matmul shapes: the teacher's (384) at 16-128 tokens, a mid-size model's (256),
# and matrix-vector products of three widths (1 row: a [CLS] row, a pooler, a classifier), so that a class's
# per-node, per-op and per-byte prices are told apart. Light ops repeat more, so that their own time
# stands out of session.run's fixed cost.
_FULL: list[tuple[str, int, int, int]] = [
    *[(k, s, 384, r) for k, r in _MATMUL_REPEATS.items() for s in (16, 32, 64, 128)],
    *[(k, s, 256, r) for k, r in _MATMUL_REPEATS.items() for s in (64, 128)],
    *[(k, 1, h, 6) for k in ("matmul", "dq_matmul", "matmul_u8s8", "matmul_nbits") for h in (128, 256)],
    *[(k, 1, 384, 6) for k in ("dq_matmul", "matmul_u8s8", "matmul_nbits")],
    *[("matmul_s8s8", s, 384, 1) for s in (16, 64)],
    ("matmul_s8s8", 1, 384, 4),
    *[("matmul_nbits_int8", s, 384, 2) for s in (16, 64)],
    ("matmul_nbits_int8", 1, 384, 6),
    *[(k, s, 384, 4) for k in ("attention", "qattention") for s in (16, 32, 64, 128)],
    *[(k, s, 256, 4) for k in ("attention", "qattention") for s in (64, 128)],
    *[("mha", s, 384, 4) for s in (16, 64, 128)],
    *[(k, s, 384, 16) for k in ("layernorm", "skip_layernorm", "residual_add", "add") for s in (16, 64, 128)],
    *[("embed_layernorm", s, 384, 8) for s in (16, 64, 128)],
    *[("bias_gelu", s, 384, 8) for s in (16, 64, 128)],
    ("fast_gelu", 64, 384, 8),
    ("gelu", 64, 384, 8),
    *[("softmax", s, 384, 8) for s in (16, 64, 128)],
    *[("head_products", s, 384, 4) for s in (16, 64, 128)],
    *[(f"int_{k}", s, 384, 2) for k in ("gelu", "softmax", "layernorm") for s in (32, 128)],
    *[("reduce", 64, h, 8) for h in (128, 256)],
    ("mul", 128, 384, 16),
    ("tanh", 128, 384, 16),
    ("add", 8, 64, 512),  # `nodes`: many nodes on small tensors (time and memory per node)
    ("add", 8, 64, 32),
    ("add", 8, 64, 1),  # `overhead`: one small node, almost nothing but session.run's own cost
    *[("small_ops", s, 64, 16) for s in (16, 64)],
    *[("gather", s, 384, 16) for s in (16, 64, 128)],
    *[("transpose", s, 384, 16) for s in (16, 64, 128)],
    *[("split_concat", s, 384, 16) for s in (16, 64, 128)],
    *[("reshape", s, 384, 16) for s in (16, 128)],
    *[("quantize", s, 384, 16) for s in (16, 64, 128)],
    *[("lstm", s, h, 2) for s, h in ((16, 128), (64, 128), (64, 256))],
    *[("lstm_wide", s, h, 2) for s, h in ((64, 64), (32, 128))],
    *[(k, 64, h, 4) for k in ("conv", "conv_depthwise") for h in (128, 256)],
    ("conv_int8", 64, 128, 4),
]
# A few seconds in all: one shape per class that the tests' tiny models and a quick check need.
_TINY: list[tuple[str, int, int, int]] = [
    ("matmul", 16, 64, 2),
    ("matmul", 1, 64, 4),
    ("matmul", 32, 64, 4),
    ("add", 8, 64, 1),
    ("add", 8, 64, 32),
    ("add", 16, 64, 8),
    ("layernorm", 16, 64, 8),
    ("gather", 16, 64, 8),
]
SUITES = {"full": _FULL, "tiny": _TINY}


def suite(name: str = "full") -> list[Benchmark]:
    """The benchmarks of one suite, graphs built now (deterministically)."""
    benchmarks = []
    for index, (kind, seq, hidden, repeat) in enumerate(SUITES[name]):
        builder = _Builder(seed=index)
        outputs = _KINDS[kind](builder, Shape(seq, hidden), repeat)
        benchmarks.append(Benchmark(f"{kind} seq {seq} hidden {hidden} x{repeat}", builder.model(outputs)))
    return benchmarks
