"""Each graph pass: it fires, it does not fire and says why, and outputs still match (tight tolerance)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecompress.errors import InternalError
from edgecompress.graph.attention_mask_value import AttentionMaskValue, mask_value
from edgecompress.graph.fix_shapes import FixShapes
from edgecompress.graph.fold_constants import FoldConstants
from edgecompress.graph.fuse_transformer import FuseTransformer
from edgecompress.graph.remove_training_nodes import RemoveTrainingNodes
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.lower import export_onnx
from edgecompress.passes import PassContext, apply_pass

from conftest import SENTENCES
from helpers import pass_context

SEQ = 16


def run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    bundle = load_bundle(tiny_checkpoint)
    feeds = tokenize(bundle.tokenizer, [t for t, _ in SENTENCES], seq_len=SEQ, input_names=bundle.input_names)
    return bundle, export_onnx(bundle, feeds), {k: v[:1] for k, v in feeds.items()}


def context(bundle, **overrides) -> PassContext:
    return pass_context(bundle, **{"seq_len": SEQ, **overrides})


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


DROPOUT_MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) {
  d = Dropout(x)
  i = Identity(d)
  unused = Neg(x)
  y = Relu(i)
}
"""


def test_remove_training_nodes_fires_and_keeps_outputs():
    model = onnx.parser.parse_model(DROPOUT_MODEL)
    feeds = {"x": np.random.RandomState(0).randn(2, 4).astype(np.float32)}
    result, record = apply_pass(RemoveTrainingNodes(), copy(model), context_free())
    assert record.fired
    assert [n.op_type for n in result.graph.node] == ["Relu"]
    assert record.stats["removed"] == {"Dropout": 1, "Identity": 1, "Neg": 1}
    np.testing.assert_array_equal(run(result, feeds), run(model, feeds))


def test_remove_training_nodes_skips_with_reason():
    model = onnx.parser.parse_model("""
<ir_version: 9, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { y = Relu(x) }
""")
    result, record = apply_pass(RemoveTrainingNodes(), model, context_free())
    assert not record.fired
    assert record.notes == ["skipped: no Dropout, Identity or dead nodes in the graph"]


def context_free() -> PassContext:
    return pass_context(seq_len=None, dynamic_shapes=True)


def test_fuse_transformer_fuses_one_attention_per_layer_and_matches(tiny):
    bundle, model, feeds = tiny
    fused, record = apply_pass(FuseTransformer(), copy(model), context(bundle))
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Attention") == bundle.num_layers == 2
    assert ops.count("SkipLayerNormalization") == 2 * bundle.num_layers
    assert record.stats["fused"]["Attention"] == 2
    assert "2 Attention" in record.notes[0]
    np.testing.assert_allclose(run(fused, feeds), run(model, feeds), atol=1e-5)


def test_fuse_transformer_without_a_config_counts_blocks_by_softmax_and_fails_loudly(tiny):
    """Without a config the fuser must read heads off the graph; where it cannot, the export stops.

    (The positive case, a third-party ONNX file fused 3/3, is in tests/test_export_onnx_intake.py.)
    """
    bundle, model, _ = tiny
    with pytest.raises(InternalError, match="0 fused attention ops for 2 encoder layers"):
        apply_pass(FuseTransformer(), copy(model), context(bundle, num_heads=None, hidden_size=None, num_layers=None))


def test_fuse_transformer_skips_a_graph_without_attention():
    model = onnx.parser.parse_model("""
<ir_version: 9, opset_import: ["" : 17]>
g (float[2, 4] x, float[4, 4] w) => (float[2, 4] y) { y = MatMul(x, w) }
""")
    _, record = apply_pass(FuseTransformer(), model, context_free())
    assert (record.fired, record.notes) == (
        False,
        ["skipped: no Softmax in the graph: nothing that looks like attention to fuse"],
    )


def test_fuse_transformer_fails_loudly_when_attention_fusion_falls_short(tiny):
    bundle, model, _ = tiny
    with pytest.raises(InternalError, match="attention fusion fell short: 2 fused attention ops for 5"):
        apply_pass(FuseTransformer(), copy(model), context(bundle, num_layers=5))


