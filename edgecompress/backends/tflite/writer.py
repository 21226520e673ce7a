"""Write a TFLite flatbuffer with the schema's object API (`schema_py_generated` ships in ai-edge-litert).

No TensorFlow converter is involved: the lowering adds tensors and builtin operators here one by one,
and `serialize` packs them into one subgraph with a `serving_default` signature whose names are the
ONNX input and output names, so apps and runners address the model exactly as they address model.onnx.
`serialize_signatures` packs several such subgraphs (the length buckets) into one file sharing buffers.
"""

from __future__ import annotations

import hashlib
import importlib

import numpy as np

from edgecompress.errors import UserError

# TFLite tensor types by numpy dtype name.
TENSOR_TYPES = {
    "float32": "FLOAT32",
    "float16": "FLOAT16",
    "int32": "INT32",
    "int64": "INT64",
    "int8": "INT8",
    "uint8": "UINT8",
    "int16": "INT16",
    "bool": "BOOL",
}
# Opcodes above this value are stored in `builtin_code`; `deprecated_builtin_code` then holds the placeholder.
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127
# The schema asks buffers to be 16-byte aligned (`force_align: 16`); the generated Python ignores it.
_BUFFER_ALIGNMENT = 16
SCHEMA_VERSION = 3
# Builtins whose kernels LiteRT registers from a version above 1 only (the version the converter writes
# for their first supported form); every other builtin here is registered from version 1.
_FIRST_VERSION = {"BROADCAST_TO": 2}


class UnsupportedTensorType(ValueError):
    """A value whose type TFLite cannot store; the lowering names the node that made it."""


def litert(module: str):
    """An `ai_edge_litert` module; the package is the optional `tflite` extra, so its absence is a user error."""
    try:
        return importlib.import_module(f"ai_edge_litert.{module}")
    except ImportError:
        raise UserError(
            "the tflite artifact needs the ai-edge-litert package, which is not installed",
            hint="pip install 'edgecompress[tflite]', or remove \"tflite\" from the device profile's artifacts",
        ) from None


def schema():
    return litert("schema_py_generated")


def opcode(name: str) -> int:
    """The builtin operator code for a name such as "FULLY_CONNECTED"."""
    return getattr(schema().BuiltinOperator, name)


def opcode_names() -> dict[int, str]:
    ops = schema().BuiltinOperator
    return {value: name for name, value in vars(ops).items() if not name.startswith("_")}


