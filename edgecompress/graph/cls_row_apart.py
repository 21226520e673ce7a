"""Run each feed-forward block on row 0 ([CLS]) apart from the other rows, so that run-time int8 ranges fit.

Before -> After (X [B, S, K] with S fixed, every FFN: a MatMul by a constant, row-wise ops, a MatMul by a
constant, e.g. BERT's `MatMul(X, W1) -> BiasGelu(b1) -> MatMul(W2)`):
  `FFN(X)` -> `Concat(FFN(Slice(X, rows 0:1)), FFN(Slice(X, rows 1:S)), axis 1)`, both copies reading the
  same weights. Exact in float (each row's FFN is computed from that row alone); `ensures` compares the
  outputs before and after.

Why, measured on the Rotten Tomatoes MiniLM teacher (1,276 test texts, seq_len 128): BERT's [CLS] row
carries massive activations into the FFN (median max |x| per row at the first FFN MatMul's input: 28
for [CLS] against 3-6 for text tokens; at the second's: 13-24 against 2-3 in layers 0-3;
`tools/probe_activation_quant.py` prints the table). ONNX Runtime's dynamic int8 quantizes each
activation per tensor, so [CLS] alone made the step ~8x coarser for every other token. With the FFN
split, `quantize_dynamic` quantizes row 0 and the rest on their own ranges:
  ORT dynamic int8                 same label as float   accuracy   time (1 / 2 threads)
  per tensor                       98.04%                83.62%     1.00 / 1.00
  per tensor, [CLS] row apart      99.29%                83.62%     1.03 / 1.06
It is also what lets the `.tflite` use LiteRT's per-row quantization in the FFN and still compute what
the ONNX Runtime file computes (backends/tflite_dynamic.py): the TFLite legalisation joins the two
copies back into one FFN (graph/rejoin_row_slices.py), since per-row quantization of rows 1:S is the
same whether row 0 is beside them or not.

Row 0 is [CLS] for BERT-family encoders; a graph without such a block (the BiLSTM and CNN students,
whose classifiers read a pooled [B, F]) is left alone.

Only the blocks where row 0 does widen the range are split, measured on the calibration texts: at either
MatMul input of the block, the median over texts of span(row 0) / span(text rows 1:n) must reach
`min_span_ratio` (span = max(0, max x) - min(0, min x), ONNX Runtime's DynamicQuantizeLinear range). A
split buys nothing where [CLS] sits inside the other rows' range, and costs a Slice, a Concat and a
second copy of every op of the block (in time and file size). Measured by this pass on the built-in
sentences: the MiniLM teacher's six blocks have ratios 4.34, 5.02, 4.40, 3.60, 1.47 and 1.29, so all six
stay split; the tiny random-initialised models of every family (the family benchmark's) have 0.57-1.07,
so none is split; 1.2 lies between. On the tiny MobileBERT (2 layers x 4 stacked FFNs) the eight splits
had made the int8 file 343 KB instead of 289 KB and ~12% slower in ONNX Runtime (seq 128, 1 thread, on
a loaded machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompress.errors import InternalError
from edgecompress.graph._graph_edit import (
    all_names,
    check_feeds,
    constant,
    drop_unused,
    fresh,
    known_shapes,
    reader_indices,
)
from edgecompress.graph._quant_common import (
    calibration_rows,
    copy_model,
    graph_input_names,
    rounding_diff,
    with_contrib_shapes,
)
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

# Ops that compute each row of their output from the same row of their data input (other inputs constant).
ROW_WISE_OPS = {
    ("", "Relu"),
    ("", "Gelu"),
    ("com.microsoft", "Gelu"),
    ("com.microsoft", "BiasGelu"),
    ("com.microsoft", "FastGelu"),
    ("", "Add"),
    ("", "Mul"),
}
BRANCHES = ("cls_row", "other_rows")


@dataclass(frozen=True)
class FeedForward:
    """MatMul by a constant, row-wise ops, MatMul by a constant: `nodes` in order, reading [B, rows, K];
    `at` their positions in graph.node, by which the rewrite finds them."""

    nodes: tuple
    rows: int | str  # the row count, or the name of a symbolic sequence axis (a graph serving several lengths)
    at: tuple[int, ...]

    @property
    def x(self) -> str:
        return self.nodes[0].input[0]

    @property
    def out(self) -> str:
        return self.nodes[-1].output[0]

    @property
    def label(self) -> str:
        return self.nodes[0].name or self.nodes[0].output[0]


@register_pass
@dataclass(frozen=True)
class ClsRowApart(Pass):
    name = "cls_row_apart"
    stage = "graph"
    in_place = False  # `ensures` compares the outputs of the graph it was given with the new one
    runs_after = ("fix_shapes",)  # it splits FFN inputs of shape [batch, rows, features], batch fixed
    runs_before = ("quantize_dynamic",)  # whose run-time ranges the split is for
    # A block is split when row 0's range is at least this many times the other rows' at one of its MatMul
    # inputs (median over the calibration texts); without calibration texts every block is split.
    min_span_ratio: float = 1.2
    calibration_rows: int = 32

    def requires(self, model, ctx: PassContext) -> None:
        if not feed_forwards(model):
            raise PassSkipped(
                "no feed-forward block (MatMul by a constant, row-wise ops, MatMul by a constant) "
                "on a [batch, rows, features] input with at least 2 rows (or a symbolic sequence axis)"
            )

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnx import numpy_helper

        result = copy_model(model)
        blocks, measured = self._blocks_to_split(result, ctx)
        notes = [] if measured is None else [_ratio_note(measured, self.min_span_ratio, ctx)]
        if not blocks:
            return PassResult(result, notes, {"split": [], "row0_span_ratio": measured}, fired=False)
        names = all_names(result)
        values = {"zero": 0, "one": 1, "end": np.iinfo(np.int64).max, "axis": 1}  # rows 1:end whatever S is
        bounds = {key: fresh(f"cls_row_apart/{key}", names) for key in values}
        first_nodes = {block.at[0]: block for block in blocks}
        removed = {index for block in blocks for index in block.at}
        kept_outputs = {block.out for block in blocks}  # the Concat of the two copies writes them
        rebuilt, orphans = [], set[str]()
        for index, node in enumerate(result.graph.node):
            if index in first_nodes:
                rebuilt.extend(_split(first_nodes[index], bounds, names))
            if index in removed:
                orphans.update(name for name in node.output if name not in kept_outputs)
            else:
                rebuilt.append(node)
        del result.graph.node[:]
        result.graph.node.extend(rebuilt)
        result.graph.initializer.extend(
            numpy_helper.from_array(_int64(values[key]), name) for key, name in bounds.items()
        )
        drop_unused(result, orphans)
        note = (
            f"{len(blocks)} feed-forward block(s) run row 0 apart from rows 1:{blocks[0].rows} "
            f"({', '.join(block.label for block in blocks[:3])}{', ...' if len(blocks) > 3 else ''})"
        )
        stats = {"split": [block.label for block in blocks], "rows": blocks[0].rows, "row0_span_ratio": measured}
        return PassResult(result, [note, *notes], stats)

    def _blocks_to_split(self, model, ctx: PassContext) -> tuple[list[FeedForward], dict[str, float] | None]:
        """The blocks whose row 0 widens the int8 range, and each block's measured ratio (None: not measured)."""
        blocks = feed_forwards(model)
        if ctx.calibration is None or not all(name in ctx.calibration for name in graph_input_names(model)):
            return blocks, None
        feeds = calibration_rows(ctx.calibration, graph_input_names(model), self.calibration_rows)
        ratios = row0_span_ratios(model, blocks, feeds)
        return [block for block in blocks if ratios[block.label] >= self.min_span_ratio], ratios

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        if not result.fired:
            return
        feeds, source = check_feeds(before, ctx)
        diff, allowed = rounding_diff(before, result, feeds, source)
        if diff > allowed:
            raise InternalError(
                f"cls_row_apart changed the outputs by {diff:.3g} > {allowed:.3g} on {source} "
                "rows; remove the 'cls_row_apart' pass from the recipe"
            )


