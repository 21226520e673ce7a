"""Our own attention rule (graph/attention_to_mha.py): it fires once per layer on MobileBERT and MPNet as they
export, the outputs stay those of the unfused graph on padded rows, it says why when it does not fire, and
the `.tflite` lowering of what it writes computes what ONNX Runtime does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgecompress.graph.attention_to_mha import fuse_attention, why_not
from edgecompress.graph.fuse_transformer import FuseTransformer
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.lower import export_onnx
from edgecompress.passes import apply_pass

from conftest import SENTENCES
from family_models_b import build_family_checkpoint
from helpers import pass_context
from test_tflite_backend import build, check, const, value

BATCH, SEQ, HEADS, HEAD_SIZE = 1, 6, 2, 4
WIDTH = HEADS * HEAD_SIZE
F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(7)


def attention_block(*, bias: bool = False, mask_from: str = "attention_mask", head_size_input: bool = False):
    """One eager-attention block as the TorchScript exporter writes it: projections, head split (transformers
    5's -1 heads), scores scaled by Div, [a position bias,] the float32-min padding mask, Softmax, merge."""
    nodes = [helper.make_node("MatMul", ["x", f"W{p}"], [f"{p}0"]) for p in "qkv"] + [
        helper.make_node("Add", [f"{p}0", f"b{p}"], [p]) for p in "qkv"
    ]
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes.append(helper.make_node("Reshape", [p, "head_split" if head_size_input else "split"], [f"{p}4"]))
        nodes.append(helper.make_node("Transpose", [f"{p}4"], [f"{p}t"], perm=perm))
    nodes += [
        helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
        helper.make_node("Div", ["scores", "sqrt_h"], ["scaled"]),
        # extended mask: (1 - mask[:, None, None, :]) * float32 min
        helper.make_node("Unsqueeze", [mask_from, "axes12"], ["mask4"]),
        helper.make_node("Cast", ["mask4"], ["maskf"], to=F),
        helper.make_node("Sub", ["one", "maskf"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "fmin"], ["additive"]),
    ]
    if bias:
        nodes.append(helper.make_node("Add", ["scaled", "position_bias"], ["biased"]))
    nodes += [
        helper.make_node("Add", ["biased" if bias else "scaled", "additive"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vt"], ["context"]),
        helper.make_node("Transpose", ["context"], ["merged"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["merged", "merge"], ["y"]),
    ]
    inits = [const(f"W{p}", RNG.normal(0, 0.6, (WIDTH, WIDTH)).astype(np.float32)) for p in "qkv"]
    inits += [const(f"b{p}", RNG.normal(0, 0.3, WIDTH).astype(np.float32)) for p in "qkv"]
    inits += [
        const("split", np.array([0, 0, -1, HEAD_SIZE], np.int64)),
        const("merge", np.array([0, 0, -1], np.int64)),
        const("sqrt_h", np.array(np.sqrt(HEAD_SIZE), np.float32)),
        const("axes12", np.array([1, 2], np.int64)),
        const("one", np.array(1.0, np.float32)),
        const("fmin", np.array(np.finfo(np.float32).min, np.float32)),
    ]
    if bias:
        inits.append(const("position_bias", RNG.normal(0, 2.0, (1, HEADS, SEQ, SEQ)).astype(np.float32)))
    inputs = [value("x", F, [BATCH, SEQ, WIDTH]), value("attention_mask", I64, [BATCH, SEQ])]
    if mask_from != "attention_mask":
        inputs.append(value(mask_from, I64, [BATCH, SEQ]))
    if head_size_input:
        inputs.append(value("head_split", I64, [4]))
    return build(nodes, inputs, [value("y", F, [BATCH, SEQ, WIDTH])], inits)


def padded_feeds(model, length: int) -> dict[str, np.ndarray]:
    mask = (np.arange(SEQ) < length).astype(np.int64)[None, :]
    feeds = {"x": RNG.normal(0, 1, (BATCH, SEQ, WIDTH)).astype(np.float32), "attention_mask": mask}
    names = {value.name for value in model.graph.input}
    if "other_mask" in names:
        feeds["other_mask"] = mask
    if "head_split" in names:
        feeds["head_split"] = np.array([0, 0, -1, HEAD_SIZE], np.int64)
    return feeds


def ort_outputs(model, feeds) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def op_types(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


# ---- the rule on inline graphs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["mobilebert-like", "with-position-bias"])
def test_the_block_becomes_one_multi_head_attention_with_the_same_outputs(bias):
    model = attention_block(bias=bias)
    fused, count = fuse_attention(model)
    assert count == 1
    assert op_types(fused).count("MultiHeadAttention") == 1
    assert not {"Softmax", "Transpose", "Reshape"} & set(op_types(fused))
    (node,) = (n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attributes["num_heads"] == HEADS
    assert attributes["scale"] == pytest.approx(1 / np.sqrt(HEAD_SIZE))
    assert (node.input[5] == "position_bias") if bias else len(node.input) == 5
    for length in (1, 3, SEQ):
        feeds = padded_feeds(model, length)
        np.testing.assert_allclose(ort_outputs(fused, feeds), ort_outputs(model, feeds), rtol=0, atol=1e-5)


def test_the_check_has_teeth_a_wrong_scale_moves_the_outputs():
    """The comparison above would catch a rewrite that got the math wrong: the same op with another scale."""
    model = attention_block()
    fused, _ = fuse_attention(model)
    node = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    next(a for a in node.attribute if a.name == "scale").f *= 1.5
    feeds = padded_feeds(model, 4)
    assert np.abs(ort_outputs(fused, feeds) - ort_outputs(model, feeds)).max() > 1e-2


@pytest.mark.parametrize(
    "case, reason",
    [
        ("mask", "no score operand is the padding mask of 'attention_mask' alone (0 found)"),
        ("head size", "the query split is not [batch, seq, heads, head_size] with a constant head size"),
    ],
)
def test_it_does_not_fire_and_says_why(case, reason):
    model = attention_block(mask_from="other_mask") if case == "mask" else attention_block(head_size_input=True)
    fused, count = fuse_attention(model)
    assert (count, fused) == (0, model)
    assert why_not(model) == [reason]


def test_a_graph_without_the_form_has_no_near_match():
    model = build(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [value("x", F, [1, 4])], [value("y", F, [1, 4])]
    )
    assert fuse_attention(model) == (model, 0)
    assert why_not(model) == []


# ---- the families ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{family: (bundle, unfused graph, feeds with padding)} for the families of the rule and DeBERTa-v2."""
    graphs = {}
    for family in ("mobilebert", "mpnet", "deberta-v2"):
        bundle = load_bundle(build_family_checkpoint(tmp_path_factory.mktemp(family) / "ckpt", family))
        texts = [text for text, _ in SENTENCES[:6]]
        feeds = tokenize(bundle.tokenizer, texts, seq_len=16, input_names=bundle.input_names)
        graphs[family] = bundle, export_onnx(bundle, feeds), feeds
    return graphs


@pytest.mark.parametrize("family", ["mobilebert", "mpnet"])
def test_fuse_transformer_fuses_every_layer_of_the_family_with_the_unfused_outputs(exported, family):
    bundle, graph, feeds = exported[family]
    reference = ort_outputs(graph, {name: feeds[name][:1] for name in bundle.input_names})
    context = pass_context(bundle, architecture=bundle.architecture, calibration=feeds)
    fused, record = apply_pass(FuseTransformer(), onnx.load_from_string(graph.SerializeToString()), context)
    assert record.stats["fused"]["MultiHeadAttention"] == record.stats["expected_attention"] == bundle.num_layers
    assert "Softmax" not in op_types(fused)
    assert any(note.startswith(f"{bundle.num_layers} MultiHeadAttention by our own rule") for note in record.notes)
    for row in range(len(feeds["input_ids"])):  # every text, padded to 16
        one = {name: feeds[name][row : row + 1] for name in bundle.input_names}
        got, want = ort_outputs(fused, one), ort_outputs(graph, one)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    assert np.abs(reference).max() > 1e-3  # the wide random weights make the outputs worth comparing


def test_deberta_v2_attention_is_not_of_the_rules_form(exported):
    """Its masking (Where before and after the Softmax, over query and key) is no key padding mask: no match."""
    _, graph, _ = exported["deberta-v2"]
    assert fuse_attention(graph) == (graph, 0)
    assert why_not(graph) == []


def test_the_fusion_check_fails_a_mobilebert_whose_rule_would_not_run(exported):
    """The family promises one fused op per layer; without its own rule (the optimizer alone) the export fails."""
    from edgecompress.architectures.mobilebert import MobileBert
    from edgecompress.errors import InternalError

    class OptimizerOnly(MobileBert):  # not registered
        own_attention_fusion = False

    bundle, graph, _ = exported["mobilebert"]
    blocks, copy = bundle.num_layers, onnx.load_from_string(graph.SerializeToString())
    with pytest.raises(InternalError, match=f"attention fusion fell short: 0 fused attention ops for {blocks}"):
        apply_pass(FuseTransformer(), copy, pass_context(bundle, architecture=OptimizerOnly()))


# ---- the TFLite lowering -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["mobilebert-like", "with-position-bias"])
def test_the_tflite_lowering_computes_what_onnxruntime_does(tmp_path, bias):
    fused, _ = fuse_attention(attention_block(bias=bias))
    ops = check(fused, padded_feeds(fused, 4), tmp_path)
    assert ops["SOFTMAX"] == 1 and ops["BATCH_MATMUL"] == 2
