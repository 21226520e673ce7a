"""Cross-layer sharing (`share_layers`) and the graph stage's merge of equal constants (`share_initializers`)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgecompress.compress._pruning import encoder_layers
from edgecompress.compress.share_layers import ShareLayers
from edgecompress.errors import UserError
from edgecompress.graph.share_initializers import ShareInitializers, duplicates
from edgecompress.intake.data import load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import PassSkipped, apply_pass
from edgecompress.pipeline import ExportRequest, run_export

from conftest import SENTENCES, write_csv
from family_models import build_any_family_checkpoint
from helpers import FLOAT_GRAPH_STAGE, pass_context

TEXTS = [text for text, _ in SENTENCES]


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint):
    return load_bundle(tiny_checkpoint)


def logits(bundle) -> torch.Tensor:
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=16, input_names=bundle.input_names)
    with torch.no_grad():
        return bundle.module(*(torch.from_numpy(feeds[name]) for name in bundle.input_names))


def test_shared_layers_run_the_group_leaders_weights_at_every_depth(bundle):
    shared, record = apply_pass(ShareLayers(group=2, epochs=0), bundle, pass_context(bundle))
    layers = encoder_layers(shared.module)
    assert layers[0] is layers[1] and record.stats["distinct_layers"] == 1
    by_hand = dataclasses.replace(bundle, module=copy.deepcopy(bundle.module))
    layer_one = encoder_layers(by_hand.module)[1]
    layer_one.load_state_dict(encoder_layers(by_hand.module)[0].state_dict())
    torch.testing.assert_close(logits(shared), logits(by_hand), atol=1e-6, rtol=1e-5)
    assert record.stats["parameters_after"] < record.stats["parameters_before"]


def test_recovery_trains_the_shared_weights_once_per_depth(bundle, tmp_path):
    train = load_dataset(write_csv(tmp_path / "train.csv", SENTENCES * 4), require_labels=True)
    shared, record = apply_pass(
        ShareLayers(group=2, epochs=8, lr=5e-3, batch_size=8), bundle, pass_context(bundle, train_data=train)
    )
    layers = encoder_layers(shared.module)
    assert layers[0] is layers[1], "training untied the layers"
    assert record.stats["recovery"]["loss_last"] < record.stats["recovery"]["loss_first"]


def test_albert_is_refused_because_it_shares_already(tmp_path):
    albert = load_bundle(build_any_family_checkpoint(tmp_path / "albert", "albert"))
    assert "share one set of layer weights already" in albert.architecture.refuse("share_layers")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ShareLayers(group=3, epochs=0), "more than the model's 2 layers"),
        (lambda: ShareLayers(group=0, epochs=0), "must be positive"),
        (lambda: ShareLayers(group=2), "--train-data"),
    ],
)
def test_bad_options_are_user_errors(bundle, make, message):
    with pytest.raises(UserError, match=message):
        make().requires(bundle, pass_context(bundle))


def _two_adds_of_equal_weights() -> onnx.ModelProto:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("Add", ["x", "w0"], ["h"]), helper.make_node("Add", ["h", "w1"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w0"), numpy_helper.from_array(w.copy(), "w1")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_equal_constants_are_merged_and_the_graph_computes_the_same():
    import onnxruntime as ort

    model = _two_adds_of_equal_weights()
    merged, record = apply_pass(ShareInitializers(), model, pass_context())
    assert [t.name for t in merged.graph.initializer] == ["w0"] and record.stats["merged"] == 1
    x = {"x": np.ones((2, 3), np.float32)}
    run = [ort.InferenceSession(m.SerializeToString()).run(None, x)[0] for m in (model, merged)]
    np.testing.assert_array_equal(run[0], run[1])
    with pytest.raises(PassSkipped, match="no constant tensor is held twice"):
        ShareInitializers().requires(merged, pass_context())


RECIPE = (
    """
[[compress]]
pass = "share_layers"
group = 2
epochs = 0
"""
    + FLOAT_GRAPH_STAGE
)


def _export(checkpoint, device, data, out, recipe=None):
    request = ExportRequest(checkpoint, str(device), out, data=data, recipe=recipe, measure=False)
    return run_export(request)


def test_shared_model_ships_each_weight_once(tiny_checkpoint, tiny_device, tiny_data, tmp_path):
    recipe = tmp_path / "shared.toml"
    recipe.write_text(RECIPE)
    shared = _export(tiny_checkpoint, tiny_device, tiny_data, tmp_path / "shared", str(recipe))
    plain = _export(tiny_checkpoint, tiny_device, tiny_data, tmp_path / "plain")
    assert shared.report.passed
    records = {p["name"]: p for p in shared.report.passes}
    assert records["share_initializers"]["fired"], "the fused Attention ops no longer share packed Q/K/V"
    shipped = onnx.load(str(shared.out_dir / "model.onnx"))
    assert not duplicates(shipped)
    layer_bytes = sum(p.numel() * 4 for p in encoder_layers(load_bundle(tiny_checkpoint).module)[0].parameters())
    for name in ("model.onnx", "model.ort", "model.tflite"):
        saved = (plain.out_dir / name).stat().st_size - (shared.out_dir / name).stat().st_size
        assert saved > 0.9 * layer_bytes, (name, saved, layer_bytes)