def row0_span_ratios(model, blocks: list[FeedForward], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Per block: the larger, over its two MatMul inputs, of the median over rows of span(row 0) / span(rows
    1:n), n the row's unpadded length (all rows when the graph has no mask input)."""
    from edgecompress.verify.evaluate import ort_session

    watched = sorted({name for block in blocks for name in (block.x, block.nodes[-1].input[0])})
    probe = copy_model(model)
    del probe.graph.output[:]
    probe.graph.output.extend(_output_value(name) for name in watched)
    session = ort_session(probe.SerializeToString(), threads=2, optimize=False)
    inputs = [value.name for value in session.get_inputs()]
    masks = [name for name in feeds if "mask" in name]
    per_value: dict[str, list[float]] = {name: [] for name in watched}
    for row in range(len(feeds[inputs[0]])):
        outputs = session.run(watched, {name: feeds[name][row : row + 1] for name in inputs})
        length = int(feeds[masks[0]][row].sum()) if masks else None
        for name, value in zip(watched, outputs, strict=True):
            per_value[name].append(_span(value[0, :1]) / max(_span(value[0, 1:length]), 1e-12))
    median = {name: float(np.median(ratios)) for name, ratios in per_value.items()}
    return {block.label: max(median[block.x], median[block.nodes[-1].input[0]]) for block in blocks}


def _span(rows: np.ndarray) -> float:
    """The width of DynamicQuantizeLinear's range over `rows`: max(0, max) - min(0, min)."""
    return float(max(0.0, rows.max()) - min(0.0, rows.min())) if rows.size else 0.0


def _output_value(name: str):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _ratio_note(ratios: dict[str, float], threshold: float, ctx: PassContext) -> str:
    kept = {label: ratio for label, ratio in ratios.items() if ratio < threshold}
    shown = ", ".join(f"{ratio:.2f}" for ratio in list(ratios.values())[:8]) + (", ..." if len(ratios) > 8 else "")
    return (
        f"{len(kept)} of {len(ratios)} feed-forward block(s) kept whole: row 0 does not widen their int8 range "
        f"(span of row 0 / span of the other rows, median over {ctx.calibration_source or 'calibration'} texts, "
        f"below {threshold:g}; per block: {shown})"
    )


def feed_forwards(model) -> list[FeedForward]:
    """Every MatMul(X, constant) -> row-wise ops -> MatMul(constant) chain whose X is [B, rows, K], rows >= 2
    or the symbolic sequence axis."""
    nodes = model.graph.node
    by_input, outputs = reader_indices(model), {value.name for value in model.graph.output}
    shapes = None
    blocks = []
    for index, node in enumerate(nodes):
        if not _matmul_by_constant(model, node):
            continue
        chain = _chain_from(model, index, by_input, outputs)
        if chain is None:
            continue
        shapes = _shapes(model) if shapes is None else shapes
        shape = shapes.get(node.input[0])
        if shape is not None and len(shape) == 3 and (isinstance(shape[1], str) or shape[1] >= 2):
            blocks.append(FeedForward(tuple(nodes[i] for i in chain), shape[1], tuple(chain)))
    return blocks


def _shapes(model) -> dict[str, tuple[int | str, ...]]:
    """Shapes, contrib ops included (ONNX's own inference stops at SkipLayerNormalization, whose output is the
    FFN input of every fused BERT layer). A symbolic sequence axis stays a name: the split takes rows 1:end,
    whatever the length at run time."""
    return known_shapes(with_contrib_shapes(model))


def _chain_from(model, first: int, by_input: dict, outputs: set) -> list[int] | None:
    """Positions of [first, row-wise ops..., second MatMul by a constant], each value read once and only
    inside; else None."""
    chain, node = [first], model.graph.node[first]
    while True:
        value = node.output[0]
        following = by_input.get(value, [])
        if value in outputs or len(following) != 1:
            return None
        node = model.graph.node[following[0]]
        if _matmul_by_constant(model, node) and node.input[0] == value:
            return chain + following if len(chain) > 1 else None  # two MatMuls in a row are no FFN
        if not _row_wise(model, node, value):
            return None
        chain.append(following[0])


def _matmul_by_constant(model, node) -> bool:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return False
    weight = constant(model, node.input[1])
    return weight is not None and weight.ndim == 2


def _row_wise(model, node, data: str) -> bool:
    """Computes each row from that row of `data` alone: a known op whose other inputs are constants that do
    not vary along the rows (a bias [N], [1, 1, N])."""
    if (node.domain or "", node.op_type) not in ROW_WISE_OPS or len(node.output) != 1:
        return False
    for name in node.input:
        if name == data or not name:
            continue
        value = constant(model, name)
        if value is None or (value.ndim >= 2 and value.shape[-2] != 1):
            return False
    return list(node.input).count(data) == 1


def _split(block: FeedForward, bounds: dict[str, str], names: set) -> list:
    from onnx import helper

    first = block.nodes[0].name or block.out
    ranges = {"cls_row": (bounds["zero"], bounds["one"]), "other_rows": (bounds["one"], bounds["end"])}
    nodes, ends = [], []
    for branch in BRANCHES:
        start, stop = ranges[branch]
        value = fresh(f"{block.x}/{branch}", names)
        nodes.append(
            helper.make_node(
                "Slice", [block.x, start, stop, bounds["axis"]], [value], name=fresh(f"{first}/{branch}/Slice", names)
            )
        )
        for index, node in enumerate(block.nodes):
            data = block.x if index == 0 else block.nodes[index - 1].output[0]
            copy = helper.make_node(
                node.op_type,
                [value if name == data else name for name in node.input],
                [fresh(f"{node.output[0]}/{branch}", names)],
                name=fresh(f"{node.name or node.output[0]}/{branch}", names),
                domain=node.domain or None,
            )
            copy.attribute.extend(node.attribute)
            nodes.append(copy)
            value = copy.output[0]
        ends.append(value)
    nodes.append(helper.make_node("Concat", ends, [block.out], axis=1, name=fresh(f"{first}/rows/Concat", names)))
    return nodes


def _int64(value: int) -> np.ndarray:
    return np.array([value], np.int64)
