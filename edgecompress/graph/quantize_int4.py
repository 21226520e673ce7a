"""Int4 weights: block-wise 4-bit MatMul weights and 8-bit embedding tables; activations stay float.

Before -> After:
  `MatMul(X, W)` -> `MatMulNBits(X, Wq, scales)`: W cut into blocks of `block_size` input rows, each block
  symmetric 4-bit with one float scale (ONNX Runtime's `MatMulNBits` contrib op, bits = 4).
  `Gather(E, ids)` -> `GatherBlockQuantized(Eq, ids, scales)`: each embedding table (word, position,
  token type) symmetric at `embedding_bits` (8 by default, or 4) with one scale per block of a row,
  stored as uint8 (zero point 128, or 8 packed in nibbles). The word table is half of MiniLM, so
  without this the file stays large whatever the MatMuls do.
  `Gemm(X, W, b)` with a large constant W (the pooler) -> `Add(MatMulNBits(X, Wq, scales), b)`.

Mixed precision in the spirit of Q-BERT (`mixed = true` and calibration data): each encoder layer is
quantized to 4 bits alone and scored against the float graph; a layer that breaks the thresholds gets
8-bit weights (`MatMulNBits` bits = 8) instead. The embedding tables are tried the same way: at 4 bits
they fall back to 8, at 8 bits to float. Scores are the task's own agreement (see quant_sensitivity.py).
Then all groups together: while more units disagree than the thresholds allow, the group that was worst
alone widens one step more. Without data, or with `mixed = false`, nothing is measured.
`max_size_ratio` caps the result: the most sensitive groups keep their extra bits while the estimated
size fits; the others go back to their first choice. The cap gives way when the groups together would
make more units disagree than the thresholds allow (an artifact verification refuses is no smaller file);
the notes say so.

Where MiniLM's int4 bytes go (seq_len 128, all MatMuls at 4 bits, block 128; float file 90.9 MB):
8-bit word table 11.72 MB + its scales 0.37 MB, MatMul weights 5.31 MB + scales 0.33 MB, position
table 0.20 MB (0.05 MB once `trim_gathered_tables` keeps the 128 rows read), biases and norms 0.12 MB,
graph 0.13 MB. The pooler Gemm was 0.59 MB of float until it became a MatMul here. So 8-bit
embeddings alone are 0.133x of float and every encoder layer at 8 bits instead of 4 costs +0.03x:
under a 0.2x cap there is room for none.

Runs before `fuse_transformer`: after fusion, `Attention` holds the Q/K/V weights and
`EmbedLayerNormalization` the word table, and neither op takes block-quantized weights, so 61% of
MiniLM's weights would stay float. Quantized first, the fuser can no longer fuse attention (its
pattern wants MatMul) but still fuses layer norms and GELU. This buys size, not speed: `MatMulNBits`
is built for one-token LLM decoding and ran slower than float MatMul on 128-token inputs here.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass

import numpy as np

from edgecompress.errors import UserError
from edgecompress.graph._quant_common import (
    calibration_rows,
    constant_weight_nodes,
    copy_model,
    gemm_note,
    gemms_as_matmuls,
    graph_input_names,
    keep_model_props,
    nbits_quantizer_class,
    op_counts,
    size_mb,
)
from edgecompress.graph.quant_sensitivity import Probe, Thresholds, layer_groups
from edgecompress.logs import captured_library_output
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

# GatherBlockQuantized blocks must be powers of two of at least 16; larger blocks store fewer scales.
_TABLE_BLOCKS = (128, 64, 32, 16)
_FUSED_WEIGHT_OPS = ("Attention", "EmbedLayerNormalization")
# What a group that breaks the thresholds falls back to; None is float.
_WIDER = {4: 8, 8: None}


@register_pass
@dataclass(frozen=True)
class QuantizeInt4(Pass):
    name = "quantize_int4"
    stage = "graph"
    in_place = False  # `run` reads the float graph it was given for sizes and sensitivity trials
    runs_before = ("fuse_transformer",)  # fused Attention and EmbedLayerNormalization take no 4-bit weights
    # Measured on the MiniLM teacher, blocks of 128 rows gave the same test predictions as blocks of 32
    # (600 texts) in a 5% smaller file (0.207x vs 0.218x of float).
    block_size: int = 128
    # MatMulNBits compute: 0 = float (dequantize blocks), 4 = int8 activations per block (slower here).
    accuracy_level: int = 0
    embedding_bits: int = 8
    mixed: bool = True
    # A layer whose 4-bit weights alone drop the output below this SQNR, or make more than this share of the
    # task's units disagree (by the task's own agreement), gets 8-bit weights; embedding tables fall back
    # likewise (4 -> 8 -> float). While all groups together make more units disagree, the worst widens further.
    # 28 dB: such a layer alone adds at least half the noise of the whole int8 model (24-25 dB on the
    # MiniLM teacher), so it is worth its extra bits; there, layers 0-2 came out at 25-27 dB, 3-5 at 31-36.
    min_sqnr_db: float = 28.0
    max_flip_rate: float = 0.02
    calibration_rows: int = 64
    # With `mixed`: a cap on the quantized graph's size as a share of the graph this pass is given;
    # 0 = no cap. Of the groups the measurement widens, the most sensitive keep their extra bits
    # while the estimate fits. With 8-bit embeddings on MiniLM (the 8-bit word table alone is 0.13x)
    # a 0.2x cap leaves no room for any 8-bit layer; with `embedding_bits = 4` it does.
    max_size_ratio: float = 0.0
    # Gemms with at least this many weights (the pooler, 384 x 384 = 0.59 MB float on MiniLM, 3% of an
    # int4 file) become MatMul + Add so they can take 4-bit weights. Smaller ones stay float: the
    # classifier (2 x 384, 3 KB) gains nothing and writes the logits directly.
    gemm_min_weights: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.embedding_bits not in _WIDER:
            raise UserError(
                f"option 'embedding_bits' of pass '{self.name}' is {self.embedding_bits}",
                expected=" or ".join(map(str, _WIDER)),
            )

    def requires(self, model, ctx: PassContext) -> None:
        if not matmul_nodes(model) and not embedding_nodes(model):
            raise PassSkipped("no MatMul or embedding Gather with constant float weights")

    def run(self, model, ctx: PassContext) -> PassResult:
        source, model = model, gemms_as_matmuls(model, self.gemm_min_weights)
        plan = {n.name: 4 for n in matmul_nodes(model)} | {n.name: self.embedding_bits for n in embedding_nodes(model)}
        quantize = functools.partial(quantize_weights, block_size=self.block_size, accuracy_level=self.accuracy_level)
        quantized = error = None
        if not self.mixed:
            notes = ["mixed = false: every layer at 4 bits"]
        elif ctx.calibration is None:
            notes = ["no calibration data: every layer at 4 bits, no sensitivity analysis"]
        else:
            feeds = calibration_rows(ctx.calibration, graph_input_names(model), self.calibration_rows)
            first_choice = dict(plan)
            probe = Probe(
                model,
                feeds,
                lambda m, names: quantize(m, {n: first_choice[n] for n in names}),
                quantizer_id=f"quantize_int4 block {self.block_size} accuracy {self.accuracy_level} "
                f"embedding {self.embedding_bits} v1",
                task=ctx.task,
            )
            thresholds = Thresholds.for_task(self.min_sqnr_db, self.max_flip_rate, ctx.task)
            notes, quantized, error = self._choose_bits(model, plan, probe, thresholds, quantize)
        if quantized is None:
            quantized = quantize(model, plan)
        notes = _summary(source, quantized, plan) + gemm_note(source, model, "block-quantized weights") + notes
        notes += _fused_leftovers(model)
        if error is not None:
            notes.append(f"whole graph vs float on {error.rows} calibration rows: {error.describe()}")
        stats = {
            "bits": plan,
            "size_mb_before": round(size_mb(source), 3),
            "size_mb_after": round(size_mb(quantized), 3),
            "ops_after": op_counts(quantized),
        }
        return PassResult(quantized, notes, stats, lossy=True)

    def _choose_bits(self, model, plan: dict[str, int], probe: Probe, thresholds: Thresholds, quantize):
        """Try each layer's MatMuls, then the embedding tables, alone at their first choice of bits; then all of
        them together. Returns the notes, the quantized graph and its error on the calibration rows."""
        matmuls = matmul_nodes(model)
        groups = layer_groups(model, matmuls)
        in_layers = {name for names in groups.values() for name in names}
        groups["no layer"] = [n.name for n in matmuls if n.name not in in_layers]
        groups["embeddings"] = [n.name for n in embedding_nodes(model)]
        trials = {group: probe.trial(group, names) for group, names in groups.items() if names}
        first_choice = dict(plan)
        notes = [_settle(group, groups[group], plan, trial, thresholds) for group, trial in trials.items()]
        if self.max_size_ratio > 0:
            notes += _fit_size_cap(model, plan, first_choice, groups, trials, self.max_size_ratio, self.block_size)
        quantized, error, widened = _widen_together(model, plan, probe, thresholds, groups, trials, quantize)
        if widened and self.max_size_ratio > 0:
            widened.append(f"size cap {self.max_size_ratio:g}x gives way: verification would refuse the smaller graph")
        return notes + widened, quantized, error


def _widen_together(model, plan: dict[str, int], probe: Probe, thresholds: Thresholds, groups, trials, quantize):
    """The groups quantized together must keep the task's agreement as each did alone: errors add up. While the
    graph quantized as `plan` says makes more units disagree than the thresholds allow
    (`Thresholds.accept_together`), the group whose own trial was worst (most disagreeing units, then lowest
    SQNR) and can still widen takes its next width (4 -> 8 -> float), in `plan`. Returns the quantized graph, its
    error and a note per widening. With every group float the graph is the float one, which passes."""
    order = sorted(trials, key=lambda g: (-trials[g].error.flip_rate, trials[g].error.sqnr_db))
    quantized = quantize(model, plan)
    error = probe.error_of(quantized)
    notes = []
    while not thresholds.accept_together(error):
        group = next((g for g in order if groups[g][0] in plan), None)
        if group is None:  # nothing left to widen; unreachable, since the float graph agrees with itself
            break
        wider = _WIDER[plan[groups[group][0]]]
        _set_bits(plan, {name: wider for name in groups[group]})
        notes.append(
            f"{group}: {'float' if wider is None else f'{wider} bits'} (quantized together: "
            f"{thresholds.why_not_together(error)}; {group} was the worst alone)"
        )
        quantized = quantize(model, plan)
        error = probe.error_of(quantized)
    return quantized, error, notes


def _settle(group: str, names: list[str], plan: dict[str, int], trial, thresholds: Thresholds) -> str:
    """Keep the group's bits if its trial passed, else widen them (4 -> 8, 8 -> float) in `plan`."""
    bits = plan[names[0]]
    if thresholds.accept(trial.error):
        return f"{group}: {bits} bits ({trial.error.describe()})"
    wider = _WIDER[bits]
    for name in names:
        if wider is None:
            del plan[name]
        else:
            plan[name] = wider
    return (
        f"{group}: {'float' if wider is None else f'{wider} bits'} (at {bits} bits alone: "
        f"{thresholds.why_not(trial.error)}; {trial.error.describe()})"
    )