class FlatModel:
    """Tensors, constant buffers and operators of one TFLite subgraph, in the order they are added."""

    def __init__(self) -> None:
        s = schema()
        self.tensors: list = []
        self.buffers: list = [s.BufferT()]  # buffer 0 is the empty buffer of every non-constant tensor
        self.operators: list = []
        self.opcodes: dict[int, int] = {}  # builtin code -> index into the model's operator codes

    def tensor(self, name: str, shape, dtype, data: np.ndarray | None = None, quantization=None) -> int:
        """Add a tensor (a constant when `data` is given) and return its index."""
        s = schema()
        tensor = s.TensorT()
        tensor.name = name
        tensor.shape = [int(d) for d in shape]
        if np.dtype(dtype).name not in TENSOR_TYPES:
            raise UnsupportedTensorType(
                f"values of type {np.dtype(dtype).name}, which LiteRT has no tensor type "
                f"for (it has {', '.join(TENSOR_TYPES)})"
            )
        tensor.type = getattr(s.TensorType, TENSOR_TYPES[np.dtype(dtype).name])
        tensor.quantization = quantization
        tensor.buffer = 0
        if data is not None:
            tensor.buffer = len(self.buffers)
            self.buffers.append(_AlignedBuffer(np.ascontiguousarray(data, dtype=dtype)))
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def int4_tensor(self, name: str, shape, packed: np.ndarray, quantization) -> int:
        """A constant INT4 tensor: `packed` holds its values two per byte over the flattened tensor, the first
        in the low nibble, which is how LiteRT reads INT4 buffers."""
        tensor = self.tensor(name, shape, np.int8, quantization=quantization)
        self.tensors[tensor].type = schema().TensorType.INT4
        self.tensors[tensor].buffer = len(self.buffers)
        self.buffers.append(_AlignedBuffer(np.ascontiguousarray(packed, dtype=np.uint8)))
        return tensor

    def operator(self, code: int, inputs: list[int], outputs: list[int], options=None) -> None:
        """Add a builtin operator; `options` is the schema's `<Name>OptionsT` object for that builtin."""
        s = schema()
        op = s.OperatorT()
        op.opcodeIndex = self.opcodes.setdefault(code, len(self.opcodes))
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            op.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.operators.append(op)

    def serialize(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        """The finished `.tflite` bytes: this one subgraph, signature "serving_default"."""
        graph = self._subgraph("main", inputs, outputs)
        opcodes = sorted(self.opcodes, key=self.opcodes.__getitem__)
        return _pack(description, opcodes, [graph], self.buffers, [_signature("serving_default", 0, graph)])

    def _subgraph(self, name: str, inputs: list[int], outputs: list[int]):
        graph = schema().SubGraphT()
        graph.name = name
        graph.tensors, graph.inputs, graph.outputs = self.tensors, inputs, outputs
        graph.operators = _live(self.operators, outputs)
        return graph


def _live(operators: list, outputs: list[int]) -> list:
    """The operators some graph output depends on, in their order. LiteRT runs every operator of a subgraph, read
    or not, and a lowering may leave one unread (the integer-only graph's `Add(x, 128)` before a Cast to uint8,
    once MatMulInteger reads x itself)."""
    needed, live = set(outputs), []
    for op in reversed(operators):
        if any(t in needed for t in op.outputs):
            live.append(op)
            needed.update(t for t in op.inputs if t >= 0)
    return live[::-1]


def serialize_signatures(parts: list[tuple[str, FlatModel, list[int], list[int]]], description: str) -> bytes:
    """One `.tflite` holding several subgraphs, each under its own signature, in the order given: `parts`
    are (signature key, subgraph, input tensors, output tensors).

    Before -> After: N FlatModels, each with its own buffers and operator codes -> one model whose constant
    buffers are stored once per distinct content (type, shape and bytes alike: a buffer equal to one
    already written is referenced, not copied), whose equal quantization parameters are one table (see
    _SharedQuantization), and whose operator codes are one table. The FlatModels' tensors and operators are
    re-pointed in place, so each may be serialized only once.
    """
    s = schema()
    buffers: list = [s.BufferT()]
    stored: dict[tuple, int] = {}  # (tensor type, shape, sha256 of the bytes) -> buffer index
    packed_quantization: dict[tuple, int] = {}  # content -> offset in the one builder _pack uses
    opcodes: dict[int, int] = {}  # builtin code -> index in the shared table
    graphs, signatures = [], []
    for index, (key, flat, inputs, outputs) in enumerate(parts):
        codes = sorted(flat.opcodes, key=flat.opcodes.__getitem__)  # local opcode index -> builtin code
        for op in flat.operators:
            op.opcodeIndex = opcodes.setdefault(codes[op.opcodeIndex], len(opcodes))
        for tensor in flat.tensors:
            if tensor.buffer:
                buffer = flat.buffers[tensor.buffer]
                content = (tensor.type, tuple(tensor.shape), hashlib.sha256(buffer.raw).digest())
                if content not in stored:
                    stored[content] = len(buffers)
                    buffers.append(buffer)
                tensor.buffer = stored[content]
            if tensor.quantization is not None:
                tensor.quantization = _SharedQuantization(tensor.quantization, packed_quantization)
        graph = flat._subgraph(key, inputs, outputs)
        graphs.append(graph)
        signatures.append(_signature(key, index, graph))
    return _pack(description, sorted(opcodes, key=opcodes.__getitem__), graphs, buffers, signatures)


def _pack(description: str, opcodes: list[int], graphs: list, buffers: list, signatures: list) -> bytes:
    import flatbuffers

    s = schema()
    model = s.ModelT()
    model.version = SCHEMA_VERSION
    model.description = description
    model.operatorCodes = [_operator_code(code) for code in opcodes]
    model.subgraphs = graphs
    model.buffers = buffers
    model.signatureDefs = signatures
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _signature(key: str, subgraph: int, graph):
    """Inputs and outputs are named as their tensors are (the ONNX names), so apps address them alike."""
    signature = schema().SignatureDefT()
    signature.signatureKey = key
    signature.subgraphIndex = subgraph
    signature.inputs = [_tensor_map(graph.tensors[i].name, i) for i in graph.inputs]
    signature.outputs = [_tensor_map(graph.tensors[i].name, i) for i in graph.outputs]
    return signature


def _tensor_map(name: str, index: int):
    entry = schema().TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry


def _operator_code(code: int):
    entry = schema().OperatorCodeT()
    entry.builtinCode = code
    entry.deprecatedBuiltinCode = min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES)
    entry.version = _FIRST_VERSION.get(opcode_names()[code], 1)
    return entry


