"""TFLite lowerings of standard ONNX ops (ai.onnx, opset 17): one builtin per node unless stated.

Reshape-like ops (Reshape, Unsqueeze, Squeeze, Flatten) all become RESHAPE to the inferred output shape,
since shapes are fixed. A MatMul by a constant 2-D weight becomes FULLY_CONNECTED with the weight stored
transposed (the [out, in] layout TFLite kernels read); by a run-time value it becomes BATCH_MATMUL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.ops.static_int8 import quantized_matmul
from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_FLOAT32 = np.dtype(np.float32)

# ONNX op -> (builtin, kind of its schema options)
_BINARY = {
    "Add": ("ADD", "Add"),
    "Sub": ("SUB", "Sub"),
    "Mul": ("MUL", "Mul"),
    "Div": ("DIV", "Div"),
    "Pow": ("POW", "Pow"),
    "Max": ("MAXIMUM", "MaximumMinimum"),
    "Min": ("MINIMUM", "MaximumMinimum"),
    "Equal": ("EQUAL", "Equal"),
    "Less": ("LESS", "Less"),
    "Greater": ("GREATER", "Greater"),
    "LessOrEqual": ("LESS_EQUAL", "LessEqual"),
    "GreaterOrEqual": ("GREATER_EQUAL", "GreaterEqual"),
    "And": ("LOGICAL_AND", "LogicalAnd"),
    "Or": ("LOGICAL_OR", "LogicalOr"),
}
_UNARY = {
    "Tanh": "TANH",
    "Sqrt": "SQRT",
    "Exp": "EXP",
    "Relu": "RELU",
    "Sigmoid": "LOGISTIC",
    "Neg": "NEG",
    "Abs": "ABS",
    "Not": "LOGICAL_NOT",
}
_REDUCE = {"ReduceMean": "MEAN", "ReduceSum": "SUM", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN"}


@lowers(*_BINARY)
def binary(lw: Lowering, node) -> None:
    """`Add(A, B)` -> `ADD(A, B)` (numpy broadcasting, as in ONNX), and likewise for the table above."""
    if node.op_type in ("Max", "Min") and len(node.input) != 2:
        raise lw.unsupported(node, f"{len(node.input)} inputs (only two are lowered)")
    builtin, kind = _BINARY[node.op_type]
    lw.emit(builtin, [lw.value(name) for name in node.input], out=node.output[0], options=lw.options(kind))


@lowers(*_UNARY)
def unary(lw: Lowering, node) -> None:
    """`Tanh(X)` -> `TANH(X)`, `Sigmoid(X)` -> `LOGISTIC(X)`, and likewise for the table above."""
    lw.emit(_UNARY[node.op_type], [lw.value(node.input[0])], out=node.output[0])


@lowers("Identity")
def identity(lw: Lowering, node) -> None:
    """`Identity(X)` -> nothing: the output names the same tensor."""
    lw.bind(node.output[0], lw.value(node.input[0]))


@lowers("Clip")
def clip(lw: Lowering, node) -> None:
    """`Clip(X, lo, hi)` -> `MINIMUM(MAXIMUM(X, lo), hi)`, each bound only when given."""
    x = lw.value(node.input[0])
    bounds = [(name, op) for name, op in zip(node.input[1:3], ("MAXIMUM", "MINIMUM")) if name]
    if not bounds:
        raise lw.unsupported(node, "Clip without bounds")
    for index, (name, op) in enumerate(bounds):
        last = index == len(bounds) - 1
        x = lw.emit(
            op,
            [x, lw.value(name)],
            out=node.output[0] if last else None,
            shape=lw.shape(node.input[0]),
            dtype=lw.dtype(node.input[0]),
        )


@lowers("Where")
def where(lw: Lowering, node) -> None:
    """`Where(C, A, B)` -> `SELECT_V2(C, A, B)` (broadcasting)."""
    lw.emit("SELECT_V2", [lw.value(name) for name in node.input], out=node.output[0])


@lowers("MatMul")
def matmul(lw: Lowering, node) -> None:
    """`MatMul(A, W const [K, N])` -> `FULLY_CONNECTED(A, W^T, bias, keep_num_dims)`; else `BATCH_MATMUL(A, B)`.

    The bias is the one the result's reader adds (skip-LayerNorm, BiasGelu, Add of a constant; see
    `Lowering.fold_bias`), or none. A weight that is a dequantized int8 constant keeps its int8 form
    (see `tflite_quant`).
    """
    if quantized_matmul(lw, node):
        return
    a, b = node.input
    weight = lw.constant(b)
    if weight is not None and weight.ndim == 2 and weight.dtype == _FLOAT32:
        fold = lw.fold_bias(node.output[0])
        bias = -1 if fold is None else lw.const(fold.bias, f"{fold.out}/fc_bias")
        lw.emit(
            "FULLY_CONNECTED",
            [lw.value(a), lw.const(weight.T, f"{b}/transposed"), bias],
            out=node.output[0] if fold is None else fold.out,
            options=lw.options("FullyConnected", keepNumDims=True),
        )
        return
    lw.emit("BATCH_MATMUL", [lw.value(a), lw.value(b)], out=node.output[0], options=lw.options("BatchMatMul"))


@lowers("Gemm")
def gemm(lw: Lowering, node) -> None:
    """`Gemm(A, B const, C)` -> `FULLY_CONNECTED(A, B as [N, K], C as [N])` (transB picks the layout)."""
    if lw.attr(node, "alpha", 1.0) != 1.0 or lw.attr(node, "beta", 1.0) != 1.0 or lw.attr(node, "transA", 0):
        raise lw.unsupported(node, "alpha, beta or transA other than 1, 1, 0")
    weight = lw.constant(node.input[1])
    if weight is None:
        raise lw.unsupported(node, "a weight B that is not a constant")
    weight = weight if lw.attr(node, "transB", 0) else weight.T
    inputs = [lw.value(node.input[0]), lw.const(weight, f"{node.input[1]}/as_fc_weight"), -1]
    if len(node.input) > 2 and node.input[2]:
        inputs[2] = _fc_bias(lw, node, weight.shape[0])
    lw.emit("FULLY_CONNECTED", inputs, out=node.output[0], options=lw.options("FullyConnected"))


def _fc_bias(lw: Lowering, node, width: int) -> int:
    """Gemm's C broadcasts over rows; FULLY_CONNECTED takes one bias per output column."""
    bias = lw.constant(node.input[2])
    if bias is None or (bias.ndim == 2 and bias.shape[0] != 1):
        raise lw.unsupported(node, "a bias C that is not a constant row vector")
    return lw.const(np.broadcast_to(bias.reshape(-1), (width,)).copy(), f"{node.input[2]}/as_fc_bias_{width}")


