"""LiteRT lowering of ONNX TopK (ops/topk.py): token elimination keeps the k most-attended tokens with it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgecompress.errors import UserError

from test_tflite_backend import build, check, const, floats, lowered, value


def test_topk_values_and_indices_match_onnxruntime(tmp_path):
    """Both outputs, the indices feeding a GatherElements as in an eliminating layer (distinct scores: no ties)."""
    nodes = [
        helper.make_node("TopK", ["scores", "k"], ["values", "indices"], axis=-1),
        helper.make_node("GatherElements", ["scores", "indices"], ["kept"], axis=1),
    ]
    model = build(
        nodes,
        [value("scores", TensorProto.FLOAT, [2, 9])],
        [
            value("values", TensorProto.FLOAT, [2, 4]),
            value("indices", TensorProto.INT64, [2, 4]),
            value("kept", TensorProto.FLOAT, [2, 4]),
        ],
        [const("k", np.array([4], np.int64))],
    )
    histogram = check(model, {"scores": floats(2, 9)}, tmp_path)
    assert histogram.get("TOPK_V2") == 1


@pytest.mark.parametrize(
    "attributes, k_is_input, message",
    [
        ({"axis": 0}, False, "an axis other than the last"),
        ({"largest": 0}, False, "largest=0"),
        ({}, True, "a K that is not a constant"),
    ],
)
def test_what_topk_v2_cannot_do_is_refused_and_says_why(attributes, k_is_input, message, tmp_path):
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], **attributes)
    inputs = [value("x", TensorProto.FLOAT, [3, 5])] + ([value("k", TensorProto.INT64, [1])] if k_is_input else [])
    shape = [2, 5] if attributes.get("axis") == 0 else [3, 2]
    model = build(
        [node],
        inputs,
        [value("values", TensorProto.FLOAT, shape), value("indices", TensorProto.INT64, shape)],
        [] if k_is_input else [const("k", np.array([2], np.int64))],
    )
    with pytest.raises(UserError, match=message):
        lowered(model, tmp_path)