def test_fuse_transformer_notes_unfused_attention_without_warning_when_not_required(tiny, caplog):
    bundle, model, _ = tiny
    with caplog.at_level("INFO", logger="edgecompress.graph.fuse_transformer"):
        _, record = apply_pass(FuseTransformer(require_attention=False), copy(model), context(bundle, num_layers=5))
    assert (
        "note: 2 fused attention ops for 5 encoder layers; attention runs unfused (require_attention = false "
        "in the recipe)" in record.notes
    )
    assert not any("WARNING" in note for note in record.notes)
    assert [r.levelname for r in caplog.records if "fell short" in r.getMessage()] == ["INFO"]


def test_fix_shapes_fixes_inputs_and_keeps_outputs(tiny):
    bundle, model, feeds = tiny
    fixed, record = apply_pass(FixShapes(), copy(model), context(bundle))
    assert record.fired
    for value in fixed.graph.input:
        assert [d.dim_value for d in value.type.tensor_type.shape.dim] == [1, SEQ]
    np.testing.assert_allclose(run(fixed, feeds), run(model, feeds), atol=1e-6)


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"dynamic_shapes": True}, "skipped: the device profile asks for dynamic shapes"),
        ({"seq_len": None}, "skipped: no seq_len given"),
    ],
)
def test_fix_shapes_skips_with_reason(tiny, overrides, reason):
    bundle, model, _ = tiny
    _, record = apply_pass(FixShapes(), copy(model), context(bundle, **overrides))
    assert (record.fired, record.notes) == (False, [reason])


def test_fix_shapes_skips_fixed_graph(tiny):
    bundle, model, _ = tiny
    fixed, _ = apply_pass(FixShapes(), copy(model), context(bundle))
    _, record = apply_pass(FixShapes(), fixed, context(bundle))
    assert record.notes == ["skipped: all input dims are already fixed"]


def test_fold_constants_folds_shape_arithmetic_after_fixing(tiny):
    bundle, model, feeds = tiny
    fixed, _ = apply_pass(FixShapes(), copy(model), context(bundle))
    folded, record = apply_pass(FoldConstants(), copy(fixed), context(bundle))
    assert record.fired
    assert record.stats["nodes_after"] < record.stats["nodes_before"]
    shape_ops = lambda m: sum(n.op_type == "Shape" for n in m.graph.node)  # noqa: E731
    assert shape_ops(folded) < shape_ops(fixed)
    np.testing.assert_allclose(run(folded, feeds), run(model, feeds), atol=1e-5)


def test_fold_constants_does_not_fire_on_a_graph_without_constants():
    model = onnx.parser.parse_model("""
<ir_version: 9, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { y = Relu(x) }
""")
    _, record = apply_pass(FoldConstants(), model, context_free())
    assert not record.fired
    assert record.notes == ["nodes 1 -> 1"]


# onnxscript's folder writes a folded Shape read by an unfoldable node as Constant<value_ints=...>, as on the
# third-party MiniLM-L3 file (issue 17, item 1).
SHAPE_READ_BY_WHERE = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[1, 4] x, int64[2] n) => (int64[2] y) {
  s = Shape(x)
  e = Equal(s, n)
  y = Where(e, n, s)
}
"""


def test_fold_constants_leaves_every_constant_as_a_tensor_onnxruntime_can_infer():
    from edgecompress.graph._quant_common import with_contrib_shapes

    model = onnx.parser.parse_model(SHAPE_READ_BY_WHERE)
    folded, record = apply_pass(FoldConstants(), copy(model), context_free())
    constants = [n for n in folded.graph.node if n.op_type == "Constant"]
    assert constants and all([a.name for a in n.attribute] == ["value"] for n in constants)
    assert record.stats["constants_as_tensors"] == 1
    with_contrib_shapes(folded)  # ONNX Runtime's symbolic inference: AttributeError on value_ints
    feeds = {"x": np.zeros((1, 4), np.float32), "n": np.array([1, 5], np.int64)}
    np.testing.assert_array_equal(run(folded, feeds), run(model, feeds))


def test_contrib_shapes_read_attribute_constants_of_an_input_file():
    """A graph that never went through fold_constants (an input file) may carry them too."""
    from edgecompress.graph._quant_common import with_contrib_shapes

    model = onnx.parser.parse_model("""
