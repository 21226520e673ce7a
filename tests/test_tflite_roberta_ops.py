"""LiteRT lowerings a RoBERTa graph needs (ops/cumsum.py, ops/gather_elements.py): its position ids and its
token-type buffer gathered by them, run in LiteRT against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgecompress.errors import UserError

from test_tflite_backend import RNG, build, check, const, floats, lowered, value

PAD = 1


def test_roberta_position_ids_match_onnxruntime(tmp_path):
    """`cumsum(ids != pad, dim=1) * mask + pad`, as transformers' RoBERTa embeddings number positions."""
    nodes = [
        helper.make_node("Equal", ["input_ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["is_token"]),
        helper.make_node("Cast", ["is_token"], ["mask"], to=TensorProto.INT32),
        helper.make_node("CumSum", ["mask", "axis"], ["counted"]),
        helper.make_node("Mul", ["counted", "mask"], ["numbered"]),
        helper.make_node("Cast", ["numbered"], ["numbered64"], to=TensorProto.INT64),
        helper.make_node("Add", ["numbered64", "pad"], ["position_ids"]),
    ]
    model = build(
        nodes,
        [value("input_ids", TensorProto.INT64, [2, 12])],
        [value("position_ids", TensorProto.INT64, [2, 12])],
        [const("pad", np.array(PAD, np.int64)), const("axis", np.array(1, np.int64))],
    )
    ids = np.array([[0, 57, 33, 90, 2] + [PAD] * 7, [0] + list(range(5, 15)) + [2]], np.int64)
    histogram = check(model, {"input_ids": ids}, tmp_path)
    assert histogram.get("CUMSUM") == 1


@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_float_cumsum_attributes_and_a_negative_axis(exclusive, reverse, tmp_path):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)
    model = build(
        [node],
        [value("x", TensorProto.FLOAT, [2, 5, 3])],
        [value("y", TensorProto.FLOAT, [2, 5, 3])],
        [const("axis", np.array(-2, np.int32))],
    )
    assert check(model, {"x": floats(2, 5, 3)}, tmp_path) == {"CUMSUM": 1}


def test_an_axis_known_only_at_run_time_is_refused_and_says_why(tmp_path):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"])
    model = build(
        [node],
        [value("x", TensorProto.FLOAT, [2, 5]), value("axis", TensorProto.INT64, [])],
        [value("y", TensorProto.FLOAT, [2, 5])],
    )
    with pytest.raises(UserError, match="an axis that is not a constant"):
        lowered(model, tmp_path)


@pytest.mark.parametrize("axis", [1, 0, -1])
def test_gather_elements_by_run_time_indices_matches_onnxruntime(axis, tmp_path):
    """RoBERTa without token_type_ids: its token-type buffer gathered by CumSum-computed positions."""
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)
    model = build(
        [node],
        [value("x", TensorProto.FLOAT, [3, 40]), value("i", TensorProto.INT64, [3, 40])],
        [value("y", TensorProto.FLOAT, [3, 40])],
    )
    size = 40 if axis != 0 else 3
    indices = RNG.integers(-size, size, size=(3, 40)).astype(np.int64)  # ONNX allows negative indices
    assert check(model, {"x": floats(3, 40), "i": indices}, tmp_path)["GATHER_ND"] == 1
