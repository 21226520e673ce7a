"""TFLite lowerings of the ops the distilled students add: ONNX LSTM (the BiLSTM) and Conv (the CNN).

Before -> After:
- `LSTM(X [seq, batch, input], W, R, B, sequence_lens, h0, c0)` (forward, reverse or bidirectional) ->
  one time-major `UNIDIRECTIONAL_SEQUENCE_LSTM` per direction, gate matrices reordered from ONNX's
  i, o, f, c to TFLite's i, f, c, o and the two ONNX biases summed. A reverse direction runs forward on
  `REVERSE_SEQUENCE(X, sequence_lens)` (each row's real steps reversed, padding left in place), or on
  `REVERSE_V2(X)` without lengths, and its output is reversed back. With `sequence_lens`, outputs past a
  row's length are multiplied by 0 (ONNX Runtime writes zeros there) and `Y_h` is read at each row's last
  real step, so a padded row gives what ONNX Runtime gives. The cell-state output `Y_c` has no TFLite
  counterpart and is refused when read.
- `Conv(X [N, C, L...], W [M, C, k...], B)` (1-D or 2-D, one group) -> `TRANSPOSE` to NHWC (1-D as
  height 1), `PAD` for explicit pads, `CONV_2D(VALID)` with weights [M, kh, kw, C], `TRANSPOSE` back.
- `GlobalMaxPool(X)` -> `REDUCE_MAX(X, spatial axes, keep_dims)`; `MaxPool` (no padding) ->
  `MAX_POOL_2D` between the same two transposes.

TFLite's sequence LSTM keeps its hidden and cell state in variable tensors that survive `Invoke()`
(the next text would start from the last text's final state unless the app calls `ResetVariableTensors`).
So every direction's state tensors are rewritten with the initial state by a `BROADCAST_TO` of a constant
just before the LSTM runs: each invocation starts from h0, c0 as ONNX Runtime does, with no app-side reset.

Int8 (what `quantize_dynamic` leaves), all hybrid: int8 weights in the file, float activations that
LiteRT quantizes at run time, as ONNX Runtime does:
- `DynamicQuantizeLSTM` -> the LSTM above with int8 gate matrices (requantized per gate matrix, see
  `dynamic_quantize_lstm`); LiteRT's hybrid LSTM kernel.
- `DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul -> Add` -> `CONV_2D` with int8 filters.
- `DequantizeLinear(Gather(table u8))` (the quantized embedding) -> `DEQUANTIZE(GATHER(table u8))`.
The head's Gemms stay float: ONNX Runtime's dynamic quantizer has no integer Gemm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.ops.static_int8 import quantization
from edgecompress.backends.tflite.registry import MS_DOMAIN, lowers, lowers_int8
from edgecompress.backends.tflite.writer import opcode, schema

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_FLOAT32 = np.dtype(np.float32)
_INT32 = np.dtype(np.int32)
# ONNX stores the four gate blocks as i, o, f, c; TFLite takes them as i, f, c, o (index into ONNX order).
_ONNX_GATE = {"input": 0, "forget": 2, "cell": 3, "output": 1}
_TFLITE_GATES = ("input", "forget", "cell", "output")
_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")
_LSTM_INPUTS = 24  # the builtin's fixed operand list; absent optional operands are -1


# --- LSTM ------------------------------------------------------------------------------------------------


@lowers("LSTM")
def lstm(lw: Lowering, node) -> None:
    """See the module docstring: one `UNIDIRECTIONAL_SEQUENCE_LSTM` per direction."""
    _check_lstm(lw, node)
    weights, recurrent = lw.constant(node.input[1]), lw.constant(node.input[2])
    if weights is None or recurrent is None:
        raise lw.unsupported(node, "weights W or R that are not constants")
    bias = _lstm_bias(lw, node, weights.shape[0])
    lower_lstm(
        lw,
        node,
        [(_gate_blocks(weights[d]), _gate_blocks(recurrent[d]), bias[d]) for d in range(weights.shape[0])],
        hybrid=False,
    )


@lowers("DynamicQuantizeLSTM", domain=MS_DOMAIN)
def dynamic_quantize_lstm(lw: Lowering, node) -> None:
    """`DynamicQuantizeLSTM(X, Wq [dirs, in, 4H] int8, Rq, B, ..., W scales, W zeros, R scales, R zeros)` ->
    the LSTM above with int8 gate matrices: LiteRT's hybrid kernel quantizes the input and hidden state
    per step (asymmetric) and multiplies in int8. Its weights take one scale per gate matrix, ONNX Runtime
    gives one per gate row: each gate matrix is requantized to the largest of its rows' scales."""
    _check_lstm(lw, node)
    weights, recurrent = lw.constant(node.input[1]), lw.constant(node.input[2])
    w_scale, w_zero, r_scale, r_zero = (lw.constant(name) for name in node.input[8:12])
    if (
        any(v is None for v in (weights, recurrent, w_scale, w_zero, r_scale, r_zero))
        or weights.dtype != np.int8
        or recurrent.dtype != np.int8
        or w_zero.any()
        or r_zero.any()
    ):
        raise lw.unsupported(node, "weights that are not constant symmetric int8")
    directions, rows = weights.shape[0], weights.shape[2]
    w_scale, r_scale = (
        np.broadcast_to(np.asarray(v, np.float32).reshape(directions, -1), (directions, rows))
        for v in (w_scale, r_scale)
    )
    bias = _lstm_bias(lw, node, directions)
    lower_lstm(
        lw,
        node,
        [
            (_int8_gate_blocks(weights[d].T, w_scale[d]), _int8_gate_blocks(recurrent[d].T, r_scale[d]), bias[d])
            for d in range(directions)
        ],
        hybrid=True,
    )


