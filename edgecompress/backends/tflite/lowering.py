"""Lower the final rewritten ONNX graph to TFLite builtins: one registered function per ONNX op family.

Every ONNX node becomes one builtin or a short fixed sequence of builtins computing the same values in
the same order (each lowering states its Before -> After). Nodes whose inputs are all known at export
time (Constant, Shape of a fixed-shape value, shape arithmetic a fold left behind) are computed here
with the ONNX reference evaluator and written as constants, because TFLite has no use for them at run
time. Anything else without a lowering is a `UserError` naming the op, the node and the model: the
backend never falls back to Flex (select TensorFlow) ops, which stock LiteRT builds cannot run.

Shapes must be fixed: every value's shape and type comes from one onnxruntime run of the graph
(`onnx_facts.infer_shapes`), which knows the com.microsoft contrib ops that ONNX shape inference does not.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecompress.backends.tflite.registry import INT8_LOWERINGS, LOWERINGS, MS_DOMAIN
from edgecompress.backends.tflite.writer import FlatModel, UnsupportedTensorType, opcode, schema
from edgecompress.errors import InternalError, UserError
from edgecompress.onnx_facts import node_attribute

log = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLEX_HINT = (
    'only LiteRT builtin ops are written (no Flex/select TF ops): remove "tflite" from the device '
    "profile's artifacts, or use a recipe that does not leave this op in the graph"
)


def lower_to_tflite(model: onnx.ModelProto, *, exact_dynamic_int8: bool = False) -> bytes:
    """The `.tflite` bytes computing what `model` computes; its inputs and outputs keep their ONNX names.

    `exact_dynamic_int8`: every run-time int8 activation on ONNX Runtime's per-tensor grid (guard columns,
    see tflite_dynamic.py), not only QAttention's: slower, but the same integers as the ONNX Runtime file.
    """
    return lower_graph(model, exact_dynamic_int8=exact_dynamic_int8).finish()


def lower_to_tflite_signatures(
    named_graphs: list[tuple[str, onnx.ModelProto]], *, exact_dynamic_int8: bool = False
) -> bytes:
    """One `.tflite` with a signature per (key, graph), in that order (the first is subgraph 0, what `invoke()`
    runs), constant buffers stored once by content (`writer.serialize_signatures`)."""
    from edgecompress.backends.tflite.writer import serialize_signatures

    parts, description = [], ""
    for key, graph in named_graphs:
        lowering = lower_graph(graph, exact_dynamic_int8=exact_dynamic_int8)
        description = description or lowering.description()
        parts.append((key, lowering.flat, lowering.inputs, lowering.outputs()))
    return serialize_signatures(parts, description)


def lower_graph(model: onnx.ModelProto, *, exact_dynamic_int8: bool = False) -> Lowering:
    """`model` walked into one TFLite subgraph, not yet serialized (see `lower_to_tflite`)."""
    from edgecompress.backends.tflite.legalize import legalize_for_tflite
    from edgecompress.onnx_facts import infer_shapes

    import_op_lowerings()
    check_fixed_shapes(model)
    model = legalize_for_tflite(model, rejoin_row_splits=not exact_dynamic_int8)
    lowering = Lowering(model, infer_shapes(model), exact_dynamic_int8=exact_dynamic_int8)
    for node in model.graph.node:
        lowering.lower(node)
    return lowering


def import_op_lowerings() -> None:
    """Import every module under `ops/` so its @lowers decorators fill the registry (no hand-kept list)."""
    from edgecompress.backends.tflite import ops

    for module in pkgutil.iter_modules(ops.__path__, ops.__name__ + "."):
        importlib.import_module(module.name)


def check_fixed_shapes(model: onnx.ModelProto) -> None:
    """TFLite tensors have one static shape each, so a dynamic input dim cannot be lowered."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                raise UserError(
                    f"input '{value.name}' has a dynamic dimension {axis} ('{dim.dim_param or '?'}')",
                    where=f"model '{model.graph.name}'",
                    expected="fixed shapes for the TFLite backend",
                    hint="the device profile must fix shapes: set dynamic_shapes = false under [runtime] so "
                    "the fix_shapes pass fixes batch and seq_len",
                )


