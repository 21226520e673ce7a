"""Fix the symbolic batch and sequence axes of the inputs to the profile's `batch` and `seq_len`.

Before -> After: `input_ids[batch, sequence]` -> `input_ids[1, 128]` (and every other graph input and
output axis named the same). Stale `value_info` entries are dropped and shapes re-inferred, because
ONNX Runtime's quantizer and shape-dependent rewrites trip over shapes left from the dynamic export.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.graph._quant_common import copy_model
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass


@register_pass
@dataclass(frozen=True)
class FixShapes(Pass):
    name = "fix_shapes"
    stage = "graph"
    in_place = False

    def requires(self, model, ctx: PassContext) -> None:
        if ctx.dynamic_shapes:
            raise PassSkipped("the device profile asks for dynamic shapes")
        if ctx.seq_len is None:
            raise PassSkipped("no seq_len given")
        if not _symbolic_input_dims(model):
            raise PassSkipped("all input dims are already fixed")

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx

        model = copy_model(model)  # the dims below are set on the graph's own inputs
        sizes = _dim_sizes(model, ctx)
        fixed = []
        for value in list(model.graph.input) + list(model.graph.output):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in sizes:
                    fixed.append(f"{value.name}.{dim.dim_param}={sizes[dim.dim_param]}")
                    dim.dim_value = sizes[dim.dim_param]
        del model.graph.value_info[:]
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        fixed += _fix_output_shapes(model)
        return PassResult(model, [f"fixed inputs to batch {ctx.batch}, seq_len {ctx.seq_len}"],
                          {"fixed": fixed})

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        from edgecompress.errors import InternalError

        left = _symbolic_input_dims(result.model)
        if left:
            raise InternalError(f"fix_shapes left symbolic input dims {left}")


def _symbolic_input_dims(model) -> list[str]:
    return [f"{value.name}.{dim.dim_param}" for value in model.graph.input
            for dim in value.type.tensor_type.shape.dim if not dim.HasField("dim_value")]


def _dim_sizes(model, ctx: PassContext) -> dict[str, int]:
    """Axis 0 of an input is the batch, axis 1 the sequence; others are a model we do not take."""
    sizes: dict[str, int] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                dim.dim_param = dim.dim_param or f"{value.name}_dim{axis}"
                sizes[dim.dim_param] = ctx.batch if axis == 0 else ctx.seq_len
    return sizes


def _fix_output_shapes(model) -> list[str]:
    """Outputs whose dims are still symbolic get the shapes one run of the fixed graph produces.

    onnx shape inference stops at ONNX Runtime's contrib ops (the graph is fused by now), so the
    app-facing output shape is observed instead: with fixed inputs it is fully determined.
    """
    import numpy as np
    import onnxruntime as ort

    pending = [o for o in model.graph.output if any(not d.HasField("dim_value") for d in o.type.tensor_type.shape.dim)]
    if not pending:
        return []
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dtypes = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
    feeds = {i.name: np.zeros(i.shape, dtype=dtypes.get(i.type, np.float32)) for i in session.get_inputs()}
    observed = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    fixed = []
    for output in pending:
        for dim, size in zip(output.type.tensor_type.shape.dim, observed[output.name].shape):
            dim.dim_value = size
        fixed.append(f"{output.name}={list(observed[output.name].shape)}")
    return fixed
