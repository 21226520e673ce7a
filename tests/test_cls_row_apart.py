"""cls_row_apart (row 0 of each FFN computed apart) and its TFLite counterpart rejoin_row_slices."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends.tflite.legalize import legalize_for_tflite
from edgecompress.backends.tflite.rejoin_row_slices import rejoin_row_slices
from edgecompress.graph.cls_row_apart import ClsRowApart
from edgecompress.graph.quantize_dynamic import quantize_nodes, weighted_nodes
from edgecompress.passes import PassContext, apply_pass

from helpers import pass_context
from test_tflite_backend import tflite_device  # noqa: F401  (the tiny device with a .tflite, a fixture)

ROWS, WIDTH, HIDDEN = 6, 8, 12
RNG = np.random.default_rng(3)


def context() -> PassContext:
    return pass_context(seq_len=ROWS)


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(0, 0.4, shape).astype(np.float32), name)


def ffn_model(*, rows=ROWS, activation: str = "BiasGelu", second_weight: str = "W2", read_hidden_twice=False):
    """Y = X + MatMul(act(MatMul(X, W1) + b1), W2): a BERT feed-forward block with its residual."""
    act = (
        helper.make_node("BiasGelu", ["h", "b1"], ["a"], domain="com.microsoft")
        if activation == "BiasGelu"
        else helper.make_node("Relu", ["h"], ["a"])
    )
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h"], name="ffn/in"),
        act,
        helper.make_node("MatMul", ["a", second_weight], ["f"], name="ffn/out"),
        helper.make_node("Add", ["X", "f"], ["Y"], name="residual"),
    ]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    if read_hidden_twice:
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, rows, WIDTH])],
        outputs,
        [weight("W1", WIDTH, HIDDEN), weight("b1", HIDDEN), weight(second_weight, HIDDEN, WIDTH)],
    )
    return helper.make_model(
        graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


def op_types(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def rows_input(rows: int = ROWS) -> np.ndarray:
    x = RNG.normal(0, 1, (1, rows, WIDTH)).astype(np.float32)
    x[0, 0] *= 30  # a [CLS]-like row
    return x


# ---- the pass ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["BiasGelu", "Relu"])
def test_row_zero_is_computed_apart_with_the_same_outputs_and_weights(activation):
    model = ffn_model(activation=activation)
    result, record = apply_pass(ClsRowApart(), model, context())
    assert record.fired and record.stats["split"] == ["ffn/in"]
    assert op_types(result).count("Slice") == 2 and op_types(result).count("Concat") == 1
    assert op_types(result).count("MatMul") == 4
    assert {i.name for i in result.graph.initializer} >= {"W1", "b1", "W2"}  # both copies read one set
    x = rows_input()
    np.testing.assert_allclose(run(result, x), run(model, x), rtol=0, atol=1e-5)


def test_per_tensor_int8_of_the_other_rows_no_longer_sees_row_zero():
    """What the split buys: ORT's dynamic int8 FFN output on rows 1: is closer to float once row 0 is apart."""
    model = ffn_model()
    split, _ = apply_pass(ClsRowApart(), model, context())
    quantized = {
        name: quantize_nodes(m, [n.name for n in weighted_nodes(m)])
        for name, m in (("together", model), ("apart", split))
    }
    x = rows_input()
    exact = run(model, x)[0, 1:]
    error = {name: np.abs(run(m, x)[0, 1:] - exact).mean() for name, m in quantized.items()}
    assert error["apart"] < error["together"] / 3


def calibrated(rows_of_x: np.ndarray) -> PassContext:
    return pass_context(seq_len=ROWS, calibration={"X": rows_of_x}, calibration_source="calibration")


def test_only_blocks_whose_row_zero_widens_the_range_are_split():
    """Row 0 thirty times the others on the calibration rows: split; drawn like the others: kept whole, and the
    note gives the measured ratio."""
    outlier = np.concatenate([rows_input() for _ in range(4)])
    _, record = apply_pass(ClsRowApart(), ffn_model(), calibrated(outlier))
    assert record.fired and record.stats["split"] == ["ffn/in"]
    assert record.stats["row0_span_ratio"]["ffn/in"] > 5
    plain = RNG.normal(0, 1, (4, ROWS, WIDTH)).astype(np.float32)
    model = ffn_model()
    result, record = apply_pass(ClsRowApart(), model, calibrated(plain))
    assert not record.fired and record.stats["split"] == []
    assert op_types(result) == op_types(model)
    ratio = record.stats["row0_span_ratio"]["ffn/in"]
    assert ratio < 1.2
    assert record.notes == [
        "1 of 1 feed-forward block(s) kept whole: row 0 does not widen their int8 range (span of row 0 / span "
        f"of the other rows, median over calibration texts, below 1.2; per block: {ratio:.2f})"
    ]


def test_the_span_ratio_reads_only_the_unpadded_rows():
    """A padded row's activations do not count: with padding rows far out, row 0 still does not widen the range
    of the text rows."""
    from edgecompress.graph.cls_row_apart import feed_forwards, row0_span_ratios

    model = ffn_model()
    x = RNG.normal(0, 1, (2, ROWS, WIDTH)).astype(np.float32)
    x[:, 3:] *= 100  # rows 3: are padding
    mask = np.zeros((2, ROWS), np.int64)
    mask[:, :3] = 1
    ratios = row0_span_ratios(model, feed_forwards(model), {"X": x, "attention_mask": mask})
    whole = row0_span_ratios(model, feed_forwards(model), {"X": x})
    assert whole["ffn/in"] < 0.1 < ratios["ffn/in"]


