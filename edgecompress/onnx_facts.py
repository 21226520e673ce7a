"""What an ONNX graph says about itself: value shapes and types, node attributes, op counts.

Shared by the graph passes, the backends, the estimates and the report, so none of them reaches into
another stage's module for a utility.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgecompress.errors import UserError

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[tuple[int, ...], int]]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def op_histogram(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Node counts keyed `domain::op_type` (plain op type for the default domain), most common first.

    Shows at a glance which fusions fired (e.g. `com.microsoft::Attention`) and which did not.
    """
    counts = Counter(op_key(n) for n in load_model(model).graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def infer_shapes(model: onnx.ModelProto | str | Path) -> Shapes:
    """Shape and element type of every value: graph inputs, initializers and every node output.

    We run the model once with onnxruntime (all optimizations off, so the graph runs as given) on
    zero-filled inputs, with every node output added as a graph output. That is exact for any op
    ORT can run, including the com.microsoft contrib ops that fused (optimizer) and quantized
    (quantize_dynamic) graphs are made of; `onnx.shape_inference` knows none of them, and
    hand-written rules for them would silently lose shapes on the first op we forgot. The cost is
    one inference with all intermediates held at once, which is small for mobile-sized models.
    Zeros are valid token ids, segment ids and masks, so BERT-class inputs need no special values.
    """
    model = load_model(model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    feeds = {
        i.name: np.zeros(fixed_input_shape(i), helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        for i in inputs
    }
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        log.warning("graph has control flow; estimates exclude the contents of its subgraphs")
    shapes: Shapes = {t.name: (tuple(t.dims), t.data_type) for t in graph.initializer}
    shapes.update({i.name: (feeds[i.name].shape, i.type.tensor_type.elem_type) for i in inputs})
    for name, value in run_with_all_outputs(model, feeds).items():
        if isinstance(value, np.ndarray):  # sequences and maps have no single shape
            shapes[name] = (value.shape, helper.np_dtype_to_tensor_dtype(value.dtype))
    return shapes


def load_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def run_with_all_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict:
    """Every node output of one CPU run, with ORT's graph optimizations off so nothing is fused away.

    A model with external data must be passed by path (or loaded with its data) for ORT to run it.
    """
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in model.graph.output}
    probe.graph.output.extend(
        onnx.ValueInfoProto(name=o) for n in model.graph.node for o in n.output if o and o not in present
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def fixed_input_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    """The input's static shape; a symbolic or missing dim is the user's to fix, not ours to guess."""
    hint = "fix input shapes before estimating (e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed)"
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise UserError(
            f"input '{value.name}' has no shape", where="estimate", expected="fixed input shapes", hint=hint
        )
    dims = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if not dim.HasField("dim_value"):
            label = dim.dim_param or "?"
            raise UserError(
                f"input '{value.name}' has symbolic dim '{label}' at axis {axis}",
                where="estimate",
                expected="fixed input shapes",
                hint=hint,
            )
        dims.append(dim.dim_value)
    return tuple(dims)


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of the node's attribute `name`, or `default` when the node does not set it."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default
