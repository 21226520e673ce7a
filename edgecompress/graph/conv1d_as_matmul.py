"""Rewrite 1-D convolutions as im2col + MatMul, the form the dynamic int8 kernels run fast.

Before -> After (X [B, C, T], constant W [F, C, k], pads (p0, p1), stride 1, dilation 1, group 1):
  `Conv(X, W, b)` -> `Transpose(Add(MatMul(Concat_j(Slice(Xp, j, j + T')), W2), b), [0, 2, 1])`, where
  Xp = `Concat(zeros [B, p0, C], Transpose(X, [0, 2, 1]), zeros [B, p1, C])` along time, the k slices
  shifted by j = 0..k-1 along time are concatenated along channels into windows [B, T', k*C], and
  W2 [k*C, F] holds W tap-major (W2[j*C + c, f] = W[f, c, j]); T' = T + p0 + p1 - k + 1.
- A constant Slice along time that is the Conv's only reader (the CNN student keeps the T windows that
  start on a token) is absorbed: only the kept windows are computed, and zero rows no kept window reads
  are not written.
- Convs of one input whose windows start on the same row and are as many (the CNN student's widths
  2, 3, 4, 5) are one MatMul: windows of the largest width, the narrower Convs' weights padded with zero
  taps, and the product split along channels by Slice. Exact (a zero tap adds 0); it costs the zero
  taps' multiply-adds (+43% for widths 2-5) and their int8 bytes (+49 KB on the CNN student).
Exact up to float summation order; `ensures` compares the outputs before and after.

Why, measured (onnxruntime 1.31.1 and LiteRT 2.3.0 on x86-64, one thread, the CNN student of
Rotten Tomatoes at seq_len 64; medians of 7 interleaved rounds of 200 runs, runtimes/*_runner.py):
`quantize_dynamic` turns a Conv into `DynamicQuantizeLinear -> ConvInteger`, and ORT's ConvInteger is
slower than its float Conv: int8 0.62 ms against float 0.24 ms. A MatMul by a constant becomes ORT's
fused `DynamicQuantizeMatMul` instead, and a hybrid int8 FULLY_CONNECTED in the TFLite lowering:
                          ORT int8    LiteRT int8
  ConvInteger / CONV_2D   0.62 ms     0.061 ms
  one MatMul per Conv     0.13 ms     0.090 ms   (each FULLY_CONNECTED then paid its own range guards)
  one MatMul, 4 Convs     0.115 ms    0.063 ms   (what this pass writes)
The TFLite lowering has since dropped those guards (a hybrid FULLY_CONNECTED now quantizes per row, see
backends/tflite_dynamic.py): at seq_len 128 the shared MatMul runs at 1.15x / 1.25x the speed of
litert-torch's dynamic int8 CNN (1 / 2 threads); its zero taps keep the file 2.6% larger (1.61 vs 1.57 MB).
Sharing only the windows (one MatMul per Conv on a prefix of the widest windows) did not help (ORT 0.13,
LiteRT 0.087 ms). Accuracy on the 1276 test texts: 80.09% with ConvInteger, 80.02% after (the float
model: 80.25%); the LiteRT artifact agrees with ORT on every prediction either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgecompress.errors import InternalError
from edgecompress.graph._graph_edit import (
    all_names,
    check_feeds,
    constant,
    drop_unused,
    fresh,
    reader_indices,
    static_shapes,
)
from edgecompress.graph._quant_common import copy_model, rounding_diff
from edgecompress.onnx_facts import node_attribute
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# Slice takes its starts and ends as inputs from opset 10 on.
_MIN_OPSET = 10


@dataclass
class _Rewrite:
    """One Conv to rewrite: the output positions [start, stop) it must compute, written to `out`. `at` and
    `absorbed_at` are the Conv's and the Slice's positions in graph.node, by which the rewrite finds them."""

    conv: object
    at: int
    x_shape: tuple[int, int, int]
    weight: np.ndarray
    start: int
    stop: int
    out: str
    absorbed: object = None  # the Slice node whose work the rewrite does, or None
    absorbed_at: int | None = None
    pads: tuple[int, int] = (0, 0)
    bias_value: np.ndarray | None = None

    @property
    def width(self) -> int:
        return self.weight.shape[2]

    def bias(self) -> np.ndarray:
        """Its bias [F], zeros when the Conv has none."""
        return self.bias_value if self.bias_value is not None else np.zeros(self.weight.shape[0], np.float32)

    def rows(self) -> tuple[int, int]:
        """The rows of X [first, end) its windows read, in X's own time coordinates (may reach past X)."""
        return self.start - self.pads[0], self.stop + self.width - 1 - self.pads[0]