def _lstm_bias(lw: Lowering, node, directions: int) -> np.ndarray:
    hidden = int(lw.attr(node, "hidden_size"))
    bias = lw.constant(node.input[3]) if _input(node, 3) else np.zeros((directions, 8 * hidden), np.float32)
    if bias is None:
        raise lw.unsupported(node, "a bias B that is not a constant")
    return bias


def _gate_blocks(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX's stacked [4H, K] gate matrix -> {TFLite gate name: its [H, K] block}."""
    hidden = matrix.shape[0] // 4
    return {
        gate: np.ascontiguousarray(matrix[_ONNX_GATE[gate] * hidden : (_ONNX_GATE[gate] + 1) * hidden])
        for gate in _TFLITE_GATES
    }


def _int8_gate_blocks(matrix: np.ndarray, row_scales: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """{gate: (int8 [H, K] block, its one scale)}: rows are requantized to the block's largest row scale."""
    blocks, scales = _gate_blocks(matrix), _gate_blocks(row_scales.reshape(-1, 1))
    result = {}
    for gate, block in blocks.items():
        row_scale = scales[gate].astype(np.float64)
        scale = float(row_scale.max())
        values = np.clip(np.round(block * (row_scale / scale)), -127, 127).astype(np.int8)
        result[gate] = (np.ascontiguousarray(values), scale)
    return result


def lower_lstm(lw: Lowering, node, per_direction, *, hybrid: bool) -> None:
    """Write all directions of `node`; `per_direction` holds ({gate: W block}, {gate: R block}, B [8H]) in
    ONNX's bias order, each block a float array or, when `hybrid`, an (int8 array, scale) pair."""
    x = lw.value(node.input[0])
    hidden = int(lw.attr(node, "hidden_size"))
    shape = lw.shape(node.input[0])
    out_shape = (*shape[:2], hidden)
    lengths = lw.value(_input(node, 4)) if _input(node, 4) else None
    ys = []
    for index, reverse in enumerate(_directions(lw, node)):
        source = _reverse_time(lw, x, shape, lengths) if reverse else x
        y = _one_direction(lw, node, index, source, out_shape, per_direction[index], hybrid)
        if reverse:
            y = _reverse_time(lw, y, out_shape, lengths)
        if lengths is not None:
            y = _zero_past_length(lw, y, out_shape, lengths)
        ys.append((y, reverse))
    _write_outputs(lw, node, ys, out_shape, lengths)


def _check_lstm(lw: Lowering, node) -> None:
    """Refuse the variants TFLite's LSTM kernel computes differently, naming the attribute or input."""
    activations = [a.decode() if isinstance(a, bytes) else a for a in lw.attr(node, "activations", [])]
    if activations and activations != list(_DEFAULT_ACTIVATIONS) * len(_directions(lw, node)):
        raise lw.unsupported(node, f"activations {activations} (only the default Sigmoid, Tanh, Tanh is lowered)")
    for attribute in ("clip", "activation_alpha", "activation_beta"):
        if lw.attr(node, attribute) is not None:
            raise lw.unsupported(node, f"attribute '{attribute}' (TFLite's LSTM has no equivalent)")
    if lw.attr(node, "layout", 0):
        raise lw.unsupported(node, "layout=1 (batch-major; ONNX Runtime does not run it either)")
    if lw.attr(node, "input_forget", 0):
        raise lw.unsupported(node, "input_forget=1 (coupled input and forget gates)")
    if _input(node, 7):
        raise lw.unsupported(node, "peephole weights P (not lowered)")
    if len(node.output) > 2 and lw.used(node.output[2]):
        raise lw.unsupported(node, "its cell-state output Y_c is used (TFLite's LSTM does not output it)")
    for name in (_input(node, 5), _input(node, 6)):
        if name and lw.constant(name) is None:
            raise lw.unsupported(node, f"initial state '{name}' that is not a constant")


def _input(node, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _directions(lw: Lowering, node) -> list[bool]:
    """Per direction: does it run backwards in time?"""
    direction = lw.attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _one_direction(lw: Lowering, node, index: int, x: int, out_shape, weights, hybrid: bool) -> int:
    """`UNIDIRECTIONAL_SEQUENCE_LSTM` over the whole (possibly reversed) sequence, from the initial state."""
    w, r, b = weights
    hidden = out_shape[2]
    batch = out_shape[1]
    key = f"{node.name or node.output[0]}/dir{index}"
    operands = [-1] * _LSTM_INPUTS
    operands[0] = x
    for slot, gate in enumerate(_TFLITE_GATES):
        operands[1 + slot] = _weight(lw, w[gate], f"{key}/input_to_{gate}")
        operands[5 + slot] = _weight(lw, r[gate], f"{key}/recurrent_to_{gate}")
        block = slice(_ONNX_GATE[gate] * hidden, (_ONNX_GATE[gate] + 1) * hidden)
        operands[12 + slot] = lw.const((b[block] + b[4 * hidden :][block]).astype(np.float32), f"{key}/{gate}_bias")
    operands[18] = _reset_state(lw, node, 5, index, (batch, hidden), f"{key}/hidden_state")
    operands[19] = _reset_state(lw, node, 6, index, (batch, hidden), f"{key}/cell_state")
    options = lw.options(
        "UnidirectionalSequenceLSTM",
        fusedActivationFunction=schema().ActivationFunctionType.TANH,
        timeMajor=True,
        asymmetricQuantizeInputs=hybrid,
    )
    return lw.emit("UNIDIRECTIONAL_SEQUENCE_LSTM", operands, shape=out_shape, dtype=_FLOAT32, options=options)


def _weight(lw: Lowering, block, key: str) -> int:
    """A float gate block, or an int8 one with its per-tensor scale (what the hybrid kernel reads)."""
    if isinstance(block, tuple):
        values, scale = block
        return lw.const(values, key, quantization=quantization([scale], [0]))
    return lw.const(block, key)


def _reset_state(lw: Lowering, node, input_index: int, direction: int, shape, key: str) -> int:
    """A variable state tensor, overwritten with the initial state (h0 or c0, zeros if absent) on every run."""
    name = _input(node, input_index)
    initial = np.zeros(shape, np.float32) if not name else lw.constant(name)[direction].astype(np.float32)
    state = lw.flat.tensor(key, shape, _FLOAT32)
    lw.flat.tensors[state].isVariable = True
    start = lw.const(np.ascontiguousarray(initial), f"{key}/initial")
    # Written directly, not with `emit`: the output must be this variable tensor, not a new one.
    lw.flat.operator(
        opcode("BROADCAST_TO"), [start, lw.const(np.array(shape, np.int32), f"shape{list(shape)}")], [state]
    )
    return state


def _reverse_time(lw: Lowering, x: int, shape, lengths: int | None) -> int:
    """Each row's first `lengths` steps reversed (`REVERSE_SEQUENCE`), or all steps (`REVERSE_V2`)."""
    if lengths is None:
        return lw.emit("REVERSE_V2", [x, lw.const(np.array([0], np.int32), "axes[0]")], shape=shape, dtype=_FLOAT32)
    return lw.emit(
        "REVERSE_SEQUENCE",
        [x, lengths],
        shape=shape,
        dtype=_FLOAT32,
        options=lw.options("ReverseSequence", seqDim=0, batchDim=1),
    )


def _zero_past_length(lw: Lowering, y: int, shape, lengths: int) -> int:
    """`MUL(y, CAST(LESS(step, lengths)))`: ONNX Runtime's LSTM writes zeros after each row's last step."""
    seq, batch, _ = shape
    steps = lw.const(np.arange(seq, dtype=np.int32).reshape(seq, 1, 1), f"steps[{seq}, 1, 1]")
    per_row = lw.emit(
        "RESHAPE",
        [lengths, lw.const(np.array([1, batch, 1], np.int32), f"shape{[1, batch, 1]}")],
        shape=(1, batch, 1),
        dtype=_INT32,
    )
    real = lw.emit("LESS", [steps, per_row], shape=(seq, batch, 1), dtype=np.bool_)
    return lw.emit(
        "MUL",
        [y, lw.emit("CAST", [real], shape=(seq, batch, 1), dtype=_FLOAT32)],
        shape=shape,
        dtype=_FLOAT32,
        options=lw.options("Mul"),
    )


def _write_outputs(lw: Lowering, node, ys, shape, lengths: int | None) -> None:
    """Y [seq, dirs, batch, H] and Y_h [dirs, batch, H], each written only when something reads it."""
    if lw.used(node.output[0]):
        split = [shape[0], 1, *shape[1:]]
        parts = [
            lw.emit("RESHAPE", [y, lw.const(np.array(split, np.int32), f"shape{split}")], shape=split, dtype=_FLOAT32)
            for y, _ in ys
        ]
        _join(lw, parts, 1, node.output[0])
    if len(node.output) > 1 and lw.used(node.output[1]):
        _join(lw, [_last_step(lw, y, shape, lengths, reverse) for y, reverse in ys], 0, node.output[1])


def _join(lw: Lowering, parts: list[int], axis: int, out: str) -> None:
    if len(parts) == 1:
        shape = list(lw.shape(out))
        lw.emit("RESHAPE", [parts[0], lw.const(np.array(shape, np.int32), f"shape{shape}")], out=out)
        return
    lw.emit("CONCATENATION", parts, out=out, options=lw.options("Concatenation", axis=axis))


def _last_step(lw: Lowering, y: int, shape, lengths: int | None, reverse: bool) -> int:
    """The hidden state a direction ends with, [1, batch, H]: a reverse direction ends at step 0, a forward
    one at its row's last real step, which `REVERSE_SEQUENCE` moves to step 0."""
    if not reverse and lengths is not None:
        y = _reverse_time(lw, y, shape, lengths)
    begin = [shape[0] - 1 if not reverse and lengths is None else 0, 0, 0]
    size = [1, *shape[1:]]
    return lw.emit(
        "SLICE",
        [y, lw.const(np.array(begin, np.int32), f"begin{begin}"), lw.const(np.array(size, np.int32), f"size{size}")],
        shape=size,
        dtype=_FLOAT32,
    )


# --- Conv and max pooling --------------------------------------------------------------------------------


@lowers("Conv")
def conv(lw: Lowering, node) -> None:
    """See the module docstring: `TRANSPOSE -> [PAD] -> CONV_2D(VALID) -> TRANSPOSE`."""
    weights = lw.constant(node.input[1])
    if weights is None:
        raise lw.unsupported(node, "a weight W that is not a constant")
    bias = lw.constant(node.input[2]) if _input(node, 2) else np.zeros(weights.shape[0], np.float32)
    if bias is None:
        raise lw.unsupported(node, "a bias B that is not a constant")
    lower_conv(
        lw,
        node,
        node.input[0],
        lw.const(_as_ohwi(weights), f"{node.input[1]}/ohwi"),
        lw.const(bias.astype(np.float32), f"{node.input[1]}/bias"),
        out=node.output[0],
    )


def lower_conv(lw: Lowering, node, x: str, filters: int, bias: int, *, out: str) -> None:
    """CONV_2D on the float value `x` seen as NHWC, writing the ONNX value `out` in NC(H)W. With int8
    `filters` LiteRT runs its hybrid kernel (the input quantized per run, int8 products, float output)."""
    _check_window(lw, node, "group")
    shape = lw.shape(x)
    pads, strides, dilations = _window(lw, node, len(shape) - 2)
    nhwc = _pad(lw, _to_nhwc(lw, lw.value(x), shape), pads)
    options = lw.options(
        "Conv2D",
        padding=_valid(),
        strideH=strides[0],
        strideW=strides[1],
        dilationHFactor=dilations[0],
        dilationWFactor=dilations[1],
    )
    y = lw.emit("CONV_2D", [nhwc, filters, bias], shape=_nhwc_shape(lw.shape(out)), dtype=_FLOAT32, options=options)
    _from_nhwc(lw, y, out)


@lowers("GlobalMaxPool")
def global_max_pool(lw: Lowering, node) -> None:
    """`GlobalMaxPool(X [N, C, spatial...])` -> `REDUCE_MAX(X, spatial axes, keep_dims)`."""
    axes = list(range(2, len(lw.shape(node.input[0]))))
    lw.emit(
        "REDUCE_MAX",
        [lw.value(node.input[0]), lw.const(np.array(axes, np.int32), f"axes{axes}")],
        out=node.output[0],
        options=lw.options("Reducer", keepDims=True),
    )


@lowers("MaxPool")
def max_pool(lw: Lowering, node) -> None:
    """`MaxPool(X)` (1-D or 2-D, no padding) -> `TRANSPOSE -> MAX_POOL_2D(VALID) -> TRANSPOSE`."""
    _check_window(lw, node, "ceil_mode", "storage_order")
    if len(node.output) > 1 and lw.used(node.output[1]):
        raise lw.unsupported(node, "its Indices output is used")
    shape = lw.shape(node.input[0])
    pads, strides, dilations = _window(lw, node, len(shape) - 2)
    if any(before or after for before, after in pads) or dilations != [1, 1]:
        raise lw.unsupported(node, "padding or dilation (MAX_POOL_2D has neither in this lowering)")
    kernel = list(lw.attr(node, "kernel_shape"))
    kernel = [1, *kernel] if len(kernel) == 1 else kernel
    options = lw.options(
        "Pool2D",
        padding=_valid(),
        strideH=strides[0],
        strideW=strides[1],
        filterHeight=kernel[0],
        filterWidth=kernel[1],
    )
    y = lw.emit(
        "MAX_POOL_2D",
        [_to_nhwc(lw, lw.value(node.input[0]), shape)],
        shape=_nhwc_shape(lw.shape(node.output[0])),
        dtype=_FLOAT32,
        options=options,
    )
    _from_nhwc(lw, y, node.output[0])


def _as_ohwi(weights: np.ndarray) -> np.ndarray:
    """ONNX [M, C, k] or [M, C, kh, kw] -> TFLite's [M, kh, kw, C] (1-D as height 1)."""
    if weights.ndim == 3:
        weights = weights[:, :, None, :]
    return np.ascontiguousarray(weights.transpose(0, 2, 3, 1))


def _check_window(lw: Lowering, node, *attributes: str) -> None:
    rank = len(lw.shape(node.input[0]))
    if rank not in (3, 4):
        raise lw.unsupported(node, f"a rank-{rank} input (only 1-D and 2-D windows are lowered)")
    auto_pad = lw.attr(node, "auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
        raise lw.unsupported(node, f"auto_pad {auto_pad!r} (only explicit pads are lowered)")
    defaults = {"group": 1, "ceil_mode": 0, "storage_order": 0}
    for attribute in attributes:
        if lw.attr(node, attribute, defaults[attribute]) != defaults[attribute]:
            raise lw.unsupported(
                node, f"{attribute}={lw.attr(node, attribute)} (only {defaults[attribute]} is lowered)"
            )


def _window(lw: Lowering, node, spatial: int):
    """(pads [(top, bottom), (left, right)], strides [h, w], dilations [h, w]), a 1-D window as height 1."""
    pads = list(lw.attr(node, "pads", [0] * 2 * spatial))
    strides = list(lw.attr(node, "strides", [1] * spatial))
    dilations = list(lw.attr(node, "dilations", [1] * spatial))
    if spatial == 1:
        return [(0, 0), (pads[0], pads[1])], [1, *strides], [1, *dilations]
    return [(pads[0], pads[2]), (pads[1], pads[3])], strides, dilations


def _valid() -> int:
    return schema().Padding.VALID


def _nhwc_shape(nchw) -> list[int]:
    """[N, C, L] -> [N, 1, L, C]; [N, C, H, W] -> [N, H, W, C]."""
    return [nchw[0], 1, nchw[2], nchw[1]] if len(nchw) == 3 else [nchw[0], nchw[2], nchw[3], nchw[1]]


def _to_nhwc(lw: Lowering, x: int, shape) -> int:
    """TRANSPOSE NC(H)W -> N(H)WC, then a free RESHAPE adding height 1 for a 1-D input."""
    perm = [0, 2, 1] if len(shape) == 3 else [0, 2, 3, 1]
    moved = lw.emit(
        "TRANSPOSE",
        [x, lw.const(np.array(perm, np.int32), f"perm{perm}")],
        shape=[shape[i] for i in perm],
        dtype=_FLOAT32,
        options=lw.options("Transpose"),
    )
    if len(shape) == 4:
        return moved
    target = _nhwc_shape(shape)
    return lw.emit(
        "RESHAPE", [moved, lw.const(np.array(target, np.int32), f"shape{target}")], shape=target, dtype=_FLOAT32
    )


def _pad(lw: Lowering, x: int, pads) -> int:
    """Zero padding of the NHWC tensor's height and width: CONV_2D itself pads only SAME or VALID."""
    if not any(before or after for before, after in pads):
        return x
    shape = lw.flat.tensors[x].shape
    widths = np.array([(0, 0), *pads, (0, 0)], np.int32)
    padded = [dim + int(widths[axis].sum()) for axis, dim in enumerate(shape)]
    return lw.emit("PAD", [x, lw.const(widths, f"pads{widths.tolist()}")], shape=padded, dtype=_FLOAT32)


def _from_nhwc(lw: Lowering, y: int, out: str) -> None:
    """The NHWC result back to the ONNX value's NC(H)W layout."""
    shape = list(lw.shape(out))
    if len(shape) == 3:
        y = lw.emit(
            "RESHAPE",
            [y, lw.const(np.array([shape[0], shape[2], shape[1]], np.int32), f"shape{[shape[0], shape[2], shape[1]]}")],
            shape=[shape[0], shape[2], shape[1]],
            dtype=_FLOAT32,
        )
    perm = [0, 2, 1] if len(shape) == 3 else [0, 3, 1, 2]
    lw.emit(
        "TRANSPOSE", [y, lw.const(np.array(perm, np.int32), f"perm{perm}")], out=out, options=lw.options("Transpose")
    )


# --- int8 forms ONNX Runtime's dynamic quantizer writes for the students ---------------------------------
#
# Both patterns start at ops that have a float (or QDQ) lowering elsewhere (DequantizeLinear,
# DynamicQuantizeLinear), so they are int8 lowerings: tried first, and returning False leaves the node to
# the registered lowering.


def _table_rows(lw: Lowering, node):
    """(Gather node, scale, zero point) when `node` dequantizes rows gathered from a constant 8-bit table."""
    gather = lw.producers.get(node.input[0])
    if gather is None or gather.op_type != "Gather":
        return None
    table = lw.constant(gather.input[0])
    scale, zero = lw.constant(node.input[1]), lw.constant(_input(node, 2)) if _input(node, 2) else None
    if (
        table is None
        or table.dtype not in (np.uint8, np.int8)
        or scale is None
        or scale.size != 1
        or zero is None
        or zero.size != 1
    ):
        return None
    return gather, float(scale.reshape(())), int(zero.reshape(()))


@lowers_int8("DequantizeLinear")
def dequantize_table_rows(lw: Lowering, node) -> bool:
    """`DequantizeLinear(Gather(table u8, ids), s, z)` -> `DEQUANTIZE(GATHER(table u8, ids))`: the table stays
    8-bit in the file (the quantized embedding), only the looked-up rows become float."""
    found = _table_rows(lw, node)
    if found is None:
        return False
    gather, scale, zero = found
    params = quantization([scale], [zero])
    for name in (gather.input[0], node.input[0]):  # the same (scale, zero) on the table and on its rows
        lw.flat.tensors[lw.value(name)].quantization = params
    lw.emit("DEQUANTIZE", [lw.value(node.input[0])], out=node.output[0])
    return True


def _conv_integer_groups(lw: Lowering, node):
    """When every reader of a DynamicQuantizeLinear is one of ONNX Runtime's dynamic int8 convolutions
    `Mul(Cast(ConvInteger(Xq, Wq, zx, zw)), Mul(sx, sw)) [+ bias]`, one dict per convolution; else None."""
    quantized, scale, zero = node.output
    groups = []
    for conv_node in lw.readers.get(quantized, []):
        group = _conv_integer_group(lw, conv_node, scale)
        if group is None:
            return None
        groups.append(group)
    owned = {id(n) for group in groups for n in group["nodes"]}
    readers = lw.readers.get(scale, []) + lw.readers.get(zero, [])
    if not groups or any(id(reader) not in owned for reader in readers):
        return None
    return groups


def _conv_integer_group(lw: Lowering, conv_node, scale: str):
    if conv_node.op_type != "ConvInteger" or lw.constant(conv_node.input[1]) is None:
        return None
    cast = lw.sole_reader(conv_node.output[0])
    rescale = lw.sole_reader(cast.output[0]) if cast is not None and cast.op_type == "Cast" else None
    if rescale is None or rescale.op_type != "Mul":
        return None
    scales = lw.producers.get(next((n for n in rescale.input if n != cast.output[0]), ""))
    if scales is None or scales.op_type != "Mul" or scale not in scales.input:
        return None
    weight_scale = lw.constant(next(n for n in scales.input if n != scale))
    add = lw.sole_reader(rescale.output[0])
    bias = None
    if add is not None and add.op_type == "Add":
        bias = _flat_constant(lw, next((n for n in add.input if n != rescale.output[0]), ""))
    if weight_scale is None or (add is not None and add.op_type == "Add" and bias is None):
        return None
    nodes = [conv_node, cast, rescale, scales] + ([add] if bias is not None else [])
    return {
        "conv": conv_node,
        "weight_scale": weight_scale,
        "bias": bias,
        "nodes": nodes,
        "out": (add if bias is not None else rescale).output[0],
    }


def _flat_constant(lw: Lowering, name: str) -> np.ndarray | None:
    """A constant's values, also when it is a Reshape of a constant not folded yet (the quantizer's bias)."""
    value = lw.constant(name)
    producer = lw.producers.get(name)
    if value is None and producer is not None and producer.op_type == "Reshape":
        value = lw.constant(producer.input[0])
    return None if value is None else value.reshape(-1)


@lowers_int8("DynamicQuantizeLinear")
def dynamic_int8_convs(lw: Lowering, node) -> bool:
    """`DynamicQuantizeLinear(X)` read only by dynamic int8 convolutions -> one hybrid `CONV_2D(X, Wq int8)`
    per convolution, writing the value after its rescale and bias add: LiteRT quantizes X at run time as
    ONNX Runtime does, with the same int8 weights and scales (per tensor or per output channel)."""
    groups = _conv_integer_groups(lw, node)
    if groups is None:
        return False
    for group in groups:
        conv_node = group["conv"]
        weights = lw.constant(conv_node.input[1])
        zero = lw.constant(_input(conv_node, 3)) if _input(conv_node, 3) else np.zeros(1, np.int8)
        if weights.dtype != np.int8 or zero is None or zero.any():
            raise lw.unsupported(conv_node, "weights that are not constant symmetric int8")
        scales = np.broadcast_to(group["weight_scale"].reshape(-1), (weights.shape[0],)).astype(np.float32)
        filters = lw.const(
            _as_ohwi(weights), f"{conv_node.input[1]}/ohwi", quantization=quantization(scales, [0] * len(scales))
        )
        bias = group["bias"] if group["bias"] is not None else np.zeros(weights.shape[0], np.float32)
        bias = lw.const(bias.reshape(-1).astype(np.float32), f"{group['out']}/conv_bias")
        lower_conv(lw, conv_node, node.input[0], filters, bias, out=group["out"])
        for absorbed in group["nodes"]:
            lw.absorb(absorbed)
    return True