class _SharedQuantization:
    """Quantization parameters packed once per distinct content and referenced from every tensor that has them.

    Each subgraph of a bucketed file has its own tensor for each weight, and the object API would write each
    tensor's per-channel scales and zero points again: measured on the dynamic-int8 MiniLM teacher, 249 kB per
    extra bucket, 3/4 of the file's growth over a one-bucket file. A flatbuffer table may be referenced from
    several places (offsets point back to data already written), so the copies are dropped.
    """

    def __init__(self, parameters, packed: dict[tuple, int]) -> None:
        self.parameters, self.packed = parameters, packed

    def Pack(self, builder):  # noqa: N802 - the object API's method name
        p = self.parameters
        content = tuple(
            tuple(np.asarray(v).ravel().tolist()) if v is not None and not np.isscalar(v) else v
            for v in (p.min, p.max, p.scale, p.zeroPoint, p.quantizedDimension, p.detailsType)
        )
        if p.details is not None or content not in self.packed:  # custom details: never shared
            offset = p.Pack(builder)
            if p.details is not None:
                return offset
            self.packed[content] = offset
        return self.packed[content]


class _AlignedBuffer:
    """A constant buffer packed 16-byte aligned, so kernels may read weights in place."""

    def __init__(self, array: np.ndarray) -> None:
        self.raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()

    def Pack(self, builder):  # noqa: N802 - the object API's method name
        s = schema()
        builder.StartVector(1, len(self.raw), _BUFFER_ALIGNMENT)
        builder.head -= len(self.raw)
        builder.Bytes[builder.head : builder.head + len(self.raw)] = self.raw
        data = builder.EndVector()
        s.BufferStart(builder)
        s.BufferAddData(builder, data)
        return s.BufferEnd(builder)


def weight_storage(data: bytes) -> dict[str, int]:
    """Bytes of constant data per tensor type in a `.tflite` (e.g. {"INT4": ..., "INT8": ..., "FLOAT32": ...}),
    read from the file: what precision its weights are stored in, whatever the graph it came from. A buffer
    several tensors share (the subgraphs of a bucketed file) is counted once, as the type it is first read as."""
    s = schema()
    model = s.Model.GetRootAs(data)
    names = {value: name for name, value in vars(s.TensorType).items() if not name.startswith("_")}
    storage: dict[str, int] = {}
    counted: set[int] = set()
    for index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(index)
        for position in range(graph.TensorsLength()):
            tensor = graph.Tensors(position)
            size = model.Buffers(tensor.Buffer()).DataLength()
            if size and tensor.Buffer() not in counted:
                counted.add(tensor.Buffer())
                kind = names[tensor.Type()]
                storage[kind] = storage.get(kind, 0) + size
    return dict(sorted(storage.items(), key=lambda item: -item[1]))


def weight_sharing(data: bytes) -> dict:
    """Constant bytes read by more than one subgraph ("shared") and, per subgraph in file order, the bytes
    only it reads ("own"): in a bucketed file the weights against each bucket's length-dependent constants."""
    model = schema().Model.GetRootAs(data)
    readers: dict[int, set[int]] = {}
    for index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(index)
        for position in range(graph.TensorsLength()):
            readers.setdefault(graph.Tensors(position).Buffer(), set()).add(index)
    sizes = {buffer: model.Buffers(buffer).DataLength() for buffer in readers}
    own = [
        sum(sizes[b] for b, graphs in readers.items() if graphs == {index}) for index in range(model.SubgraphsLength())
    ]
    return {"shared": sum(sizes[b] for b, graphs in readers.items() if len(graphs) > 1), "own": own}


def subgraph_alone(data: bytes, index: int) -> bytes:
    """The file with subgraph `index` as its only subgraph (and its signature only): LiteRT's Python API
    lists nodes and delegation for subgraph 0 alone, so the audit looks at another subgraph this way. For
    files written here, whose operators call no other subgraph."""
    import flatbuffers

    s = schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAs(data))
    model.subgraphs = [model.subgraphs[index]]
    model.signatureDefs = [sig for sig in model.signatureDefs or [] if sig.subgraphIndex == index]
    for signature in model.signatureDefs:
        signature.subgraphIndex = 0
    builder = flatbuffers.Builder(len(data) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def describe_weight_storage(storage: dict[str, int]) -> str:
    """One line for the audit: "weights stored as INT8 11.72 MB, INT4 5.31 MB, FLOAT32 1.28 MB"."""
    total = sum(storage.values())
    shown = [
        f"{kind} {size / 1e6:.2f} MB" if size >= 10_000 else f"{kind} {size / 1e3:.1f} kB"
        for kind, size in storage.items()
        if size >= total / 100
    ]  # shape vectors and flags left out
    return "weights stored as " + (", ".join(shown) or "none")