@register_pass
@dataclass(frozen=True)
class Conv1dAsMatmul(Pass):
    name = "conv1d_as_matmul"
    stage = "graph"
    in_place = False  # `ensures` compares the outputs of the graph it was given with the new one
    runs_after = ("fix_shapes",)  # it rewrites Convs whose input has a fixed rank-3 shape
    runs_before = ("quantize_dynamic",)  # which would make each Conv a slow ConvInteger

    def requires(self, model, ctx: PassContext) -> None:
        rewrites, left = plan(model)
        if rewrites:
            return
        if not left:
            raise PassSkipped("no 1-D Conv (a Conv whose weight is a constant [F, C, k])")
        raise PassSkipped("no 1-D Conv it can rewrite: " + "; ".join(f"'{n}': {why}" for n, why in left.items()))

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnx import numpy_helper

        result = copy_model(model)
        rewrites, left = plan(result)
        graph = result.graph
        names = all_names(result)
        by_input: dict[str, list[_Rewrite]] = {}
        for rewrite in rewrites:
            by_input.setdefault(rewrite.conv.input[0], []).append(rewrite)

        new_inits: list[onnx.TensorProto] = []
        inserted: dict[int, list[onnx.NodeProto]] = {}
        removed: set[int] = set()
        notes: list[str] = []
        for x, group in by_input.items():
            base, base_first, nodes = _padded_time_major(x, group, names, new_inits)
            inserted.setdefault(group[0].at, []).extend(nodes)  # group is in graph order
            stacks: dict[tuple[int, int], list[_Rewrite]] = {}
            for rewrite in group:
                stacks.setdefault((rewrite.rows()[0], rewrite.stop - rewrite.start), []).append(rewrite)
            for stack in stacks.values():
                first = min(stack, key=lambda r: r.at)
                inserted.setdefault(first.at, []).extend(_matmul_nodes(stack, base, base_first, names, new_inits))
                removed.update(at for r in stack for at in (r.at, r.absorbed_at) if at is not None)
                notes.append(_describe(stack))

        rebuilt, orphans = [], set()
        for index, node in enumerate(graph.node):
            rebuilt.extend(inserted.get(index, []))
            if index in removed:
                orphans.update([*node.input, *node.output])
            else:
                rebuilt.append(node)
        del graph.node[:]
        graph.node.extend(rebuilt)
        graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in new_inits)
        dropped = drop_unused(result, orphans)
        for name, why in left.items():
            log.info("conv1d_as_matmul left Conv '%s' alone: %s", name, why)
            notes.append(f"left alone: Conv '{name}': {why}")
        stats = {
            "rewritten": [_label(r.conv) for r in rewrites],
            "matmuls": sum(n.op_type == "MatMul" for nodes in inserted.values() for n in nodes),
            "absorbed_slices": sum(r.absorbed is not None for r in rewrites),
            "left_alone": dict(left),
            "dropped": dropped,
        }
        return PassResult(result, notes, stats)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        rewritten = set(result.stats["rewritten"])
        remaining = [_label(n) for n in result.model.graph.node if n.op_type == "Conv" and _label(n) in rewritten]
        if remaining:
            raise InternalError(f"conv1d_as_matmul left rewritten Conv nodes in the graph: {remaining}")
        feeds, source = check_feeds(before, ctx)
        diff, allowed = rounding_diff(before, result, feeds, source)
        if diff > allowed:
            raise InternalError(
                f"conv1d_as_matmul changed the outputs by {diff:.3g} > {allowed:.3g} on {source} "
                "rows; remove the 'conv1d_as_matmul' pass from the recipe"
            )


# ---- what to rewrite ----------------------------------------------------------------------------------------


