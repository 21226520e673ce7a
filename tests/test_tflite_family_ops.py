"""TFLite lowerings of the ops ALBERT, MobileBERT, DeBERTa-v2 and MPNet add: each checked against ONNX Runtime
on a tiny inline graph (LiteRT and ORT outputs within 1e-5), with the builtins it must become."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgecompress.backends.tflite.legalize import legalize_for_tflite

from test_tflite_backend import build, check, const, floats, value

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def test_pad_with_zeros_is_pad_and_with_a_value_padv2(tmp_path):
    nodes = [
        helper.make_node("Pad", ["x", "pads", ""], ["zero"]),
        helper.make_node("Pad", ["x", "pads_last", "fill"], ["filled"]),
    ]
    inits = [
        const("pads", np.array([0, 1, 0, 0, 0, 0], np.int64)),  # MobileBERT: one step along the sequence
        const("pads_last", np.array([0, 0, 2, 0, 0, 1], np.int64)),
        const("fill", np.array(-1.5, np.float32)),
    ]
    model = build(
        nodes, [value("x", F, [2, 4, 3])], [value("zero", F, [2, 5, 3]), value("filled", F, [2, 4, 6])], inits
    )
    ops = check(model, {"x": floats(2, 4, 3)}, tmp_path)
    assert ops == {"PAD": 1, "PADV2": 1}


def test_cumsum_of_a_mask_counts_positions_in_both_directions(tmp_path):
    nodes = [
        helper.make_node("CumSum", ["mask", "axis"], ["ids"]),
        helper.make_node("CumSum", ["x", "axis"], ["back"], exclusive=1, reverse=1),
    ]
    model = build(
        nodes,
        [value("mask", I64, [2, 5]), value("x", F, [2, 5])],
        [value("ids", I64, [2, 5]), value("back", F, [2, 5])],
        [const("axis", np.array(1, np.int64))],
    )
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64)
    assert check(model, {"mask": mask, "x": floats(2, 5)}, tmp_path) == {"CUMSUM": 2}


def test_tile_repeats_a_constant_or_run_time_count(tmp_path):
    nodes = [helper.make_node("Tile", ["x", "repeats"], ["y"])]
    model = build(
        nodes, [value("x", F, [1, 3, 4])], [value("y", F, [2, 3, 8])], [const("repeats", np.array([2, 1, 2]))]
    )
    assert check(model, {"x": floats(1, 3, 4)}, tmp_path) == {"TILE": 1}


def _gather_elements(indices_input, index_shape, data_shape=(2, 3, 4, 6), initializers=()):
    nodes = [helper.make_node("GatherElements", ["data", indices_input], ["y"], axis=-1)]
    inputs = [value("data", F, list(data_shape))]
    if indices_input == "idx":
        inputs.append(value("idx", I64, list(index_shape)))
    return build(nodes, inputs, [value("y", F, list(index_shape))], initializers)


def test_a_constant_table_shared_by_batch_and_heads_is_one_gather_over_rows(tmp_path):
    # DeBERTa's c2p: scores [batch, heads, query, 2 * buckets] picked at each key's bucket, same for all heads
    table = np.random.default_rng(1).integers(-6, 6, size=(4, 5))
    indices = np.broadcast_to(table, (2, 3, 4, 5)).copy()
    model = _gather_elements("table", indices.shape, initializers=[const("table", indices)])
    ops = check(model, {"data": floats(2, 3, 4, 6)}, tmp_path)
    assert ops.get("GATHER") == 1 and "GATHER_ND" not in ops


@pytest.mark.parametrize("constant", [True, False], ids=["constant-per-head", "run-time"])
def test_other_indices_become_full_coordinates_for_gather_nd(tmp_path, constant):
    indices = np.random.default_rng(2).integers(0, 6, size=(2, 3, 4, 5))  # differs per batch row and head
    if constant:
        model = _gather_elements("table", indices.shape, initializers=[const("table", indices)])
        feeds = {"data": floats(2, 3, 4, 6)}
    else:
        model = _gather_elements("idx", indices.shape)
        feeds = {"data": floats(2, 3, 4, 6), "idx": indices}
    assert check(model, feeds, tmp_path).get("GATHER_ND") == 1


def test_q_k_v_sharing_one_dynamic_quantizer_each_become_a_hybrid_fully_connected(tmp_path):
    """An unfused attention's three projections read one DynamicQuantizeLinear (ORT quantizes an input once)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    inits, outputs = [], []
    for name in ("q", "k", "v"):
        weights = rng.integers(-100, 100, size=(8, 4)).astype(np.int8)
        inits += [const(f"{name}_w", weights), const(f"{name}_z", np.int8(0)), const(f"{name}_s", np.float32(0.01))]
        nodes += [
            helper.make_node("MatMulInteger", ["xq", f"{name}_w", "xz", f"{name}_z"], [f"{name}_i"]),
            helper.make_node("Cast", [f"{name}_i"], [f"{name}_f"], to=F),
            helper.make_node("Mul", ["xs", f"{name}_s"], [f"{name}_scale"]),
            helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [name]),
        ]
        outputs.append(value(name, F, [2, 5, 4]))
    model = build(nodes, [value("x", F, [2, 5, 8])], outputs, inits)
    legal = legalize_for_tflite(model)
    assert [n.op_type for n in legal.graph.node].count("DynamicQuantizeMatMul") == 3
    assert all(n.op_type not in ("MatMulInteger", "DynamicQuantizeLinear") for n in legal.graph.node)
    assert [n.op_type for n in model.graph.node].count("DynamicQuantizeLinear") == 1  # the input is untouched