def _fit_size_cap(
    model,
    plan: dict[str, int],
    first_choice: dict[str, int],
    groups: dict[str, list[str]],
    trials: dict,
    ratio: float,
    block_size: int,
) -> list[str]:
    """Keep the widening of the groups that need it most (lowest SQNR at their first choice) while the
    estimated size stays at most `ratio` of the input graph's; the others go back to their first choice.

    Greedy from the bottom up, so one large group that does not fit (an embedding table) does not
    push out several small ones that do (encoder layers).
    """
    cap = ratio * size_mb(model)
    widened = {
        g: {n: plan.get(n) for n in groups[g]} for g in trials if any(plan.get(n) != first_choice[n] for n in groups[g])
    }
    for group in widened:
        _set_bits(plan, {n: first_choice[n] for n in groups[group]})
    notes = []
    for group in sorted(widened, key=lambda g: trials[g].error.sqnr_db):
        _set_bits(plan, widened[group])
        if estimated_size_mb(model, plan, block_size) > cap:
            _set_bits(plan, {n: first_choice[n] for n in groups[group]})
            notes.append(
                f"size cap {ratio:g}x: {group} stays at {first_choice[groups[group][0]]} bits "
                f"({trials[group].error.describe()})"
            )
    size = estimated_size_mb(model, plan, block_size)
    if size > cap:
        notes.append(
            f"size cap {ratio:g}x ({cap:.2f} MB) not reached here: {size:.2f} MB estimated with every "
            "group at its first choice of bits (later passes may still trim)"
        )
    return notes