def plan(model) -> tuple[list[_Rewrite], dict[str, str]]:
    """(the Convs this pass rewrites, {Conv: why it is left alone} for the other 1-D and 2-D Convs)."""
    from onnx import numpy_helper

    convs = [
        (at, node)
        for at, node in enumerate(model.graph.node)
        if node.op_type == "Conv" and node.domain in ("", "ai.onnx")
    ]
    if not convs:
        return [], {}
    inits = {init.name: init for init in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    by_input = reader_indices(model)
    outputs = {value.name for value in model.graph.output}
    shapes = None
    rewrites, left = [], {}
    for at, node in convs:
        why = _unsupported(node, inits, opset)
        if why is None and shapes is None:
            shapes = static_shapes(model)
        x_shape = None if why is not None else shapes.get(node.input[0])
        if why is None and (x_shape is None or len(x_shape) != 3):
            why = f"input '{node.input[0]}' has no fixed rank-3 shape (run after fix_shapes)"
        if why is not None:
            left[_label(node)] = why
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.shape[1] != x_shape[1]:
            left[_label(node)] = f"weight has {weight.shape[1]} input channels, input has {x_shape[1]}"
            continue
        pads = tuple(int(p) for p in node_attribute(node, "pads", [0, 0]))
        steps = x_shape[2] + pads[0] + pads[1] - weight.shape[2] + 1
        if steps < 1:
            left[_label(node)] = f"kernel width {weight.shape[2]} is longer than its padded input"
            continue
        bias = numpy_helper.to_array(inits[_bias_name(node)]) if _bias_name(node) else None
        rewrite = _Rewrite(node, at, tuple(x_shape), weight, 0, steps, node.output[0], pads=pads, bias_value=bias)
        kept = _absorbable_slice(model, node, steps, by_input, outputs)
        if kept is not None:
            rewrite.absorbed_at, rewrite.absorbed, (rewrite.start, rewrite.stop) = kept
            rewrite.out = rewrite.absorbed.output[0]
        rewrites.append(rewrite)
    return rewrites, left


def _unsupported(node, inits: dict, opset: int) -> str | None:
    """Why this Conv is not rewritten, or None when its attributes and weights allow it."""
    import onnx

    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return "weight W is not a constant initializer"
    if len(weight.dims) != 3:
        return f"a {len(weight.dims) - 2}-D convolution (only 1-D is rewritten)"
    if weight.data_type != onnx.TensorProto.FLOAT:
        return f"weight W is {onnx.TensorProto.DataType.Name(weight.data_type)}, not FLOAT"
    if _bias_name(node) and _bias_name(node) not in inits:
        return "bias B is not a constant initializer"
    auto_pad = node_attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad != "NOTSET":
        return f"auto_pad {auto_pad} (only explicit pads are rewritten)"
    for attribute, want in (("group", 1), ("strides", [1]), ("dilations", [1])):
        value = node_attribute(node, attribute, want)
        if value != want:
            return f"{attribute}={value} (only {want} is rewritten)"
    if any(p < 0 for p in node_attribute(node, "pads", [0, 0])):
        return f"negative pads {node_attribute(node, 'pads')}"
    if opset < _MIN_OPSET:
        return f"opset {opset} (Slice takes its bounds as inputs from opset {_MIN_OPSET})"
    return None


def _absorbable_slice(model, conv, steps: int, readers: dict, outputs: set):
    """(its position, Slice, (start, stop)) when the Conv's only reader keeps a constant range of its outputs
    along time with step 1; None otherwise."""
    if conv.output[0] in outputs or len(readers.get(conv.output[0], [])) != 1:
        return None
    at = readers[conv.output[0]][0]
    node = model.graph.node[at]
    if node.op_type != "Slice" or node.input[0] != conv.output[0] or len(node.input) < 4:
        return None
    values = [constant(model, name) for name in node.input[1:5]]
    starts, ends, axes = values[:3]
    steps_given = values[3] if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps_given)):
        return None
    if int(axes.reshape(())) not in (2, -1) or int(steps_given.reshape(())) != 1:
        return None
    start, stop, _ = slice(int(starts.reshape(())), int(ends.reshape(())), 1).indices(steps)
    return (at, node, (start, stop)) if stop > start else None


# ---- the rewrite --------------------------------------------------------------------------------------------


def _padded_time_major(x: str, group: list[_Rewrite], names: set, new_inits: list) -> tuple[str, int, list]:
    """X [B, C, T] as [B, rows, C] with the zero rows the group's windows read: (value, X row of its first
    row, nodes). One Transpose, and one Concat when any window reaches past X."""
    from onnx import helper

    batch, channels, length = group[0].x_shape
    first = min(0, min(r.rows()[0] for r in group))
    end = max(length, max(r.rows()[1] for r in group))
    stem = fresh(f"{x}/time_major", names)
    nodes = [helper.make_node("Transpose", [x], [stem], name=stem, perm=[0, 2, 1])]
    if first == 0 and end == length:
        return stem, 0, nodes
    parts = []
    for rows, where in ((-first, "before"), (None, None), (end - length, "after")):
        if rows is None:
            parts.append(stem)
        elif rows:
            zeros = fresh(f"{x}/zeros_{where}", names)
            new_inits.append((zeros, np.zeros((batch, rows, channels), np.float32)))
            parts.append(zeros)
    padded = fresh(f"{x}/time_major_padded", names)
    nodes.append(helper.make_node("Concat", parts, [padded], name=padded, axis=1))
    return padded, first, nodes


