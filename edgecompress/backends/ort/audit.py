"""Op audit of ONNX Runtime artifacts, read from the file itself: op histogram and what computes in float.

`model.onnx` is read with onnx (value types from one run of the graph, `onnx_facts.infer_shapes`, since
onnx shape inference stops at contrib ops); `model.ort` with the ORT-format flatbuffer schema that ships
in onnxruntime, whose node args carry the types ORT resolved. Reading `.ort` separately matters: the
converter bakes ORT's own fusions into it, so its ops differ from the `.onnx` it came from.

Two lists come out:
- `float_ops`: op types that compute in float (a float output; Cast and DequantizeLinear only convert);
- `float_ops_inside`: float-computing nodes *inside the integer region*, i.e. downstream of an op that
  computes in int8/uint8/int32 and upstream of another one. An integer-only model may compute in float
  only at its boundary (before its first integer op, after its last); anything listed here breaks that.
  int64 values are left out of the integer region: they are token ids, masks and shapes in float models.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

_FLOAT = {1, 10, 11, 16}  # float32, float16, float64, bfloat16 (onnx.TensorProto element types)
_SMALL_INT = {2, 3, 6}  # uint8, int8, int32: the element types integer kernels compute in
_CONVERSIONS = {"Cast", "DequantizeLinear"}


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}::{self.op_type}"


def audit_for_report(path: Path) -> dict:
    nodes, types = read_ort_format(path) if Path(path).suffix == ".ort" else read_onnx(path)
    inside = float_nodes_inside(nodes, types)
    return {
        "op_histogram": dict(sorted(Counter(n.label for n in nodes).items())),
        "float_ops": sorted({n.label for n in nodes if computes_in_float(n, types)}),
        "float_ops_inside": [f"{n.label} {n.name}" for n in inside],
        "method": f"static: read from {Path(path).name} ({'ORT format' if Path(path).suffix == '.ort' else 'ONNX'})",
    }


def computes_in_float(node: Node, types: dict[str, int]) -> bool:
    return node.op_type not in _CONVERSIONS and any(types.get(o) in _FLOAT for o in node.outputs if o)


def _computes_in_integer(node: Node, types: dict[str, int]) -> bool:
    return any(types.get(o) in _SMALL_INT for o in node.outputs if o)


def float_nodes_inside(nodes: list[Node], types: dict[str, int]) -> list[Node]:
    """Float-computing nodes with an integer-computing node both upstream and downstream of them."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    consumers: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for name in n.inputs:
            if name in producer:
                consumers[producer[name]].append(i)
    integer = {i for i, n in enumerate(nodes) if _computes_in_integer(n, types)}
    after_integer = reachable(integer, lambda i: consumers[i])
    before_integer = reachable(integer, lambda i: [producer[x] for x in nodes[i].inputs if x in producer])
    return [
        n for i, n in enumerate(nodes) if i in after_integer and i in before_integer and computes_in_float(n, types)
    ]


def reachable(start: set[int], step) -> set[int]:
    """Nodes reachable from `start` by one or more steps (not `start` itself unless on a path)."""
    seen: set[int] = set()
    frontier = [j for i in start for j in step(i)]
    while frontier:
        i = frontier.pop()
        if i not in seen:
            seen.add(i)
            frontier.extend(step(i))
    return seen


def read_onnx(path: Path) -> tuple[list[Node], dict[str, int]]:
    import onnx

    from edgecompress.onnx_facts import infer_shapes

    model = onnx.load(str(path))
    types = {name: elem_type for name, (_, elem_type) in infer_shapes(_with_unit_dims(model)).items()}
    return graph_nodes(model), types


def graph_nodes(model) -> list[Node]:
    return [Node(n.name, n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def _with_unit_dims(model):
    """A copy whose symbolic input dims are 1: element types do not depend on shapes, and one run of a
    dynamic-shape artifact (rpi5 ships one) then types every value."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    return copy


def read_ort_format(path: Path) -> tuple[list[Node], dict[str, int]]:
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TypeInfoValue import TypeInfoValue

    buffer = bytearray(Path(path).read_bytes())
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0).Model().Graph()
    types = {}
    for i in range(graph.NodeArgsLength()):
        arg = graph.NodeArgs(i)
        info = arg.Type()
        if info is not None and info.ValueType() == TypeInfoValue.tensor_type:
            tensor = fbs.TensorTypeAndShape.TensorTypeAndShape()
            tensor.Init(info.Value().Bytes, info.Value().Pos)
            types[arg.Name().decode()] = tensor.ElemType()
    for i in range(graph.InitializersLength()):
        tensor = graph.Initializers(i)
        types[tensor.Name().decode()] = tensor.DataType()
    nodes = []
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        nodes.append(
            Node(
                node.Name().decode(),
                node.OpType().decode(),
                node.Domain().decode(),
                tuple(node.Inputs(j).decode() for j in range(node.InputsLength())),
                tuple(node.Outputs(j).decode() for j in range(node.OutputsLength())),
            )
        )
    return nodes, types