class Lowering:
    """One ONNX graph being written as one TFLite subgraph; lowerings call `value`, `const` and `emit`."""

    def __init__(self, model: onnx.ModelProto, shapes, *, exact_dynamic_int8: bool = False) -> None:
        self.model = model
        self.shapes = shapes
        self.exact_dynamic_int8 = exact_dynamic_int8  # see lower_to_tflite
        self.flat = FlatModel()
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.tensors: dict[str, int] = {}  # ONNX value name (or derived constant key) -> TFLite tensor
        self.cache: dict[tuple, Any] = {}  # subgraphs several nodes share (the attention mask)
        self.deferred: dict[str, Callable[[], int]] = {}  # values written only if something reads them
        self.qparams: dict[str, tuple[float, int]] = {}  # int8 activation tensor -> (scale, zero point)
        self.producers = {name: node for node in model.graph.node for name in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.graph_outputs = {value.name for value in model.graph.output}
        self.absorbed: set[str] = set()  # first outputs of nodes an earlier lowering already wrote
        self.biased: set[str] = set()  # MatMul results that already include their reader's bias (`fold_bias`)
        self._scope = "graph"
        self._counter = itertools.count()
        initializers = set(self.constants)
        self.inputs = [self._graph_input(v) for v in model.graph.input if v.name not in initializers]

    # --- what lowerings read -----------------------------------------------------------------------

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.constants:
            return tuple(self.constants[name].shape)
        return tuple(int(d) for d in self.shapes[name][0])

    def dtype(self, name: str) -> np.dtype:
        if name in self.constants:
            return self.constants[name].dtype
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.shapes[name][1]))

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or folded value, or None when it is only known at run time."""
        return self.constants.get(name)

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.readers or name in self.graph_outputs)

    def sole_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node reading `name`, when exactly one does and it is not also a graph output."""
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.graph_outputs else None

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        return node_attribute(node, name, default)

    # --- what lowerings write ----------------------------------------------------------------------

    def value(self, name: str) -> int:
        """The TFLite tensor holding an ONNX value; a constant gets its buffer on first use."""
        if name not in self.tensors and name in self.deferred:
            self.tensors[name] = self.deferred.pop(name)()
        if name not in self.tensors:
            if name not in self.constants:
                raise InternalError(f"TFLite lowering reached '{name}' before the node producing it")
            array = self.constants[name]
            self.tensors[name] = self.flat.tensor(name, array.shape, array.dtype, data=array)
        return self.tensors[name]

    def const(self, array: np.ndarray, key: str, quantization=None) -> int:
        """A constant derived at export time (transposed weights, shape vectors), written once per key."""
        if key not in self.tensors:
            array = np.asarray(array)
            self.tensors[key] = self.flat.tensor(key, array.shape, array.dtype, data=array, quantization=quantization)
        return self.tensors[key]

    def const_int4(self, packed: np.ndarray, shape, key: str, quantization) -> int:
        """A constant INT4 tensor of `shape` whose values come packed two per byte (see `FlatModel.int4_tensor`)."""
        if key not in self.tensors:
            self.tensors[key] = self.flat.int4_tensor(key, shape, packed, quantization)
        return self.tensors[key]

    def emit(
        self,
        op: str,
        inputs: list[int],
        *,
        out: str | None = None,
        shape=None,
        dtype=None,
        options=None,
        quantization=None,
    ) -> int:
        """Add builtin `op`; its output is the ONNX value `out` (its dtype overridable, for int8 tensors
        standing for uint8 ones), or an intermediate of `shape` and `dtype`."""
        if out is not None:
            shape, dtype, name = self.shape(out), dtype or self.dtype(out), out
        else:
            name = f"{self._scope}/{op.lower()}_{next(self._counter)}"
        tensor = self.flat.tensor(name, shape, dtype, quantization=quantization)
        self.flat.operator(opcode(op), inputs, [tensor], options)
        if out is not None:
            self.tensors[out] = tensor
        return tensor

    def absorb(self, node: onnx.NodeProto) -> None:
        """Mark a later node as written by the current lowering (the Add and QuantizeLinear an int8 op fuses)."""
        self.absorbed.add(node.output[0])

    def fold_bias(self, product: str) -> BiasFold | None:
        """The bias the one reader of a MatMul result adds, for the FULLY_CONNECTED writing `product` to
        add instead (see `match_bias_fold`): the reader's lowering then skips its ADD, or, for an Add, is
        absorbed. None, with the reason logged, when the reader's bias cannot move into the matmul."""
        fold = match_bias_fold(self, product)
        if isinstance(fold, str):
            log.debug("bias of '%s' not folded into its FULLY_CONNECTED: %s", product, fold)
            return None
        if fold.out == product:
            self.biased.add(product)
        else:
            self.absorb(self.sole_reader(product))
        return fold

    def defer(self, name: str, write: Callable[[], int]) -> None:
        """Write `name` with `write()` only when a later lowering reads it (a DEQUANTIZE an int8 op skips)."""
        self.deferred[name] = write

    def bind(self, name: str, tensor: int) -> None:
        """Make an ONNX value an alias of a tensor an earlier builtin wrote."""
        self.tensors[name] = tensor

    def options(self, kind: str, **fields):
        """The schema's `<kind>OptionsT` with `fields` set, e.g. options("FullyConnected", keepNumDims=True)."""
        return getattr(schema(), f"{kind}OptionsT")(**fields)

    def unsupported(self, node: onnx.NodeProto, why: str) -> UserError:
        return unsupported_error(node, self.model, why)

    # --- driving the lowering ----------------------------------------------------------------------

    def lower(self, node: onnx.NodeProto) -> None:
        try:
            self._lower(node)
        except UnsupportedTensorType as exc:
            raise self.unsupported(node, str(exc)) from None

    def _lower(self, node: onnx.NodeProto) -> None:
        if node.output[0] in self.absorbed:
            return
        self._scope = node.name or node.output[0]
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        if domain == "" and self._is_static(node):
            self._fold(node)
            return
        int8 = INT8_LOWERINGS.get((domain, node.op_type))
        if int8 is not None and int8(self, node):
            return
        lowerer = LOWERINGS.get((domain, node.op_type))
        if lowerer is None:
            raise self.unsupported(node, "no lowering to LiteRT builtins exists for this op")
        lowerer(self, node)

    def finish(self) -> bytes:
        return self.flat.serialize(self.inputs, self.outputs(), description=self.description())

    def outputs(self) -> list[int]:
        """The graph outputs' tensors, written now (call once, after the last node)."""
        return [self._graph_output(v.name) for v in self.model.graph.output]

    def description(self) -> str:
        return f"edgecompress: {self.model.graph.name}"

    def _graph_output(self, name: str) -> int:
        """Outputs are found by name: an output that aliases another value (Identity) gets its own copy."""
        tensor = self.value(name)
        if self.flat.tensors[tensor].name == name:
            return tensor
        self._scope = name
        shape = list(self.shape(name))
        return self.emit("RESHAPE", [tensor, self.const(np.array(shape, np.int32), f"shape{shape}")], out=name)

    def _graph_input(self, value: onnx.ValueInfoProto) -> int:
        self.tensors[value.name] = self.flat.tensor(value.name, self.shape(value.name), self.dtype(value.name))
        return self.tensors[value.name]

    def _is_static(self, node: onnx.NodeProto) -> bool:
        """Computable now: all inputs constant, or a Shape of a value whose shape is fixed."""
        return node.op_type == "Shape" or all(not name or name in self.constants for name in node.input)

    def _fold(self, node: onnx.NodeProto) -> None:
        from onnx.reference import ReferenceEvaluator

        if node.op_type == "Shape":  # only the shape matters: run on zeros, not on data we do not have
            feeds = {node.input[0]: np.zeros(self.shape(node.input[0]), self.dtype(node.input[0]))}
        else:
            feeds = {name: self.constants[name] for name in node.input if name}
        if node.op_type == "GatherElements":
            self.constants[node.output[0]] = _gather_elements(node, *feeds.values())
            return
        results = ReferenceEvaluator(node).run(None, feeds)
        for name, result in zip(node.output, results):
            self.constants[name] = np.asarray(result)