@lowers("Gather")
def gather(lw: Lowering, node) -> None:
    """`Gather(X, I, axis)` -> `GATHER(X, I, axis)`; negative constant indices are made positive.

    A constant scalar index (BERT's pooler takes token 0) -> `RESHAPE(SLICE(X, begin, size))`, which
    XNNPACK runs; GATHER, or a STRIDED_SLICE shrinking the axis, would split its partition in two.
    """
    shape = lw.shape(node.input[0])
    axis = _axis(lw.attr(node, "axis", 0), len(shape))
    indices = lw.constant(node.input[1])
    if indices is not None and indices.ndim == 0:
        begin, size = [0] * len(shape), list(shape)
        begin[axis], size[axis] = int(indices) % shape[axis], 1
        sliced = lw.emit(
            "SLICE",
            [
                lw.value(node.input[0]),
                lw.const(np.array(begin, np.int32), f"begin{begin}"),
                lw.const(np.array(size, np.int32), f"size{size}"),
            ],
            shape=size,
            dtype=lw.dtype(node.input[0]),
        )
        reshape_to(lw, sliced, node.output[0])
        return
    if indices is not None and (indices < 0).any():
        indices = np.where(indices < 0, indices + shape[axis], indices)
        index_tensor = lw.const(indices, f"{node.input[1]}/positive_{axis}")
    else:
        index_tensor = lw.value(node.input[1])
    lw.emit(
        "GATHER", [lw.value(node.input[0]), index_tensor], out=node.output[0], options=lw.options("Gather", axis=axis)
    )