def _matmul_nodes(stack: list[_Rewrite], base: str, base_first: int, names: set, new_inits: list) -> list:
    """Windows of `base` as wide as the stack's widest Conv -> one MatMul by the Convs' tap-major weights side
    by side [+ biases] -> back to [B, F, steps], split per Conv along channels when there are several."""
    from onnx import helper

    stem = _label(stack[0].conv)
    width = max(r.width for r in stack)
    count = stack[0].stop - stack[0].start
    offset = stack[0].rows()[0] - base_first

    def const(name: str, value: np.ndarray) -> str:
        name = fresh(name, names)
        new_inits.append((name, value))
        return name

    nodes, taps = [], []
    axis = const(f"{stem}/im2col/axis", np.array([1], np.int64))
    for tap in range(width):
        bounds = [
            const(f"{stem}/im2col/{what}_{tap}", np.array([offset + tap + shift], np.int64))
            for what, shift in (("start", 0), ("end", count))
        ]
        out = fresh(f"{stem}/im2col/tap_{tap}", names)
        nodes.append(helper.make_node("Slice", [base, *bounds, axis], [out], name=out))
        taps.append(out)
    windows = fresh(f"{stem}/im2col/windows", names)
    nodes.append(helper.make_node("Concat", taps, [windows], name=windows, axis=2))
    weight = np.concatenate([_tap_major(r.weight, width) for r in stack], axis=1)
    product = fresh(f"{stem}/MatMul", names)
    nodes.append(
        helper.make_node(
            "MatMul", [windows, const(f"{stack[0].conv.input[1]}/im2col", weight)], [product], name=product
        )
    )
    if any(_bias_name(r.conv) for r in stack):
        bias = (
            _bias_name(stack[0].conv)
            if len(stack) == 1
            else const(f"{stem}/im2col/bias", np.concatenate([r.bias() for r in stack]))
        )
        biased = fresh(f"{stem}/Add", names)
        nodes.append(helper.make_node("Add", [product, bias], [biased], name=biased))
        product = biased
    if len(stack) == 1:
        nodes.append(
            helper.make_node(
                "Transpose", [product], [stack[0].out], perm=[0, 2, 1], name=fresh(f"{stem}/channels_first", names)
            )
        )
        return nodes
    channels_first = fresh(f"{stem}/channels_first", names)
    nodes.append(helper.make_node("Transpose", [product], [channels_first], name=channels_first, perm=[0, 2, 1]))
    split_axis, done = const(f"{stem}/split/axis", np.array([1], np.int64)), 0
    for r in stack:
        filters = r.weight.shape[0]
        bounds = [
            const(f"{_label(r.conv)}/split/{what}", np.array([value], np.int64))
            for what, value in (("start", done), ("end", done + filters))
        ]
        nodes.append(
            helper.make_node(
                "Slice", [channels_first, *bounds, split_axis], [r.out], name=fresh(f"{_label(r.conv)}/split", names)
            )
        )
        done += filters
    return nodes


def _tap_major(weight: np.ndarray, width: int) -> np.ndarray:
    """W [F, C, k] -> [width*C, F] with row j*C + c = W[:, c, j], taps k..width-1 zero."""
    filters, channels, k = weight.shape
    padded = np.zeros((filters, channels, width), np.float32)
    padded[:, :, :k] = weight
    return np.ascontiguousarray(padded.transpose(2, 1, 0).reshape(width * channels, filters))


def _describe(stack: list[_Rewrite]) -> str:
    width, channels = max(r.width for r in stack), stack[0].weight.shape[1]
    count, filters = stack[0].stop - stack[0].start, sum(r.weight.shape[0] for r in stack)
    convs = ", ".join(
        f"'{_label(r.conv)}' (width {r.width}, {r.weight.shape[0]} filters, pads {list(r.pads)}"
        + (f", Slice '{r.absorbed.name}' absorbed)" if r.absorbed is not None else ")")
        for r in stack
    )
    note = (
        f"Conv {convs} -> im2col [{stack[0].x_shape[0]}, {count}, {width * channels}] x MatMul "
        f"[{width * channels}, {filters}]"
    )
    exact = sum(r.width * r.weight.shape[0] for r in stack)
    if width * filters > exact:
        note += f"; zero taps add {width * filters / exact - 1:.0%} multiply-adds"
    return note


# ---- helpers ------------------------------------------------------------------------------------------------


def _bias_name(conv) -> str:
    return conv.input[2] if len(conv.input) > 2 else ""


def _label(node) -> str:
    return node.name or node.output[0]