<ir_version: 9, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[4, 1] y) {
  s = Constant <value_ints = [4, 1]> ()
  y = Reshape(x, s)
}
""")
    inferred = with_contrib_shapes(model)
    assert [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == [4, 1]


def test_apply_pass_names_the_pass_whose_precondition_crashes():
    from edgecompress.passes import Pass

    class Broken(Pass):
        name, stage = "broken_precondition", "graph"

        def requires(self, model, ctx):
            return None.HasField("x")

    with pytest.raises(InternalError) as raised:
        apply_pass(Broken(), onnx.ModelProto(), context_free())
    message = str(raised.value)
    assert message.startswith("pass 'broken_precondition' could not check its preconditions: AttributeError: ")
    assert message.endswith("please report it)")


def _fused(tiny) -> onnx.ModelProto:
    bundle, model, _ = tiny
    fused, _ = apply_pass(FuseTransformer(), copy(model), context(bundle))
    return fused


def _mask_values(model) -> list[float]:
    return [mask_value(n) for n in model.graph.node if n.op_type in ("Attention", "QAttention")]


def test_attention_mask_value_fires_on_fused_attention_and_keeps_outputs(tiny):
    bundle, _, _ = tiny
    fused = _fused(tiny)
    calibration = tokenize(bundle.tokenizer, [t for t, _ in SENTENCES], seq_len=SEQ, input_names=bundle.input_names)
    assert calibration["attention_mask"].min() == 0  # the rows are padded, or the mask value would not matter
    result, record = apply_pass(AttentionMaskValue(), copy(fused), context(bundle, calibration=calibration))
    assert record.fired and not record.lossy
    assert _mask_values(fused) == [-10000.0, -10000.0] and _mask_values(result) == [-60.0, -60.0]
    assert record.notes[0] == "mask_filter_value -10000 -> -60 on 2 fused attention node(s) (2 Attention)"
    assert record.notes[1].startswith("outputs on 8 padded calibration rows: max |diff| ")
    assert record.stats["max_abs_diff"] <= 1e-6
    np.testing.assert_allclose(run(result, calibration), run(fused, calibration), rtol=0, atol=1e-6)


def test_attention_mask_value_checks_synthetic_padded_rows_without_data(tiny):
    bundle, _, _ = tiny
    _, record = apply_pass(AttentionMaskValue(), _fused(tiny), context(bundle))
    assert record.notes[1].startswith("outputs on 8 padded synthetic rows: max |diff| ")
    assert record.stats["max_abs_diff"] <= 1e-6


def test_attention_mask_value_survives_quantization_into_qattention(tiny):
    from edgecompress.graph.quantize_dynamic import quantize_nodes, weighted_nodes

    bundle, _, _ = tiny
    fast, _ = apply_pass(AttentionMaskValue(), _fused(tiny), context(bundle))
    quantized = quantize_nodes(fast, [n.name for n in weighted_nodes(fast)])
    assert _mask_values(quantized) == [-60.0, -60.0]
    assert {n.op_type for n in quantized.graph.node} >= {"QAttention"}


def test_attention_mask_value_fails_loudly_when_padding_would_get_attention(tiny):
    """A mask value near 0 lets padded keys take attention: ensures compares outputs and says so."""
    bundle, _, _ = tiny
    fused = _fused(tiny)
    too_close = AttentionMaskValue.__new__(AttentionMaskValue)  # bypass the option range check on purpose
    object.__setattr__(too_close, "mask_filter_value", -0.5)
    with pytest.raises(InternalError, match="mask_filter_value = -0.5 changed the outputs by"):
        apply_pass(too_close, copy(fused), context(bundle))


def test_attention_mask_value_skips_unfused_and_already_set_graphs(tiny):
    bundle, model, _ = tiny
    _, record = apply_pass(AttentionMaskValue(), copy(model), context(bundle))
    assert (record.fired, record.notes) == (
        False,
        [
            "skipped: no fused Attention, QAttention or MultiHeadAttention node (an unfused attention takes its "
            "mask from the graph, not from this attribute)"
        ],
    )
    done, _ = apply_pass(AttentionMaskValue(), _fused(tiny), context(bundle))
    _, again = apply_pass(AttentionMaskValue(), done, context(bundle))
    assert again.notes == ["skipped: every fused attention node already has mask_filter_value = -60"]


def test_attention_mask_value_rejects_values_on_the_slow_path():
    from edgecompress.errors import UserError

    with pytest.raises(UserError, match=r"mask_filter_value.* is -10000"):
        AttentionMaskValue(mask_filter_value=-10000.0)