@pytest.mark.parametrize(
    "case, model",
    [
        ("one MatMul", None),
        ("a value read outside the block", ffn_model(read_hidden_twice=True)),
        ("one row", ffn_model(rows=1)),
    ],
)
def test_graphs_without_a_splittable_block_are_left_alone(case, model):
    if model is None:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["X", "W1"], ["Y"])],
            "one",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, ROWS, WIDTH])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            [weight("W1", WIDTH, HIDDEN)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    result, record = apply_pass(ClsRowApart(), model, context())
    assert not record.fired and record.notes[0].startswith("skipped: no feed-forward block")
    assert op_types(result) == op_types(model)


# ---- the TFLite side: joined back ------------------------------------------------------------------------


def split_int8(model):
    split, _ = apply_pass(ClsRowApart(), model, context())
    return quantize_nodes(split, [n.name for n in weighted_nodes(split)])


def test_the_tflite_legalisation_joins_the_quantized_split_back_into_one_block():
    legal = legalize_for_tflite(split_int8(ffn_model()))
    assert "Slice" not in op_types(legal) and "Concat" not in op_types(legal)
    assert op_types(legal).count("DynamicQuantizeMatMul") == 2
    block_input = next(n for n in legal.graph.node if n.op_type == "DynamicQuantizeMatMul").input[0]
    assert block_input == "X"


def test_the_exact_lowering_keeps_the_split_it_must_reproduce():
    legal = legalize_for_tflite(split_int8(ffn_model()), rejoin_row_splits=False)
    assert op_types(legal).count("Slice") == 2 and op_types(legal).count("DynamicQuantizeMatMul") == 4


def test_copies_that_differ_are_not_joined():
    model = split_int8(ffn_model())
    other = next(n for n in model.graph.node if n.op_type == "MatMulInteger" and "other_rows" in n.name)
    changed = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == other.input[1])).copy()
    changed[0, 0] += 1
    model.graph.initializer.append(numpy_helper.from_array(changed, "W_other"))
    other.input[1] = "W_other"
    legal = legalize_for_tflite(model)
    assert op_types(legal).count("Slice") == 2 and op_types(legal).count("Concat") == 1


def test_a_split_that_stops_short_of_the_last_row_is_not_joined():
    split, _ = apply_pass(ClsRowApart(), ffn_model(), context())
    end = next(n for n in split.graph.node if n.op_type == "Slice" and "other_rows" in n.name).input[2]
    short = next(i for i in split.graph.initializer if i.name == end)
    short.CopyFrom(numpy_helper.from_array(np.array([ROWS - 1], np.int64), end))
    assert op_types(rejoin_row_slices(split)).count("Concat") == 1


def test_a_joined_float_block_computes_what_the_unsplit_one_does():
    model = ffn_model()
    split, _ = apply_pass(ClsRowApart(), model, context())
    joined = rejoin_row_slices(split)
    assert op_types(joined) == op_types(model)
    x = rows_input()
    np.testing.assert_allclose(run(joined, x), run(model, x), rtol=0, atol=1e-6)


# ---- end to end --------------------------------------------------------------------------------------------


# tflite_device is the fixture imported from test_tflite_backend, taken by name as pytest does.
def test_dynamic_int8_export_splits_for_onnxruntime_and_joins_for_litert(
    tiny_checkpoint,
    tflite_device,  # noqa: F811
    tiny_data,
    tmp_path,
):
    from edgecompress.backends.tflite.artifact import audit_tflite
    from edgecompress.pipeline import ExportRequest, run_export

    # The tiny random BERT's [CLS] row sits inside the other rows' range (a ratio under 1), so only a threshold
    # of 0 makes the pass split it; the trained teacher's blocks measure 1.44-4.95 (see the pass's docstring).
    recipe = tmp_path / "split.toml"
    recipe.write_text(
        'description = "dynamic int8, every FFN split"\nextends = "default"\n'
        '[[graph]]\npass = "cls_row_apart"\nmin_span_ratio = 0.0\n[[graph]]\npass = "quantize_dynamic"\n'
    )
    result = run_export(
        ExportRequest(
            model=tiny_checkpoint,
            device=str(tflite_device),
            out_root=tmp_path,
            data=tiny_data,
            recipe=str(recipe),
            measure=False,
        )
    )
    record = next(r for r in result.report.passes if r["name"] == "cls_row_apart")
    assert record["fired"] and len(record["stats"]["split"]) == 2  # the tiny BERT's two layers
    shipped = onnx.load(str(result.out_dir / "model.onnx"))
    assert op_types(shipped).count("Concat") >= 2
    histogram = audit_tflite(result.out_dir / "model.tflite").op_histogram
    assert "STRIDED_SLICE" not in histogram
    tflite = next(a for a in result.report.artifacts if a.file == "model.tflite")
    assert tflite.parity_vs_onnxruntime["prediction_agreement"] >= 0.99
