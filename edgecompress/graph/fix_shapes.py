"""Fix the symbolic batch and sequence axes of the inputs to the profile's `batch` and `seq_len`.

Before -> After: `input_ids[batch, sequence]` -> `input_ids[1, 128]` (and every other graph input and
output axis named the same). When the profile serves several lengths (buckets), only the batch is fixed:
`input_ids[batch, sequence]` -> `input_ids[1, sequence]`, and each backend serves the buckets from that
graph (ONNX Runtime as it is, LiteRT one signature per length, see rewrite.specialize).

Stale `value_info` entries are dropped and shapes re-inferred, because ONNX Runtime's quantizer and
shape-dependent rewrites trip over shapes left from the dynamic export.
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
        if not _symbolic_input_dims(model, keep_sequence=ctx.dynamic_sequence):
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
        if ctx.dynamic_sequence:
            fixed += _fix_output_shapes(model, _sequence_params(model), ctx.seq_len, _other_length(ctx))
        else:
            fixed += _fix_output_shapes(model, set(), ctx.seq_len)
        if ctx.dynamic_sequence:
            note = f"fixed inputs to batch {ctx.batch}; the sequence axis serves lengths {list(ctx.buckets)}"
        else:
            note = f"fixed inputs to batch {ctx.batch}, seq_len {ctx.seq_len}"
        return PassResult(model, [note], {"fixed": fixed})

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        from edgecompress.errors import InternalError

        left = _symbolic_input_dims(result.model, keep_sequence=ctx.dynamic_sequence)
        if left:
            raise InternalError(f"fix_shapes left symbolic input dims {left}")


def _symbolic_input_dims(model, *, keep_sequence: bool = False) -> list[str]:
    """Input dims not fixed yet; with `keep_sequence`, axis 1 (the sequence) is meant to stay symbolic."""
    return [
        f"{value.name}.{dim.dim_param}"
        for value in model.graph.input
        for axis, dim in enumerate(value.type.tensor_type.shape.dim)
        if not dim.HasField("dim_value") and not (keep_sequence and axis == 1)
    ]


def _dim_sizes(model, ctx: PassContext) -> dict[str, int]:
    """Axis 0 of an input is the batch, axis 1 the sequence; others are a model we do not take."""
    sizes: dict[str, int] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                dim.dim_param = dim.dim_param or f"{value.name}_dim{axis}"
                if axis == 0 or not ctx.dynamic_sequence:
                    sizes[dim.dim_param] = ctx.batch if axis == 0 else ctx.seq_len
    return sizes


def _other_length(ctx: PassContext) -> int:
    """A second length to run a symbolic-sequence graph at: the shortest bucket, or half the longest."""
    shortest = ctx.buckets[0] if ctx.buckets else 0
    return shortest if 0 < shortest < ctx.seq_len else max(ctx.seq_len // 2, 1)


def _sequence_params(model) -> set[str]:
    """The names of the inputs' symbolic sequence axes (axis 1), which stay symbolic for bucketed profiles."""
    return {
        value.type.tensor_type.shape.dim[1].dim_param
        for value in model.graph.input
        if len(value.type.tensor_type.shape.dim) > 1 and value.type.tensor_type.shape.dim[1].dim_param
    }


def _fix_output_shapes(
    model, sequence_params: set[str], seq_len: int | None, other_len: int | None = None
) -> list[str]:
    """Outputs whose dims are still symbolic get the shapes one run of the fixed graph produces.

    onnx shape inference stops at ONNX Runtime's contrib ops (the graph is fused by now), so the
    app-facing output shape is observed instead: with fixed inputs it is fully determined. With a symbolic
    sequence axis (`sequence_params`), the graph is run at two lengths and only dims that do not move with
    the length are fixed; a dim equal to the length both times is named like the inputs' sequence axis.
    """

    def open_dims(output) -> list:
        return [
            d
            for d in output.type.tensor_type.shape.dim
            if not d.HasField("dim_value") and d.dim_param not in sequence_params
        ]

    pending = [o for o in model.graph.output if open_dims(o)]
    if not pending:
        return []
    observed = _observe_outputs(model, seq_len)
    again = _observe_outputs(model, other_len) if sequence_params and other_len else observed
    sequence_name = sorted(sequence_params)[0] if sequence_params else None
    fixed = []
    for output in pending:
        shapes = zip(output.type.tensor_type.shape.dim, observed[output.name].shape, again[output.name].shape)
        for dim, size, other in shapes:
            if dim.HasField("dim_value") or dim.dim_param in sequence_params:
                continue
            if size == other:
                dim.dim_value = size
            elif (size, other) == (seq_len, other_len):
                dim.dim_param = sequence_name
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in output.type.tensor_type.shape.dim]
        fixed.append(f"{output.name}={shape}")
    return fixed


def _observe_outputs(model, seq_len: int | None) -> dict:
    """Every graph output of one run on zeros, symbolic input dims at `seq_len`."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dtypes: dict[str, type[np.generic]] = {
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(float)": np.float32,
    }
    feeds = {
        i.name: np.zeros(
            [d if isinstance(d, int) else seq_len or 1 for d in i.shape], dtype=dtypes.get(i.type, np.float32)
        )
        for i in session.get_inputs()
    }
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