@lowers("Reshape", "Unsqueeze", "Squeeze", "Flatten")
def reshape(lw: Lowering, node) -> None:
    """`Reshape/Unsqueeze/Squeeze/Flatten(X)` -> `RESHAPE(X, inferred output shape)`."""
    reshape_to(lw, lw.value(node.input[0]), node.output[0])


def reshape_to(lw: Lowering, x: int, out: str) -> int:
    shape = list(lw.shape(out))
    return lw.emit(
        "RESHAPE",
        [x, lw.const(np.array(shape, np.int32), f"shape{shape}")],
        out=out,
        options=lw.options("Reshape", newShape=shape),
    )


@lowers("Expand")
def expand(lw: Lowering, node) -> None:
    """`Expand(X, shape)` -> `BROADCAST_TO(X, inferred output shape)`."""
    shape = list(lw.shape(node.output[0]))
    lw.emit(
        "BROADCAST_TO",
        [lw.value(node.input[0]), lw.const(np.array(shape, np.int32), f"shape{shape}")],
        out=node.output[0],
    )


@lowers("Transpose")
def transpose(lw: Lowering, node) -> None:
    """`Transpose(X, perm)` -> `TRANSPOSE(X, perm)` (default perm: reversed axes)."""
    rank = len(lw.shape(node.input[0]))
    perm = list(lw.attr(node, "perm", range(rank - 1, -1, -1)))
    lw.emit(
        "TRANSPOSE",
        [lw.value(node.input[0]), lw.const(np.array(perm, np.int32), f"perm{perm}")],
        out=node.output[0],
        options=lw.options("Transpose"),
    )


@lowers("Softmax")
def softmax(lw: Lowering, node) -> None:
    """`Softmax(X, axis=-1)` -> `SOFTMAX(X, beta=1)`; TFLite normalizes over the last axis only."""
    rank = len(lw.shape(node.input[0]))
    if _axis(lw.attr(node, "axis", -1), rank) != rank - 1:
        raise lw.unsupported(node, f"axis {lw.attr(node, 'axis')} is not the last axis")
    lw.emit("SOFTMAX", [lw.value(node.input[0])], out=node.output[0], options=lw.options("Softmax", beta=1.0))


@lowers("Concat")
def concat(lw: Lowering, node) -> None:
    """`Concat(X..., axis)` -> `CONCATENATION(X..., axis)`."""
    axis = _axis(lw.attr(node, "axis"), len(lw.shape(node.output[0])))
    lw.emit(
        "CONCATENATION",
        [lw.value(name) for name in node.input],
        out=node.output[0],
        options=lw.options("Concatenation", axis=axis),
    )


