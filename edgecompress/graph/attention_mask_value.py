"""Give the fused attention ops a mask value that ONNX Runtime's softmax runs fast on.

Before -> After (every fused attention node):
  `Attention(X, W, b, mask_index)` (mask_filter_value unset, i.e. -10000)
  -> `Attention(X, W, b, mask_index; mask_filter_value = -60)`; likewise `QAttention` and
  `MultiHeadAttention`.

Why, measured (onnxruntime 1.31, x86-64 AVX-512, one thread): the attention kernel adds the mask
value to the scores of padded keys and hands the rows to MLAS's softmax, whose exp kernel is fast
only for inputs in its range. A plain `Softmax` over [12, 128, 128] scores with 98 of 128 keys
masked took 0.07 ms at -40 or -80, 1.6 ms at -86 to -100 (exp's result is subnormal there) and
0.79 ms at -1000 to -3.4e38 (below the kernel's clamp); `session.set_denormal_as_zero` did not help.
On the Rotten Tomatoes MiniLM at seq_len 128 (texts average ~26 tokens, so most keys are padding)
QAttention went from 24.7 to 8.5 ms per run and the static int8 model from 1.23x to 1.63x the speed
of the peer; float Attention from 42 to 29 ms. At -100 QAttention took 27x longer than at -60.

Why -60 and not -40 (equally fast in ORT: static int8 1.60x vs 1.62x the peer, within noise): what
reaches exp is s + mask - max, with s a padded key's raw score and max the row's largest. A padded key
keeps a weight of e^(s - max + mask) instead of 0; at -40 that is visible in float32 once s beats every
real key by ~23. It showed in the static int8 MiniLM as lowered to LiteRT, the mask value being the
only change: 1 of 40 predictions flipped, max |diff| vs ORT 0.22 instead of 0.08; at -60 (or -100)
LiteRT gave exactly what it gives at -10000. Going lower than -60 risks the slow range:
s - max below -26 already lands masked keys under -86. In ORT the MiniLM logits were bit-identical
to -10000 on 200 test texts. `ensures` checks outputs on padded rows of the calibration texts (or
synthetic ones) and fails loudly when they move by more than float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompress.errors import InternalError, UserError
from edgecompress.graph._quant_common import calibration_rows, copy_model, graph_input_names, rounding_diff
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

FUSED_ATTENTION_OPS = ("Attention", "QAttention", "MultiHeadAttention")
ORT_DEFAULT_MASK_VALUE = -10000.0
ATTRIBUTE = "mask_filter_value"
# Rows compared by `ensures`: enough lengths to cover short, medium and full rows.
_CHECK_ROWS = 8
_SYNTHETIC_SEQ_LEN = 16


@register_pass
@dataclass(frozen=True)
class AttentionMaskValue(Pass):
    name = "attention_mask_value"
    stage = "graph"
    in_place = False  # `ensures` compares the outputs of the graph it was given with the new one
    # It sets an attribute of the fused attention ops, before the quantizers calibrate and run their
    # sensitivity trials, so that what they measure runs the same fast softmax as what ships.
    runs_after = ("fuse_transformer",)
    runs_before = ("quantize_dynamic", "quantize_static")
    # Between -80 and -20: below -86 MLAS's exp leaves its fast range (see the module docstring); above
    # -20 a padded key's weight is e^-20 ~ 2e-9 of the row's largest even when it scores like a real key.
    mask_filter_value: float = -60.0

    def __post_init__(self) -> None:
        if not -80.0 <= self.mask_filter_value <= -20.0:
            raise UserError(
                f"option 'mask_filter_value' of pass '{self.name}' is {self.mask_filter_value:g}",
                expected="a value in [-80, -20]",
                hint="below -86 ONNX Runtime's softmax takes its slow path; above -20 padding "
                "tokens start to get attention",
            )

    def requires(self, model, ctx: PassContext) -> None:
        fused = fused_attention_nodes(model)
        if not fused:
            raise PassSkipped(
                "no fused Attention, QAttention or MultiHeadAttention node (an unfused "
                "attention takes its mask from the graph, not from this attribute)"
            )
        if all(mask_value(node) == self.mask_filter_value for node in fused):
            raise PassSkipped(f"every fused attention node already has {ATTRIBUTE} = {self.mask_filter_value:g}")

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnx import helper

        result = copy_model(model)
        changed = {}
        for node in fused_attention_nodes(result):
            before = mask_value(node)
            if before == self.mask_filter_value:
                continue
            kept = [a for a in node.attribute if a.name != ATTRIBUTE]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute(ATTRIBUTE, float(self.mask_filter_value))])
            changed[node.name] = before
        olds = sorted({f"{v:g}" for v in changed.values()})
        note = (
            f"{ATTRIBUTE} {' / '.join(olds)} -> {self.mask_filter_value:g} on {len(changed)} fused attention "
            f"node(s) ({_op_summary(result, changed)})"
        )
        return PassResult(result, [note], {"changed": changed, "mask_filter_value": self.mask_filter_value})

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        feeds, source = check_rows(before, ctx)
        diff, allowed = rounding_diff(before, result, feeds, f"padded {source}")
        if diff > allowed:
            raise InternalError(
                f"{ATTRIBUTE} = {self.mask_filter_value:g} changed the outputs by {diff:.3g} "
                f"> {allowed:.3g} on {source} rows: padded keys score far above real ones in "
                "this model; remove the 'attention_mask_value' pass from the recipe"
            )


def fused_attention_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type in FUSED_ATTENTION_OPS and n.domain == "com.microsoft"]


def mask_value(node) -> float:
    return next((a.f for a in node.attribute if a.name == ATTRIBUTE), ORT_DEFAULT_MASK_VALUE)


def _op_summary(model, changed: dict) -> str:
    ops = [n.op_type for n in model.graph.node if n.name in changed]
    return ", ".join(f"{ops.count(op)} {op}" for op in sorted(set(ops)))


def check_rows(model, ctx: PassContext) -> tuple[dict[str, np.ndarray], str]:
    """Rows with padding to compare outputs on: calibration texts when there are some, else synthetic ones.

    A mask value only matters where keys are masked, so synthetic rows have lengths from 2 to full.
    """
    names = graph_input_names(model)
    if ctx.calibration is not None and all(name in ctx.calibration for name in names):
        return calibration_rows(ctx.calibration, names, _CHECK_ROWS), "calibration"
    return synthetic_rows(model, ctx), "synthetic"


def synthetic_rows(model, ctx: PassContext) -> dict[str, np.ndarray]:
    """BERT-style int64 inputs: random token ids below the vocabulary size, a mask of 1s then 0s, segment 0."""
    values = {v.name: v for v in model.graph.input}
    names = graph_input_names(model)
    first = values[names[0]].type.tensor_type.shape.dim
    seq_len = first[1].dim_value if len(first) > 1 and first[1].dim_value else (ctx.seq_len or _SYNTHETIC_SEQ_LEN)
    lengths = np.linspace(2, seq_len, num=_CHECK_ROWS).round().astype(np.int64)
    rng = np.random.default_rng(0)
    feeds = {}
    for name in names:
        if "mask" in name:
            feeds[name] = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        elif name == "input_ids" or ("ids" in name and "type" not in name):
            feeds[name] = rng.integers(0, _vocab_size(model, name), size=(_CHECK_ROWS, seq_len), dtype=np.int64)
        else:
            feeds[name] = np.zeros((_CHECK_ROWS, seq_len), dtype=np.int64)
    return feeds


def _vocab_size(model, ids_name: str) -> int:
    """Rows of the table the token ids index (Gather, or the fused embedding ops' word table); 2 if unknown."""
    dims = {init.name: init.dims for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == ids_name:
            table = node.input[0]
        elif node.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization") and node.input[0] == ids_name:
            table = node.input[2]
        else:
            continue
        if table in dims and len(dims[table]) == 2:
            return int(dims[table][0])
    return 2
