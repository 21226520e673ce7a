"""Our own attention fusion, for the encoder layers ONNX Runtime's fuser leaves unfused (MobileBERT, MPNet).

Before -> After (one layer of eager attention as the TorchScript exporter writes it; `query`, `key`, `value`
are the projected [B, S, N*h] tensors, whatever computes them):
  `Q = Transpose(Reshape(query, [B, S, N|-1, h]), 0213)`, `K = Transpose(Reshape(key, ..), 0231)`,
  `V = Transpose(Reshape(value, ..), 0213)`,
  `P = Softmax(Add(Add?(Mul|Div(MatMul(Q, K), c), bias), mask))`,
  `out = Reshape(Transpose(MatMul(P, V), 0213), [B, S, N*h|-1])`
  -> `out = com.microsoft::MultiHeadAttention(query, key, value, , Cast(attention_mask, int32)[, bias];
  num_heads = N, scale = c or 1/c)`.
`mask` is the additive padding mask, the one score operand whose data comes from the `attention_mask` input
alone; `bias` is any other score operand (MPNet's relative position bias, [B, N, S, S]) and becomes the
op's `attention_bias`. MPNet computes the merge shape from the merged tensor itself (`Concat` of
`Shape(merged)[0]`, `Shape(merged)[1]`, N*h); a second form of the rule matches that and removes it too.

Why MultiHeadAttention and not Attention: MobileBERT's query and key read the bottleneck, its value the
layer input, so there is no single input to project Q, K and V from; and ONNX Runtime's quantizer has no
int8 form of Attention with an `attention_bias` (MPNet). The projections stay MatMuls, which
`quantize_dynamic` turns into int8 `DynamicQuantizeMatMul`s, and the fused op takes its mask value from
`attention_mask_value` like the fuser's ops (the unfused graph's float32-min mask runs MLAS's slow exp).

Not for DeBERTa-v2 (the rule finds no block of its form there): its heads run as [B*N, S, h] batches, its
disentangled scores (content-to-position and position-to-content, gathered per layer from the projected Q
and K) are added to the scores, and it masks with `Where` over a query-and-key mask [B, 1, S, S], under
which a padded query row attends to every key alike; MultiHeadAttention's key padding mask would give
those rows other values. Its c2p/p2c gathers would stay outside the op as an `attention_bias` anyway.

A match whose mask is not the padding mask of `attention_mask`, or whose head split cannot be read (widths
unknown, head size not a constant), is left alone and says why (`why_not`). The caller compares outputs
before and after on padded rows: a rewrite that moved them is a bug, never shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MS_DOMAIN = "com.microsoft"
_HEADS_FIRST = [0, 2, 1, 3]  # [B, S, N, h] <-> [B, N, S, h]
_KEY_TRANSPOSED = [0, 2, 3, 1]  # [B, S, N, h] -> [B, N, h, S]


@dataclass(frozen=True)
class Plan:
    """What one match becomes: the MultiHeadAttention's attributes and its mask and bias inputs."""

    heads: int
    scale: float
    mask_input: Any  # the graph input `attention_mask` (an onnx_ir Value)
    bias: Any  # the score operand besides the mask (an onnx_ir Value), or None


class NoMatch(Exception):
    """A matched subgraph that the rule must not rewrite; the message says why."""


def fuse_attention(model, mask_input: str = "attention_mask") -> tuple[Any, int]:
    """(`model` with every matching attention block rewritten, how many): a new ModelProto when any was, else
    `model` itself. `model` is not modified."""
    import onnx_ir as ir
    from onnxscript.optimizer import remove_unused_nodes

    graph = ir.from_proto(model)
    count = rules(_widths(model), mask_input).apply_to_model(graph)
    if not count:
        return model, 0
    remove_unused_nodes(graph)  # the removed blocks' shape arithmetic and scale constants
    result = ir.to_proto(graph)
    result.ir_version = model.ir_version
    # onnx-ir writes a value_info for every typed value; keep the ones the graph had, no more bytes
    known = {info.name for info in model.graph.value_info}
    kept = [info for info in result.graph.value_info if info.name in known]
    del result.graph.value_info[:]
    result.graph.value_info.extend(kept)
    return result, count