@lowers("Slice")
def slice_(lw: Lowering, node) -> None:
    """`Slice(X, starts, ends, axes, steps)` (all constant) -> `STRIDED_SLICE(X, begin, end, strides)`."""
    shape = lw.shape(node.input[0])
    names = list(node.input[1:5]) + [""] * (5 - len(node.input))
    starts, ends, axes, steps = (lw.constant(name) if name else None for name in names)
    if starts is None or ends is None or any(name and lw.constant(name) is None for name in names[2:]):
        raise lw.unsupported(node, "starts, ends, axes or steps that are not constants")
    axes = range(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    begin, end, strides, end_mask = [0] * len(shape), list(shape), [1] * len(shape), 0
    for start, stop, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(int(axis), len(shape))
        begin[axis], end[axis], strides[axis] = slice(int(start), int(stop), int(step)).indices(shape[axis])
        if end[axis] < 0:  # a negative step running past index 0: "to the start" is only expressible as a mask
            end_mask |= 1 << axis
    vectors = [
        lw.const(np.array(v, np.int32), f"{node.output[0]}/{what}")
        for v, what in ((begin, "begin"), (end, "end"), (strides, "strides"))
    ]
    lw.emit(
        "STRIDED_SLICE",
        [lw.value(node.input[0]), *vectors],
        out=node.output[0],
        options=lw.options("StridedSlice", endMask=end_mask),
    )


@lowers("Cast")
def cast(lw: Lowering, node) -> None:
    """`Cast(X, to)` -> `CAST(X)`; the output tensor's type is the target type."""
    lw.emit("CAST", [lw.value(node.input[0])], out=node.output[0])


@lowers(*_REDUCE)
def reduce(lw: Lowering, node) -> None:
    """`ReduceMean(X, axes, keepdims)` -> `MEAN(X, axes, keep_dims)`; SUM, REDUCE_MAX, REDUCE_MIN likewise."""
    rank = len(lw.shape(node.input[0]))
    axes = lw.attr(node, "axes")
    if len(node.input) > 1 and node.input[1]:
        axes = lw.constant(node.input[1])
        if axes is None:
            raise lw.unsupported(node, "axes that are not a constant")
    if axes is None or len(axes) == 0:
        if lw.attr(node, "noop_with_empty_axes", 0):
            raise lw.unsupported(node, "noop_with_empty_axes=1 without axes")
        axes = range(rank)
    axes = sorted(_axis(int(a), rank) for a in axes)
    lw.emit(
        _REDUCE[node.op_type],
        [lw.value(node.input[0]), lw.const(np.array(axes, np.int32), f"axes{axes}")],
        out=node.output[0],
        options=lw.options("Reducer", keepDims=bool(lw.attr(node, "keepdims", 1))),
    )


@lowers("LayerNormalization")
def layer_normalization(lw: Lowering, node) -> None:
    """`LayerNormalization(X, gamma, beta, axis, epsilon)` -> the decomposition in `layer_norm`."""
    if any(lw.used(name) for name in node.output[1:]):
        raise lw.unsupported(node, "its mean or inverse-std-dev outputs are used")
    shape = lw.shape(node.input[0])
    axes = list(range(_axis(lw.attr(node, "axis", -1), len(shape)), len(shape)))
    beta = lw.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    layer_norm(
        lw,
        lw.value(node.input[0]),
        shape,
        axes,
        lw.value(node.input[1]),
        beta,
        lw.attr(node, "epsilon", 1e-5),
        out=node.output[0],
    )


def layer_norm(
    lw: Lowering, x: int, shape, axes: list[int], gamma: int, beta: int | None, epsilon: float, *, out: str
) -> int:
    """Before -> After: `LayerNorm(x)` ->
    `d = SUB(x, MEAN(x)); ADD(MUL(MUL(d, RSQRT(ADD(MEAN(MUL(d, d)), eps))), gamma), beta)`.

    Two-pass (mean, then the mean of squared deviations), as torch and ORT's EmbedLayerNormalization
    compute it, so nothing cancels when the mean is large; TFLite has no layer-norm builtin.
    """
    reduced = tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))
    axes_tensor = lw.const(np.array(axes, np.int32), f"axes{axes}")
    keep = lw.options("Reducer", keepDims=True)

    def step(op, inputs, to_shape=shape, options=None):
        return lw.emit(op, inputs, shape=to_shape, dtype=_FLOAT32, options=options)

    mean = step("MEAN", [x, axes_tensor], reduced, keep)
    centered = step("SUB", [x, mean])
    variance = step("MEAN", [step("MUL", [centered, centered]), axes_tensor], reduced, keep)
    epsilon_tensor = lw.const(np.array(epsilon, np.float32), f"epsilon{epsilon!r}")
    inverse_std = step("RSQRT", [step("ADD", [variance, epsilon_tensor], reduced)], reduced)
    normalized = step("MUL", [centered, inverse_std])
    if beta is None:
        return lw.emit("MUL", [normalized, gamma], out=out)
    return lw.emit("ADD", [step("MUL", [normalized, gamma]), beta], out=out)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
