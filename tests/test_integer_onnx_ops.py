"""The emitting backend's value intervals: every integer a graph computes lies in the interval the backend gave
its value (so an int32 value can never wrap), and the values the bit budgets allow are int32.

A tiny BERT and a tiny DistilBERT run on onnxruntime with every intermediate value exposed as an output.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgecompress.compress.integer_only.calibrate import calibrate
from edgecompress.compress.integer_only.lower import IR_VERSION, OPSET
from edgecompress.compress.integer_only.model import integer_bert
from edgecompress.compress.integer_only.onnx_ops import INT32_MAX, INT32_MIN, OnnxOps
from edgecompress.compress.integer_only.program import integer_forward
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle

from conftest import SENTENCES
from family_models import build_any_family_checkpoint

TEXTS = [text for text, _ in SENTENCES]
INTEGER_TYPES = (TensorProto.INT32, TensorProto.INT64)


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def emitted(request, tmp_path_factory):
    """(ops after emitting the whole program, the graph with every integer value as an output, feeds)."""
    name = request.param
    bundle = load_bundle(build_any_family_checkpoint(tmp_path_factory.mktemp(name) / name, name))
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=32, input_names=bundle.input_names)
    model = bundle.module.hf_model
    integer = integer_bert(model, calibrate(model, feeds, rows=len(TEXTS), percentile=100.0), where=name)
    ops = OnnxOps()
    for input_name in bundle.input_names:
        ops.declare(input_name)
    integer_forward(ops, integer.plan, *bundle.input_names)
    watched = [n for n in ops.ranges if ops.dtype_of(n) in INTEGER_TYPES and n not in bundle.input_names]
    graph = helper.make_graph(
        ops.nodes,
        "watched",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in bundle.input_names],
        [helper.make_tensor_value_info(n, ops.dtype_of(n), None) for n in watched],
        ops.initializers,
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model_proto.ir_version = IR_VERSION
    return ops, model_proto, {n: feeds[n] for n in bundle.input_names}


def test_every_value_lies_in_its_interval(emitted):
    ops, graph, feeds = emitted
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in graph.graph.output]
    outside = []
    for name, value in zip(names, session.run(names, feeds)):
        lo, hi = ops.ranges[name]
        if value.size and (int(value.min()) < lo or int(value.max()) > hi):
            outside.append((name, int(value.min()), int(value.max()), lo, hi))
        if ops.dtype_of(name) == TensorProto.INT32:
            assert INT32_MIN <= lo and hi <= INT32_MAX, name
    assert not outside, outside[:5]
    assert len(names) > 300  # the whole program was watched


def test_matmul_accumulators_requantize_in_int32_with_the_bias_folded(emitted):
    """MatMulInteger's int32 accumulator goes straight into its requantization, whose rounding constant carries the
    Linear's bias (no element-wise Add of its own), and everything computing on an accumulator stays int32 (the
    context's head merge only moves it)."""
    ops, graph, _ = emitted
    consumers: dict[str, list] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {t.name for t in graph.graph.initializer}
    linears = [n.output[0] for n in graph.graph.node if n.op_type == "MatMulInteger" and n.input[1] in weights]
    assert len(linears) == 6 * 2 + 2  # Q, K, V, attention output, FFN in and out per layer; the head's two
    accumulators = [n.output[0] for n in graph.graph.node if n.op_type == "MatMulInteger"]
    readers = [node for name in accumulators for node in consumers.get(name, []) if node.op_type != "Transpose"]
    wide = [(node.op_type, node.name) for node in readers if ops.dtype_of(node.output[0]) != TensorProto.INT32]
    assert readers and not wide
    assert not any(node.op_type == "Add" for name in linears for node in consumers.get(name, []))
    assert sum(ops.dtype_of(n.output[0]) == TensorProto.INT32 for n in graph.graph.node) > 100