def why_not(model, mask_input: str = "attention_mask") -> list[str]:
    """Why each near-match was left alone (the rule's failed checks), for notes and tests; [] when none."""
    import onnx_ir as ir
    from onnxscript.rewriter._basics import MatchingTracer, MatchStatus

    tracer = MatchingTracer()
    rules(_widths(model), mask_input).apply_to_model(ir.from_proto(model), tracer=tracer)
    return [
        info.match_result.reason
        for infos in tracer.best_matches_map.values()
        for info in infos
        if info.status == MatchStatus.CONDITION_FAILED
    ]


def rules(widths: dict[str, int], mask_input: str):
    """The rule set: the merge shape given from outside the block, or read off the merged tensor."""
    from onnxscript.rewriter import pattern

    def condition(context, **bindings) -> Any:
        result = pattern.MatchResult()
        try:
            plan(bindings, widths, mask_input)
        except NoMatch as exc:
            return result.fail(str(exc))
        return result

    def replacement(op, query, key, value, **bindings):
        import onnx

        found = plan(bindings | {"query": query, "key": key, "value": value}, widths, mask_input)
        inputs = [query, key, value, None, op.Cast(found.mask_input, to=onnx.TensorProto.INT32)]
        inputs += [found.bias] if found.bias is not None else []
        return op.MultiHeadAttention(*inputs, num_heads=found.heads, scale=found.scale, _domain=_MS_DOMAIN)

    return pattern.RewriteRuleSet(
        [
            pattern.RewriteRule(_pattern(self_shaped), replacement, condition, name=f"attention_to_mha{suffix}")
            for self_shaped, suffix in ((False, ""), (True, "_self_shaped"))
        ]
    )


def _pattern(self_shaped: bool):
    from onnxscript.rewriter import pattern

    def target(op, query, key, value, q_split, k_split, v_split, scale, first, second, merge, batch_at, seq_at):
        q = op.Transpose(op.Reshape(query, q_split), perm=_HEADS_FIRST)
        k = op.Transpose(op.Reshape(key, k_split), perm=_KEY_TRANSPOSED)
        v = op.Transpose(op.Reshape(value, v_split), perm=_HEADS_FIRST)
        scores = op.MatMul(q, k)
        scaled = pattern.OrValue(
            [op.Mul(scores, scale), op.Div(scores, scale)], tag_var="scaling", tag_values=["Mul", "Div"]
        )
        once = op.Add(scaled, first)
        biased = pattern.OrValue([op.Add(once, second), once], tag_var="score_adds", tag_values=[2, 1])
        merged = op.Transpose(op.MatMul(op.Softmax(biased, axis=-1), v), perm=_HEADS_FIRST)
        if self_shaped:  # MPNet: context.size()[:-2] + (all_head_size,)
            rows = [op.Unsqueeze(op.Gather(op.Shape(merged), at, axis=0), [0]) for at in (batch_at, seq_at)]
            merge = op.Concat(*rows, merge, axis=0)
        return op.Reshape(merged, merge)

    return target


def plan(bindings: dict[str, Any], widths: dict[str, int], mask_input: str) -> Plan:
    """The MultiHeadAttention one match becomes; NoMatch says why there is none."""
    heads, head_size = _split(bindings, widths)
    _check_merge(bindings, heads * head_size)
    return Plan(heads, _scale(bindings), *_mask_and_bias(bindings, mask_input))


