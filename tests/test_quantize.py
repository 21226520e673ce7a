"""Quantization passes on the tiny BERT: each fires, declines with a reason, and stays within a noise floor.

Quantization changes numbers on purpose, so outputs are held to an SQNR floor against the float graph
(not bit-exactness). The sensitivity analysis is checked on a model given one deliberate activation
outlier, the way real BERTs have them: only the MatMul reading it may stay float.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecompress.errors import UserError
from edgecompress.graph._quant_common import output_error, run_model
from edgecompress.graph.quantize_int4 import embedding_nodes, matmul_nodes
from edgecompress.passes import PassContext, apply_pass, make_pass
from edgecompress.recipe import load_recipe
from edgecompress.tasks.sequence_classification import SingleLabelClassification

from conftest import SENTENCES, build_tiny_checkpoint, write_csv
from helpers import pass_context

SEQ_LEN = 16
OUTLIER_NODE = "/model/bert/encoder/layer.1/output/dense/MatMul"
TEXTS = [text for text, _ in SENTENCES] * 2


def _bundle_and_feeds(checkpoint):
    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(checkpoint)
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=SEQ_LEN, input_names=bundle.input_names)
    return bundle, feeds


def _context(bundle, calibration=None) -> PassContext:
    return pass_context(bundle, seq_len=SEQ_LEN, calibration=calibration)


def _graph(checkpoint, *, fused: bool = True):
    """The tiny BERT exported and rewritten by the default recipe (or only its first pass, unfused)."""
    from edgecompress.lower import export_onnx

    bundle, feeds = _bundle_and_feeds(checkpoint)
    graph = export_onnx(bundle, feeds)
    passes = load_recipe("default").graph
    for p in passes if fused else passes[:1]:
        graph, _ = apply_pass(p, graph, _context(bundle))
    return graph, bundle, feeds


def _quantize(name, graph, bundle, calibration=None, **options):
    return apply_pass(make_pass("graph", name, options, "test"), graph, _context(bundle, calibration))


def _sqnr(graph, quantized, feeds) -> float:
    return output_error(run_model(graph, feeds), run_model(quantized, feeds), classifier=True).sqnr_db


def _ops(model) -> set[str]:
    return {node.op_type for node in model.graph.node}


@pytest.fixture(scope="module")
def fused(tiny_checkpoint):
    return _graph(tiny_checkpoint)


@pytest.fixture(scope="module")
def outlier_checkpoint(tmp_path_factory):
    """Tiny BERT whose layer-1 FFN has one unit stuck at a huge activation that the FFN's output projection
    ignores (zero weights): float outputs do not depend on it, but it stretches the activation range of
    exactly one MatMul, as the outlier features of real BERTs do. The projection is scaled up so that
    the FFN, nearly silent in a random model, matters to the logits."""
    import torch
    from transformers import BertForSequenceClassification

    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("outlier") / "checkpoint")
    model = BertForSequenceClassification.from_pretrained(str(folder))
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        layer.intermediate.dense.bias[5] = 1000.0
        layer.output.dense.weight *= 100.0
        layer.output.dense.weight[:, 5] = 0.0
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_dynamic_quantizes_fused_ops_without_data(fused):
    graph, bundle, feeds = fused
    quantized, record = _quantize("quantize_dynamic", graph, bundle)
    assert record.fired and record.lossy
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= _ops(quantized)
    assert "no calibration data: sensitivity analysis skipped, every supported node quantized" in record.notes
    assert record.stats["size_mb_after"] < record.stats["size_mb_before"]
    assert _sqnr(graph, quantized, feeds) >= 20.0


@pytest.mark.parametrize(
    "name, reason",
    [
        (
            "quantize_dynamic",
            "no MatMul, Gemm, Attention, EmbedLayerNormalization, Gather, LSTM or Conv with constant float weights",
        ),
        ("quantize_static", "no MatMul, Attention or EmbedLayerNormalization with constant float weights"),
        ("quantize_int4", "no MatMul or embedding Gather with constant float weights"),
    ],
)
def test_passes_do_not_fire_without_weights(tiny_checkpoint, name, reason):
    bundle, _ = _bundle_and_feeds(tiny_checkpoint)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    relu = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    _, record = _quantize(name, relu, bundle)
    assert not record.fired
    assert record.notes == [f"skipped: {reason}"]


def test_static_needs_calibration_data(fused):
    graph, bundle, _ = fused
    with pytest.raises(UserError, match="calibration data missing; pass --calibration or --train-data"):
        _quantize("quantize_static", graph, bundle)


def test_static_rejects_unknown_activation_type():
    with pytest.raises(UserError, match="activation_type"):
        make_pass("graph", "quantize_static", {"activation_type": "int4"}, "test")


def test_static_calibrates_matmul_activations(fused):
    graph, bundle, feeds = fused
    quantized, record = _quantize("quantize_static", graph, bundle, calibration=feeds)
    assert record.fired and record.lossy
    chosen = set(record.stats["quantized"])
    matmuls = [n for n in quantized.graph.node if n.op_type == "MatMul" and n.name in chosen]
    producers = {out: n.op_type for n in quantized.graph.node for out in n.output}
    assert matmuls and all(producers[n.input[0]] == "DequantizeLinear" for n in matmuls)
    assert {"QuantizeLinear", "QAttention"} <= _ops(quantized)
    assert any(note.startswith("sensitivity: ") for note in record.notes)
    assert _sqnr(graph, quantized, feeds) >= 15.0


def test_sensitivity_keeps_the_outlier_matmul_float(outlier_checkpoint):
    graph, bundle, feeds = _graph(outlier_checkpoint)
    quantized, record = _quantize("quantize_dynamic", graph, bundle, calibration=feeds)
    assert list(record.stats["kept_float"]) == [OUTLIER_NODE]
    assert any(note.startswith(f"kept float: {OUTLIER_NODE} (quantized alone: SQNR") for note in record.notes)
    assert OUTLIER_NODE in {n.name for n in quantized.graph.node if n.op_type == "MatMul"}
    assert _sqnr(graph, quantized, feeds) >= 20.0


def test_int4_quantizes_matmuls_and_embeddings_before_fusion(tiny_checkpoint):
    graph, bundle, feeds = _graph(tiny_checkpoint, fused=False)
    quantized, record = _quantize("quantize_int4", graph, bundle, mixed=False)
    assert record.fired and record.lossy
    assert {"MatMulNBits", "GatherBlockQuantized"} <= _ops(quantized)
    assert not matmul_nodes(quantized) and not embedding_nodes(quantized)
    assert record.notes[0] == (
        "MatMul weights: 12 at 4 bits, 0 at 8 bits; embedding tables: 0 at 4 bits, 3 at 8 bits, 0 float"
    )
    assert "mixed = false: every layer at 4 bits" in record.notes
    assert _sqnr(graph, quantized, feeds) >= 10.0


def test_int4_packs_4_bit_embedding_tables(tiny_checkpoint):
    graph, bundle, feeds = _graph(tiny_checkpoint, fused=False)
    quantized, record = _quantize("quantize_int4", graph, bundle, mixed=False, embedding_bits=4)
    tables = [n for n in quantized.graph.node if n.op_type == "GatherBlockQuantized"]
    assert tables and all(a.i == 4 for n in tables for a in n.attribute if a.name == "bits")
    assert "embedding tables: 3 at 4 bits, 0 at 8 bits, 0 float" in record.notes[0]
    assert _sqnr(graph, quantized, feeds) >= 10.0


def test_int4_rejects_unsupported_embedding_bits():
    with pytest.raises(UserError, match="embedding_bits"):
        make_pass("graph", "quantize_int4", {"embedding_bits": 3}, "test")


@pytest.mark.parametrize("min_sqnr_db, bits", [(0.0, 4), (200.0, 8)])
def test_int4_mixed_chooses_bits_per_layer_from_measurement(tiny_checkpoint, min_sqnr_db, bits):
    graph, bundle, feeds = _graph(tiny_checkpoint, fused=False)
    _, record = _quantize("quantize_int4", graph, bundle, calibration=feeds, min_sqnr_db=min_sqnr_db)
    layer_bits = {bit for name, bit in record.stats["bits"].items() if "layer." in name}
    assert layer_bits == {bits}
    assert any(note.startswith(f"layer.1: {bits} bits") for note in record.notes)


def test_int4_after_fusion_says_what_stays_float(fused):
    graph, bundle, _ = fused
    _, record = _quantize("quantize_int4", graph, bundle, mixed=False)
    assert any(note.startswith("Attention, EmbedLayerNormalization weights stay float") for note in record.notes)


def test_recipes_place_quantization_after_or_before_fusion():
    order = {
        name: [p.name for p in load_recipe(name).graph] for name in ("dynamic-int8", "int8", "int4", "int8-int4-mixed")
    }
    assert order["dynamic-int8"][-1] == "quantize_dynamic"
    assert order["int8"][-1] == "quantize_static"
    for name in ("int4", "int8-int4-mixed"):
        assert order[name].index("quantize_int4") < order[name].index("fuse_transformer")


def test_int8_recipe_exports_and_verifies(tiny_checkpoint, tiny_device, tmp_path):
    from edgecompress.pipeline import ExportRequest, run_export

    data = write_csv(tmp_path / "eval.csv", SENTENCES)
    result = run_export(
        ExportRequest(
            model=tiny_checkpoint,
            device=str(tiny_device),
            out_root=tmp_path / "dist",
            data=data,
            recipe="int8",
            measure=False,
        )
    )
    record = next(r for r in result.report.passes if r["name"] == "quantize_static")
    assert record["fired"] and record["lossy"]
    assert "QAttention" in _ops(onnx.load(str(result.out_dir / "model.onnx")))
    onnx_artifact = next(a for a in result.report.artifacts if a.kind == "onnx")
    assert onnx_artifact.parity["prediction_agreement"] >= 0.99


def _ops_count(model, op: str) -> int:
    return sum(node.op_type == op for node in model.graph.node)


def test_int4_quantizes_large_gemms_and_leaves_small_ones_float(tiny_checkpoint):
    graph, bundle, feeds = _graph(tiny_checkpoint, fused=False)
    assert _ops_count(graph, "Gemm") == 2  # pooler 32 x 32 and classifier 2 x 32
    kept, record = _quantize("quantize_int4", graph, bundle, mixed=False)
    assert _ops_count(kept, "Gemm") == 2 and not any("Gemm(s)" in note for note in record.notes)
    quantized, record = _quantize("quantize_int4", graph, bundle, mixed=False, gemm_min_weights=0)
    assert _ops_count(quantized, "Gemm") == 0
    assert _ops_count(quantized, "MatMulNBits") == 12 + 2
    assert (
        "2 Gemm(s) with a large constant weight rewritten as MatMul + Add to take block-quantized weights"
        in record.notes
    )
    assert record.stats["size_mb_after"] < kept.ByteSize() / 1e6
    assert _sqnr(graph, quantized, feeds) >= 10.0


def test_dynamic_int8_quantizes_the_heads_large_gemms(fused):
    """ONNX Runtime's quantizer renames a Gemm it rewrites, so the pooler was never among the nodes picked and
    stayed float; rewritten under its own name first, it is quantized like every MatMul (the logits projection,
    2 x 32, below the threshold, stays float)."""
    graph, bundle, feeds = fused
    assert _ops_count(graph, "Gemm") == 2  # pooler 32 x 32 and classifier 2 x 32
    kept, _ = _quantize("quantize_dynamic", graph, bundle, gemm_min_weights=10**9)
    quantized, record = _quantize("quantize_dynamic", graph, bundle, gemm_min_weights=32 * 32)
    assert _ops_count(quantized, "MatMulInteger") == _ops_count(kept, "MatMulInteger") + 1
    assert "1 Gemm(s) with a large constant weight rewritten as MatMul + Add to take int8 weights" in record.notes
    # 3 of every weight's 4 bytes (3 KB), less its scales and the int8 chain's nodes
    assert quantized.ByteSize() < kept.ByteSize() - 1024
    assert _sqnr(graph, quantized, feeds) >= 20.0


def test_int4_size_estimate_matches_the_file(tiny_checkpoint):
    from edgecompress.graph.quantize_int4 import estimated_size_mb, quantize_weights

    graph, _, _ = _graph(tiny_checkpoint, fused=False)
    for bits in (4, 8):
        plan = {n.name: bits for n in matmul_nodes(graph)} | {n.name: 8 for n in embedding_nodes(graph)}
        actual = quantize_weights(graph, plan, block_size=32, accuracy_level=0).ByteSize() / 1e6
        assert estimated_size_mb(graph, plan, 32) == pytest.approx(actual, abs=0.005)  # node and name bytes


@pytest.mark.parametrize("cap, layer_bits", [(1.0, {8}), (0.01, {4})])
def test_int4_mixed_size_cap_keeps_extra_bits_only_where_they_fit(tiny_checkpoint, cap, layer_bits):
    graph, bundle, feeds = _graph(tiny_checkpoint, fused=False)
    _, record = _quantize("quantize_int4", graph, bundle, calibration=feeds, min_sqnr_db=200.0, max_size_ratio=cap)
    assert {bit for name, bit in record.stats["bits"].items() if "layer." in name} == layer_bits
    returned = [note for note in record.notes if note.startswith(f"size cap {cap:g}x: ")]
    if layer_bits == {4}:
        groups = sorted(note.split(": ")[1].split(" stays")[0] for note in returned)
        assert groups == ["embeddings", "layer.0", "layer.1"]
        assert any(note.startswith(f"size cap {cap:g}x (") and "not reached" in note for note in record.notes)
    else:
        assert not returned


def test_int4_size_cap_skips_a_widening_that_does_not_fit_and_keeps_a_smaller_one(tiny_checkpoint):
    """The neediest group (lowest SQNR) is also the costliest: it does not fit, a cheaper one does and keeps its
    8 bits; one large group that does not fit (MiniLM's word table) must not push out small ones that do."""
    from edgecompress.graph._quant_common import Error
    from edgecompress.graph.quant_sensitivity import Trial, layer_groups
    from edgecompress.graph.quantize_int4 import _fit_size_cap, estimated_size_mb

    graph, _, _ = _graph(tiny_checkpoint, fused=False)
    groups = layer_groups(graph, matmul_nodes(graph)) | {"embeddings": [n.name for n in embedding_nodes(graph)]}
    first = {name: 4 for names in groups.values() for name in names}
    base = estimated_size_mb(graph, first, 32)
    cost = {g: estimated_size_mb(graph, first | {n: 8 for n in names}, 32) - base for g, names in groups.items()}
    big, small = max(cost, key=cost.get), min(cost, key=cost.get)
    assert cost[big] > cost[small]
    sqnr = {g: 20.0 for g in groups} | {big: 5.0, small: 10.0}
    trials = {g: Trial(g, tuple(names), Error(sqnr[g], 0.0, 0, 8)) for g, names in groups.items()}
    plan = {name: 8 for name in first}
    ratio = (base + cost[small] + 1e-4) / (graph.ByteSize() / 1e6)
    notes = _fit_size_cap(graph, plan, first, groups, trials, ratio, 32)
    assert {plan[n] for n in groups[small]} == {8}
    assert {plan[n] for g, names in groups.items() if g != small for n in names} == {4}
    assert notes[0].startswith(f"size cap {ratio:g}x: {big} stays at 4 bits (SQNR 5.0 dB")
    assert estimated_size_mb(graph, plan, 32) <= ratio * graph.ByteSize() / 1e6


def test_trim_gathered_tables_cuts_the_position_table_exactly(tiny_checkpoint):
    from edgecompress.intake.data import tokenize

    graph, bundle, _ = _graph(tiny_checkpoint, fused=False)
    passes = load_recipe("int4").graph
    assert passes[-1].name == "trim_gathered_tables"
    for p in passes[1:-1]:  # quantize_int4 ... fold_constants, as the recipe orders and configures them
        graph, _ = apply_pass(p, graph, _context(bundle))
    assert any(n.op_type == "GatherBlockQuantized" for n in graph.graph.node)
    trimmed, record = _quantize("trim_gathered_tables", graph, bundle)
    assert record.fired
    assert record.notes[0].endswith("cut to the 16 rows its constant indices read (of 64)")
    assert record.stats["size_mb_after"] < record.stats["size_mb_before"]
    rows = tokenize(bundle.tokenizer, TEXTS, seq_len=SEQ_LEN, input_names=bundle.input_names)
    assert (run_model(trimmed, rows) == run_model(graph, rows)).all()


def test_trim_gathered_tables_skips_gathers_by_runtime_indices(fused):
    graph, bundle, _ = fused
    _, record = _quantize("trim_gathered_tables", graph, bundle)
    assert not record.fired
    assert record.notes == [
        "skipped: no Gather of rows of a constant table by constant, non-negative indices "
        "that leave rows unread (run after fix_shapes and fold_constants to make position "
        "ids constant)"
    ]


def test_static_feeds_float_ops_the_float_activation(fused):
    """The residual input of each SkipLayerNormalization reads the LayerNorm output itself, not its uint8 copy."""
    graph, bundle, feeds = fused
    quantized, _ = _quantize("quantize_static", graph, bundle, calibration=feeds)
    producers = {out: n.op_type for n in quantized.graph.node for out in n.output}
    skip_inputs = [name for n in quantized.graph.node if n.op_type == "SkipLayerNormalization" for name in n.input[:2]]
    assert skip_inputs and not any(producers.get(name) == "DequantizeLinear" for name in skip_inputs)


def test_sensitivity_trials_are_read_back_from_the_cache_for_the_same_graph_and_rows(fused, tmp_path, monkeypatch):
    """A second export of the same graph on the same calibration rows quantizes nothing to decide; other rows do."""
    from edgecompress.graph.quant_sensitivity import Probe
    from edgecompress.graph.quantize_dynamic import QUANTIZER_ID, quantize_nodes, weighted_nodes

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    graph, _, feeds = fused
    names = [n.name for n in weighted_nodes(graph)][:2]
    calls = []

    def counted(model, nodes):
        calls.append(tuple(nodes))
        return quantize_nodes(model, nodes)

    first = Probe(graph, feeds, counted, quantizer_id=QUANTIZER_ID).trial("pair", names)
    again = Probe(graph, feeds, counted, quantizer_id=QUANTIZER_ID).trial("pair", names)
    assert calls == [tuple(names)] and again.error == first.error
    assert len(list((tmp_path / "sensitivity").glob("*.json"))) == 1
    other_rows = {name: values[:3] for name, values in feeds.items()}
    Probe(graph, other_rows, counted, quantizer_id=QUANTIZER_ID).trial("pair", names)
    Probe(graph, feeds, counted, quantizer_id=QUANTIZER_ID + " changed").trial("pair", names)
    assert len(calls) == 3 and len(list((tmp_path / "sensitivity").glob("*.json"))) == 3


# ---- judged by the task's own agreement, alone and together (issue 15) -------------------------------------------


def test_trials_count_the_units_of_the_tasks_own_agreement():
    """A regressor's trial counts texts moved beyond its tolerance and a token classifier's real tokens that change
    tag: what verification then holds the artifact to. Argmax flips of the output saw neither."""
    from edgecompress.tasks.regression import Regression
    from edgecompress.tasks.token_classification import TokenClassification

    values = np.array([[0.0], [1.0], [2.0], [3.0]])
    moved = values + np.array([[0.0], [0.3], [0.0], [0.0]])
    error = output_error(values, moved, classifier=True, task=Regression(), feeds={})
    assert (error.flips, error.units, error.unit) == (1, 4, "texts")
    assert error.describe().endswith("1/4 texts disagree")
    assert output_error(values, moved, classifier=True).flips == 0  # the argmax of one column never moves
    tags = np.zeros((2, 3, 2))
    tags[..., 0] = 1.0
    changed = tags.copy()
    changed[0, 1], changed[1, 2] = [0.0, 2.0], [0.0, 2.0]  # the second change is on padding: not compared
    feeds = {"attention_mask": np.array([[1, 1, 1], [1, 1, 0]])}
    error = output_error(tags, changed, classifier=True, task=TokenClassification(["O", "B-PER"]), feeds=feeds)
    assert (error.flips, error.units, error.unit) == (1, 5, "tokens")


def test_thresholds_never_allow_more_disagreement_than_verification():
    from edgecompress.graph.quant_sensitivity import Thresholds
    from edgecompress.tasks.sentence_embedding import SentenceEmbedding

    label = SingleLabelClassification(None)
    assert Thresholds.for_task(20.0, 0.02, label).max_flip_rate == 0.02
    assert Thresholds.for_task(20.0, 0.10, label).max_flip_rate == pytest.approx(0.05)  # verification's 95%
    assert Thresholds.for_task(20.0, 0.02, SentenceEmbedding()).max_flip_rate == 0.0  # every text at cosine 0.99
    assert Thresholds.for_task(20.0, 0.10, None).max_flip_rate == 0.10  # outside an export: as given


class _WithinValues(SingleLabelClassification):
    """Agreement on a text: every output value within `tolerance` of the reference's (a real task's rule, set
    between what one group and all of them together move the outputs, so that each passes alone and the whole
    does not)."""

    def __init__(self, tolerance: float):
        super().__init__(None)
        self.tolerance = tolerance
        self.agreement_meaning = f"every value within {tolerance:.4g}"

    def agrees(self, a, b, feeds):
        return (np.abs(a - b) <= self.tolerance).all(-1)


def _twin_matmuls():
    """`y = x W + x W'` with W' a copy of W, each MatMul named in its own layer: quantized, the two make the same
    error (same weights, one quantized x), so together they make twice the error of either alone."""
    from onnx import numpy_helper

    weight = np.random.RandomState(0).randn(32, 4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["y0"], name="/encoder/layer.0/MatMul"),
        helper.make_node("MatMul", ["x", "w1"], ["y1"], name="/encoder/layer.1/MatMul"),
        helper.make_node("Add", ["y0", "y1"], ["logits"], name="/head/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "twins",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", 4])],
        [numpy_helper.from_array(weight, "w0"), numpy_helper.from_array(weight.copy(), "w1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model, {"x": np.random.RandomState(1).randn(24, 32).astype(np.float32)}


def _judged_by(task, name: str, model, feeds, **options):
    """`name` with the task's agreement and no disagreement allowed, no SQNR floor."""
    context = pass_context(seq_len=None, calibration=feeds, input_names=("x",), task=task)
    options = {"max_flip_rate": 0.0, "min_sqnr_db": 0.0, **options}
    return apply_pass(make_pass("graph", name, options, "test"), model, context)


def _alone(quantize, model, feeds) -> float:
    """The largest output change of quantizing the first twin alone."""
    return float(np.abs(run_model(quantize(model, ["/encoder/layer.0/MatMul"]), feeds) - run_model(model, feeds)).max())


def test_nodes_that_pass_alone_but_not_together_stay_float_until_the_rest_passes(tmp_path, monkeypatch):
    from edgecompress.graph.quantize_dynamic import quantize_nodes

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    model, feeds = _twin_matmuls()
    task = _WithinValues(1.5 * _alone(quantize_nodes, model, feeds))  # one twin's error passes, two do not
    quantized, record = _judged_by(task, "quantize_dynamic", model, feeds)
    assert record.stats["quantized"] == ["/encoder/layer.1/MatMul"]
    assert list(record.stats["kept_float"]) == ["/encoder/layer.0/MatMul"]
    assert any(
        note.startswith("kept float: /encoder/layer.0/MatMul (quantized together with the others: ")
        and "texts disagree > 0.0%" in note
        for note in record.notes
    ), record.notes
    assert record.stats["error"]["flips"] == 0 and record.stats["error"]["unit"] == "texts"
    assert task.agreement(run_model(model, feeds), run_model(quantized, feeds), feeds) == 1.0


def test_int4_widens_the_worst_group_while_the_groups_together_break_the_task(tmp_path, monkeypatch):
    from edgecompress.graph.quantize_int4 import quantize_weights

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    model, feeds = _twin_matmuls()

    def at_4_bits(m, names):
        return quantize_weights(m, {n: 4 for n in names}, block_size=32, accuracy_level=0)

    task = _WithinValues(1.5 * _alone(at_4_bits, model, feeds))
    quantized, record = _judged_by(task, "quantize_int4", model, feeds, block_size=32)
    assert record.stats["bits"] == {"/encoder/layer.0/MatMul": 8, "/encoder/layer.1/MatMul": 4}
    assert any(note.startswith("layer.0: 8 bits (quantized together: ") for note in record.notes), record.notes
    assert task.agreement(run_model(model, feeds), run_model(quantized, feeds), feeds) == 1.0


def test_the_trial_cache_is_keyed_by_the_tasks_agreement(fused, tmp_path, monkeypatch):
    """Trials judged by one task's agreement are not read back for another's (a regressor's tolerance is not a
    label's argmax), nor for the same graph judged by argmax flips."""
    from edgecompress.graph.quant_sensitivity import Probe
    from edgecompress.graph.quantize_dynamic import QUANTIZER_ID, quantize_nodes, weighted_nodes
    from edgecompress.tasks.regression import Regression

    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    graph, bundle, feeds = fused
    names = [n.name for n in weighted_nodes(graph)][:2]
    for task in (None, bundle.task, Regression(), bundle.task):
        Probe(graph, feeds, quantize_nodes, quantizer_id=QUANTIZER_ID, task=task).trial("pair", names)
    assert len(list((tmp_path / "sensitivity").glob("*.json"))) == 3
