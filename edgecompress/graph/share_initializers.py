"""Keep one copy of every constant tensor that the graph holds more than once.

Before -> After: `Attention(X, W_qkv_0, ...)`, `Attention(Y, W_qkv_1, ...)` with W_qkv_0 == W_qkv_1 byte for
byte -> both read W_qkv_0; W_qkv_1 is gone.

Models with shared layers (ALBERT, `share_layers`) come out of torch's exporter with each weight once, but
ONNX Runtime's fuser packs Q, K and V into a new tensor for every Attention node and the quantizers write
a quantized copy per node, so a shared weight comes back once per depth. Merging is exact: initializers are
constants and no pass after this one edits a tensor in place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from onnx import numpy_helper

from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass


@register_pass
@dataclass(frozen=True)
class ShareInitializers(Pass):
    name = "share_initializers"
    stage = "graph"
    in_place = False
    runs_after = (
        "fuse_transformer",
        "fold_constants",
        "quantize_dynamic",
        "quantize_static",
        "quantize_int4",
        "trim_gathered_tables",
    )

    def requires(self, model, ctx: PassContext) -> None:
        if not duplicates(model):
            raise PassSkipped("no constant tensor is held twice")

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx

        result = onnx.ModelProto()
        result.CopyFrom(model)
        rename = duplicates(result)
        _redirect(result.graph, rename)
        kept = [t for t in result.graph.initializer if t.name not in rename]
        saved = sum(t.ByteSize() for t in result.graph.initializer if t.name in rename)
        del result.graph.initializer[:]
        result.graph.initializer.extend(kept)
        shapes = [v for v in result.graph.value_info if v.name not in rename]
        del result.graph.value_info[:]
        result.graph.value_info.extend(shapes)
        note = f"{len(rename)} duplicate constant tensors merged into their first copy ({saved / 1e3:.1f} kB)"
        return PassResult(result, [note], {"merged": len(rename), "bytes_saved": saved})


def duplicates(model) -> dict[str, str]:
    """{name of a later copy: name of the first} for initializers equal in type, shape and bytes."""
    first: dict[tuple, str] = {}
    rename = {}
    # Initializers that are also graph inputs or outputs are named in the model's interface: left alone.
    interface = {v.name for v in model.graph.output} | {v.name for v in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name in interface:
            continue
        array = numpy_helper.to_array(tensor)
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(array.tobytes()).hexdigest())
        if key in first:
            rename[tensor.name] = first[key]
        else:
            first[key] = tensor.name
    return rename


def _redirect(graph, rename: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attribute in node.attribute:
            if attribute.g.node:  # subgraphs (If/Loop) read outer initializers by name too
                _redirect(attribute.g, rename)
