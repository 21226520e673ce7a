"""The ONNX Runtime op audit reads both files and finds float ops between integer ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends import Artifact
from edgecompress.backends.ort.artifact import emit_ort
from edgecompress.backends.ort.audit import audit_for_report


def _integer_graph(float_in_the_middle: bool) -> onnx.ModelProto:
    """x (int8) -> MatMulInteger -> [float detour?] -> MatMulInteger -> Cast float -> Mul scale -> y."""
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    nodes = [helper.make_node("MatMulInteger", ["x", "w"], ["acc"], name="first")]
    if float_in_the_middle:
        nodes += [
            helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT, name="to_float"),
            helper.make_node("Relu", ["acc_f"], ["relu"], name="float_relu"),
            helper.make_node("Cast", ["relu"], ["acc8"], to=TensorProto.INT8, name="to_int8"),
        ]
    else:
        nodes += [
            helper.make_node("Clip", ["acc", "lo", "hi"], ["clipped"], name="int_clip"),
            helper.make_node("Cast", ["clipped"], ["acc8"], to=TensorProto.INT8, name="to_int8"),
        ]
    nodes += [
        helper.make_node("MatMulInteger", ["acc8", "w"], ["acc2"], name="second"),
        helper.make_node("Cast", ["acc2"], ["y_int"], to=TensorProto.FLOAT, name="dequant_cast"),
        helper.make_node("Mul", ["y_int", "scale"], ["y"], name="dequant_scale"),
    ]
    bounds = [numpy_helper.from_array(np.array(v, np.int32), n) for n, v in (("lo", -128), ("hi", 127))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w, scale, *bounds],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_integer_graph_has_float_only_at_its_boundary(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_integer_graph(float_in_the_middle=False), str(path))
    audit = audit_for_report(path)
    assert audit["float_ops_inside"] == []
    assert audit["float_ops"] == ["Mul"]  # the final dequantization, outside the integer region
    assert audit["op_histogram"] == {"Cast": 2, "Clip": 1, "MatMulInteger": 2, "Mul": 1}


def test_float_op_between_integer_ops_is_named(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_integer_graph(float_in_the_middle=True), str(path))
    assert audit_for_report(path)["float_ops_inside"] == ["Relu float_relu"]


def test_ort_format_file_is_read_from_the_flatbuffer(tmp_path):
    [onnx_artifact, ort_artifact] = emit_ort(_integer_graph(float_in_the_middle=True), tmp_path, ("onnx", "ort"))
    assert isinstance(ort_artifact, Artifact) and ort_artifact.path.suffix == ".ort"
    from_ort, from_onnx = audit_for_report(ort_artifact.path), audit_for_report(onnx_artifact.path)
    assert "ORT format" in from_ort["method"]
    assert from_ort["float_ops_inside"] == ["Relu float_relu"]
    assert sum(from_ort["op_histogram"].values()) <= sum(from_onnx["op_histogram"].values())


def test_float_model_has_no_integer_region(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="r")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    audit = audit_for_report(path)
    assert audit["float_ops"] == ["Relu"] and audit["float_ops_inside"] == []


def test_dynamic_shape_artifact_is_audited(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="r")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    path = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    assert audit_for_report(path)["float_ops"] == ["Relu"]