def _set_bits(plan: dict[str, int], bits: dict[str, int | None]) -> None:
    """Apply bits per node to `plan`; None (float) removes the node from it."""
    for name, value in bits.items():
        if value is None:
            plan.pop(name, None)
        else:
            plan[name] = value


def estimated_size_mb(model, plan: dict[str, int], block_size: int) -> float:
    """The file size `plan` would give, from weight shapes alone (no quantizer run): float weights of the
    planned nodes replaced by their packed bits plus one float32 scale per block."""
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    delta = 0
    for node in model.graph.node:
        if node.name not in plan:
            continue
        if node.op_type == "MatMul":
            rows, cols = dims[node.input[1]]
            blocks = -(-rows // block_size) * cols
            delta += blocks * (block_size * plan[node.name] // 8 + 4) - rows * cols * 4
        else:
            rows, cols = dims[node.input[0]]
            delta += rows * cols * plan[node.name] // 8 + rows * (cols // _table_block(cols)) * 4 - rows * cols * 4
    return size_mb(model) + delta / 1e6


def matmul_nodes(model) -> list:
    """MatMuls with a 2-D constant weight: the shape MatMulNBits takes."""
    ranks = {init.name: len(init.dims) for init in model.graph.initializer}
    return [n for n in constant_weight_nodes(model, ("MatMul",)) if ranks[n.input[1]] == 2]


def embedding_nodes(model) -> list:
    """Gathers of rows (axis 0) of a 2-D constant float table whose width a table block divides."""
    import onnx

    tables = {
        init.name: init.dims[1]
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2
    }
    return [
        n
        for n in constant_weight_nodes(model, ("Gather",), weight_input=0)
        if n.input[0] in tables
        and _table_block(tables[n.input[0]])
        and all(a.i == 0 for a in n.attribute if a.name == "axis")
    ]


def quantize_weights(model, plan: dict[str, int], *, block_size: int, accuracy_level: int):
    """MatMuls in `plan` to MatMulNBits, Gathers in `plan` to GatherBlockQuantized, each at its planned bits."""
    ops = {n.name: n.op_type for n in model.graph.node}
    result = copy_model(model)
    for bits in (8, 4):
        names = [name for name, b in plan.items() if b == bits and ops[name] == "MatMul"]
        if names:
            result = _matmul_nbits(result, names, bits, block_size, accuracy_level)
    gathers = {name: bits for name, bits in plan.items() if ops[name] == "Gather"}
    if gathers:
        _quantize_tables(result, gathers)
    return keep_model_props(result, model)


def _matmul_nbits(model, names: list[str], bits: int, block_size: int, accuracy_level: int):
    chosen = set(names)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in chosen]
    quantizer = nbits_quantizer_class()(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=accuracy_level,
        nodes_to_exclude=others,
        op_types_to_quantize=("MatMul",),
    )
    with captured_library_output():
        quantizer.process()
    return quantizer.model.model


def _table_block(width: int) -> int | None:
    return next((block for block in _TABLE_BLOCKS if width % block == 0), None)


def _quantize_tables(model, bits_by_node: dict[str, int]) -> None:
    """In place: each named Gather becomes GatherBlockQuantized over a uint8 copy of its table."""
    from onnx import helper, numpy_helper

    tables = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in bits_by_node:
            continue
        name, bits = node.input[0], bits_by_node[node.name]
        table = numpy_helper.to_array(tables[name])
        block = _table_block(table.shape[1])
        data, scales = quantize_rows(table, block, bits)
        model.graph.initializer.extend(
            [numpy_helper.from_array(data, f"{name}_q{bits}"), numpy_helper.from_array(scales, f"{name}_scales")]
        )
        node.CopyFrom(
            helper.make_node(
                "GatherBlockQuantized",
                [f"{name}_q{bits}", node.input[1], f"{name}_scales"],
                list(node.output),
                name=node.name,
                domain="com.microsoft",
                bits=bits,
                block_size=block,
                gather_axis=0,
                quantize_axis=1,
            )
        )
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def quantize_rows(table: np.ndarray, block: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blocks along each row, as GatherBlockQuantized reads uint8 data with its default zero point.

    q = round(x / s) + 2^(bits-1) with s = max|block| / (2^(bits-1) - 1); 4-bit values are packed two per
    byte along the row, the first in the low nibble.
    """
    rows, width = table.shape
    limit = 2 ** (bits - 1) - 1
    blocks = table.reshape(rows, width // block, block)
    scales = np.abs(blocks).max(axis=-1) / limit
    scales[scales == 0] = 1.0
    data = (np.clip(np.round(blocks / scales[..., None]), -limit, limit) + limit + 1).astype(np.uint8)
    data = data.reshape(rows, width)
    if bits == 4:
        data = data[:, 0::2] | (data[:, 1::2] << 4)
    return data, scales.astype(np.float32)


def _summary(before, after, plan: dict[str, int]) -> list[str]:
    tables = {n.name for n in embedding_nodes(before)}
    count = collections.Counter((name in tables, bits) for name, bits in plan.items())
    quantized_tables = count[True, 4] + count[True, 8]
    return [
        f"MatMul weights: {count[False, 4]} at 4 bits, {count[False, 8]} at 8 bits; embedding tables: "
        f"{count[True, 4]} at 4 bits, {count[True, 8]} at 8 bits, {len(tables) - quantized_tables} float",
        f"size {size_mb(before):.1f} MB -> {size_mb(after):.1f} MB ({size_mb(after) / size_mb(before):.2f}x)",
    ]


def _fused_leftovers(model) -> list[str]:
    fused = sorted({n.op_type for n in model.graph.node if n.op_type in _FUSED_WEIGHT_OPS})
    return (
        [
            f"{', '.join(fused)} weights stay float: fused ops take no block-quantized weights; "
            "run this pass before fuse_transformer"
        ]
        if fused
        else []
    )