def _gather_elements(node: onnx.NodeProto, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """GatherElements in numpy. onnx's reference evaluator gathers with np.choose, which takes at most 32
    choices, and its fallback is wrong on 2-D inputs: a hand-exported transformers 5 BERT without a
    token_type_ids input gathers its [1, 128] zero buffer by position ids and crashed the lowering."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % data.ndim
    return np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis=axis)


@dataclass(frozen=True)
class BiasFold:
    """A constant bias a FULLY_CONNECTED adds in its own output pass, instead of a separate ADD."""

    bias: np.ndarray  # float32 [N], one per output column
    out: str  # the ONNX value the FULLY_CONNECTED writes: the MatMul's result, or the Add it replaces


# Contrib readers of a MatMul result that add a constant bias: op -> (inputs the product may be, bias input)
_BIAS_READERS = {"SkipLayerNormalization": ((0, 1), 4), "BiasGelu": ((0,), 1)}


def match_bias_fold(lw: Lowering, product: str) -> BiasFold | str:
    """Before -> After:
    - `SkipLayerNormalization(MatMul(A, W), skip, gamma, beta, bias)` ->
      `SkipLayerNormalization(FULLY_CONNECTED(A, W^T, bias), skip, gamma, beta)` (one ADD less);
    - `BiasGelu(MatMul(A, W), bias)` -> `GELU(FULLY_CONNECTED(A, W^T, bias))`;
    - `Add(MatMul(A, W), c)` with c a constant [N] (or [1, .., N]) -> `FULLY_CONNECTED(A, W^T, c)`.
    The sum is the same up to float rounding (the kernel starts its accumulators at the bias); it saves a
    full pass over the result. Returns why not when the pattern does not hold.
    """
    reader = lw.sole_reader(product)
    if reader is None:
        count = len(lw.readers.get(product, []))
        return "it is a graph output" if product in lw.graph_outputs else f"it is read by {count} nodes"
    width = lw.shape(product)[-1]
    domain = "" if reader.domain in _DEFAULT_DOMAINS else reader.domain
    if domain == MS_DOMAIN and reader.op_type in _BIAS_READERS:
        positions, bias_at = _BIAS_READERS[reader.op_type]
        bias_name = reader.input[bias_at] if len(reader.input) > bias_at else ""
        if not any(index < len(reader.input) and reader.input[index] == product for index in positions):
            return f"{reader.op_type} '{reader.name}' does not read it as its data input"
        if not bias_name:
            return f"{reader.op_type} '{reader.name}' has no bias"
        out = product
    elif domain == "" and reader.op_type == "Add":
        others = [name for name in reader.input if name != product]
        if len(others) != 1:
            return f"Add '{reader.name}' adds it to itself"
        bias_name, out = others[0], reader.output[0]
        if lw.shape(out) != lw.shape(product):
            return f"Add '{reader.name}' broadcasts it to {list(lw.shape(out))}"
    else:
        return f"its reader {reader.op_type} '{reader.name}' adds no bias"
    bias = lw.constant(bias_name)
    if bias is None:
        return f"the bias '{bias_name}' of {reader.op_type} '{reader.name}' is not a constant"
    if bias.dtype != np.float32 or bias.size != width or bias.shape[-1:] != (width,):
        return f"the bias '{bias_name}' is not a float32 vector of {width} (shape {list(bias.shape)})"
    return BiasFold(bias.reshape(-1), out)


def unsupported_error(node: onnx.NodeProto, model: onnx.ModelProto, why: str) -> UserError:
    domain = "" if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::"
    return UserError(
        f"cannot lower {domain}{node.op_type} node '{node.name}' to TFLite: {why}",
        where=f"model '{model.graph.name}'",
        hint=_FLEX_HINT,
    )
