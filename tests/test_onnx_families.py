"""`.onnx` intake of files users export by hand from transformers 5 (issue 15): head count off the graph,
the family's own inputs, and every artifact of the default pixel7 recipe."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecompress.intake.onnx_geometry import read_attention_geometry
from edgecompress.pipeline import ExportRequest, run_export


@pytest.fixture(scope="module")
def hand_exported(tmp_path_factory):
    """One tiny classifier per family, exported by plain torch.onnx.export (TorchScript), by model_type."""
    import tiny_families

    def export(model_type: str, token_types: bool | None = None):
        folder = tiny_families.build_checkpoint(model_type, tmp_path_factory.mktemp(model_type) / "checkpoint")
        return tiny_families.hand_export(folder, folder / "model.onnx", token_types=token_types), folder

    return export


def test_reads_heads_where_transformers_5_writes_minus_one(hand_exported):
    path, _ = hand_exported("bert")
    model = onnx.load(str(path))
    split_shapes = [n for n in model.graph.node if n.op_type == "Concat" and "attention" in n.name]
    assert split_shapes, "the hand export no longer splits heads with a Concat shape"
    geometry = read_attention_geometry(model)
    assert geometry is not None
    assert (geometry.heads, geometry.head_size, geometry.hidden_size, geometry.blocks) == (4, 16, 64, 2)


def _projection_graph(shape: list[int]) -> onnx.ModelProto:
    """x[1, 8, 64] -> MatMul(W[64, 64]) -> Add(b) -> Reshape(shape): one head split."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.zeros(64 * 64, np.float32))
    bias = helper.make_tensor("b", TensorProto.FLOAT, [64], np.zeros(64, np.float32))
    target = helper.make_tensor("shape", TensorProto.INT64, [4], shape)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["q"]),
        helper.make_node("Reshape", ["q", "shape"], ["heads"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64])],
        [helper.make_tensor_value_info("heads", TensorProto.FLOAT, None)],
        [weight, bias, target],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize(
    "shape, heads", [([1, 8, -1, 16], 4), ([0, 0, 8, -1], 8), ([0, 0, 4, 16], 4)], ids=["size", "heads", "both"]
)
def test_head_count_from_either_fixed_entry(shape, heads):
    geometry = read_attention_geometry(_projection_graph(shape))
    assert geometry is not None and (geometry.heads, geometry.attention_width) == (heads, 64)


@pytest.mark.parametrize(
    "shape", [[1, 8, -1, -1], [1, 8, 3, 16], [1, 8, -1, 48]], ids=["no-fixed-entry", "disagree", "not-dividing"]
)
def test_no_geometry_when_the_split_does_not_say(shape):
    assert read_attention_geometry(_projection_graph(shape)) is None


@pytest.mark.parametrize(
    "model_type, inputs",
    # BERT without token_type_ids gathers its [1, 128] zero buffer with GatherElements, which the TFLite
    # lowering folds (onnx's reference GatherElements crashed on it).
    # RoBERTa numbers its positions with a CumSum, which the TFLite lowering writes as CUMSUM.
    [("bert", 3), ("bert", 2), ("distilbert", 2), ("roberta", 2)],
    ids=["bert", "bert-without-token-types", "distilbert", "roberta"],
)
def test_hand_exported_family_takes_the_default_pixel7_recipe(model_type, inputs, hand_exported, tiny_data, tmp_path):
    path, tokenizer = hand_exported(model_type, token_types=inputs == 3)
    result = run_export(
        ExportRequest(
            model=path, device="pixel7", data=tiny_data, out_root=tmp_path, tokenizer=tokenizer, measure=False
        )
    )
    fuse = next(p for p in result.report.passes if p["name"] == "fuse_transformer")
    assert fuse["stats"]["fused"]["Attention"] == fuse["stats"]["expected_attention"] == 2
    assert result.report.model["config"]["num_attention_heads"] == 4
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    names = [i["name"] for i in manifest["inputs"]]
    assert names == ["input_ids", "attention_mask", "token_type_ids"][:inputs]
    assert manifest["quantization"] == "dynamic-int8"
    assert {a.file for a in result.report.artifacts} == {"model.onnx", "model.ort", "model.tflite"}
    assert all(a.parity["passed"] for a in result.report.artifacts)
