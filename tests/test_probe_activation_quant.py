"""tools/probe_activation_quant.py: its fake quantizers are the runtimes' own roundings, its probe leaves float
alone."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

import probe_activation_quant as probe

RNG = np.random.default_rng(7)


def ort_dynamic_quantize_dequantize(x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
        ],
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_per_tensor_is_onnx_runtime_dynamic_quantize_linear():
    x = RNG.normal(size=(1, 9, 16)).astype(np.float32)
    x[0, 0, 3] = 25.0  # a [CLS]-like outlier sets the range for every row
    np.testing.assert_allclose(
        probe.ort_per_tensor(torch.from_numpy(x)).numpy(), ort_dynamic_quantize_dequantize(x), rtol=0, atol=1e-6
    )


def test_per_row_quantizes_each_row_on_its_own_range():
    x = torch.from_numpy(RNG.normal(size=(1, 4, 32)).astype(np.float32))
    big = x.clone()
    big[0, 0] *= 50  # one row's range must not coarsen the others
    assert torch.equal(probe.litert_per_row(big)[0, 1:], probe.litert_per_row(x)[0, 1:])
    assert (probe.litert_per_row(x) - x).abs().max() <= (x.amax(-1) - x.amin(-1)).max() / 255 / 2 + 1e-6


def test_per_row_equals_per_tensor_when_every_row_spans_the_tensor_range():
    """What the guard columns of backends/tflite_dynamic.py rely on."""
    x = RNG.normal(size=(1, 5, 12)).astype(np.float32)
    x[0, :, 0], x[0, :, 1] = x.min() - 1, x.max() + 1
    tensor = torch.from_numpy(x)
    np.testing.assert_allclose(
        probe.litert_per_row(tensor).numpy(), probe.ort_per_tensor(tensor).numpy(), rtol=0, atol=1e-5
    )


def test_cls_apart_changes_only_what_the_cls_row_did_to_the_others():
    x = RNG.normal(size=(1, 6, 8)).astype(np.float32)
    x[0, 0] *= 40
    tensor = torch.from_numpy(x)
    apart = probe.cls_apart(tensor)
    assert torch.equal(apart[:, 1:], probe.ort_per_tensor(tensor[:, 1:]))
    per_tensor = probe.ort_per_tensor(tensor)
    assert (apart[:, 1:] - tensor[:, 1:]).abs().max() < (per_tensor[:, 1:] - tensor[:, 1:]).abs().max()


def test_the_probe_keeps_float_predictions_and_records_every_token_kind(tiny_checkpoint):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint).eval()
    encoded = tokenizer(
        ["a good movie", "the plot was dull and boring"], padding="max_length", max_length=12, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(**encoded).logits.argmax(-1).numpy()
    tracked = probe.Probe(model, probe.token_kinds(tokenizer, encoded["input_ids"]))
    np.testing.assert_array_equal(tracked.predict("float", encoded), expected)
    assert all(len(tracked.predict(mode, encoded)) == 2 for mode in probe.MODES[1:])
    first = next(iter(tracked.row_max.values()))
    assert {kind: sum(len(rows) for rows in first[kind]) for kind in probe.TOKEN_KINDS} == {
        "cls": 2,
        "sep": 2,
        "pad": 24 - int(encoded["attention_mask"].sum()),
        "text": int(encoded["attention_mask"].sum()) - 4,
    }