def _split(bindings, widths: dict[str, int]) -> tuple[int, int]:
    """(heads, head size), the same for Q, K and V; read from each split's constant head size and the width of
    the tensor it splits (transformers 5 writes -1 for the head count)."""
    found = set()
    for part in ("query", "key", "value"):
        entries = _entries(bindings[f"{part[0]}_split"])
        width = widths.get(bindings[part].name)
        if entries is None or len(entries) != 4 or not isinstance(entries[3], int) or entries[3] <= 0:
            raise NoMatch(f"the {part} split is not [batch, seq, heads, head_size] with a constant head size")
        if width is None or width % entries[3] or entries[2] not in (-1, width // entries[3]):
            raise NoMatch(f"the {part} width ({width}) is not heads x the head size {entries[3]}")
        found.add((width // entries[3], entries[3]))
    if len(found) != 1:
        raise NoMatch(f"query, key and value split into different heads: {sorted(found)}")
    return found.pop()


def _check_merge(bindings, width: int) -> None:
    entries = _entries(bindings["merge"])
    if bindings.get("batch_at") is not None:  # the merge shape is [Shape(merged)[batch_at], [seq_at], entries]
        at = [_scalar(bindings[name]) for name in ("batch_at", "seq_at")]
        entries = None if at != [0, 1] or entries is None else [None, None, *entries]
    if entries is None or len(entries) != 3 or entries[2] not in (-1, width):
        raise NoMatch(f"the heads are not merged back to [batch, seq, {width}]")


def _scale(bindings) -> float:
    factor = _scalar(bindings["scale"])
    if factor is None or factor == 0:
        raise NoMatch("the score scale is not a nonzero constant scalar")
    return float(factor) if bindings["scaling"] == "Mul" else 1.0 / float(factor)


def _mask_and_bias(bindings, mask_input: str) -> tuple[Any, Any]:
    """The graph input `mask_input` that the one mask operand reads alone, and the other operand (or None)."""
    operands = [bindings["first"]] + ([bindings["second"]] if bindings["score_adds"] == 2 else [])
    sources = [_data_inputs(operand) for operand in operands]
    masks = [i for i, found in enumerate(sources) if len(found) == 1 and next(iter(found)).name == mask_input]
    if len(masks) != 1:
        raise NoMatch(f"no score operand is the padding mask of '{mask_input}' alone ({len(masks)} found)")
    mask = next(iter(sources[masks[0]]))
    others = [operand for i, operand in enumerate(operands) if i != masks[0]]
    if others and any(value.name == mask_input for value in sources[1 - masks[0]]):
        raise NoMatch(f"the score bias reads '{mask_input}' too")
    return mask, others[0] if others else None


def _data_inputs(value) -> set:
    """The graph inputs whose data reach `value`. A `Shape` ends a path: it reads no data."""
    seen, found, stack = set(), {}, [value]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.is_graph_input():
            found[id(current)] = current
        node = current.producer()
        if node is not None and node.op_type != "Shape":
            stack.extend(node.inputs)
    return set(found.values())


def _entries(shape) -> list[int | None] | None:
    """A Reshape's target as a list: a constant, or a Concat of pieces (None for each non-constant one)."""
    from onnxscript.rewriter import _ir_utils

    array = _ir_utils.get_numpy_value(shape)
    if array is not None:
        return [int(x) for x in array.reshape(-1)]
    node = shape.producer()
    if node is None or node.op_type != "Concat":
        return None
    entries: list[int | None] = []
    for piece in node.inputs:
        known = _ir_utils.get_numpy_value(piece)
        entries.extend([None] if known is None else [int(x) for x in known.reshape(-1)])
    return entries


def _scalar(value):
    from onnxscript.rewriter import _ir_utils

    return None if value is None else _ir_utils.get_singleton_value(value)


def _widths(model) -> dict[str, int]:
    """The last dimension of every tensor whose shape ONNX Runtime's symbolic inference knows (it reads
    through the contrib ops the fuser wrote, e.g. SkipLayerNormalization before MPNet's projections)."""
    from edgecompress.graph._quant_common import with_contrib_shapes

    typed = with_contrib_shapes(model)
    widths = {}
    for info in [*typed.graph.value_info, *typed.graph.input]:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            widths[info.name] = dims[-1].dim_value
    return widths
