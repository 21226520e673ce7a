"""The lower stage: the compressed torch module -> an ONNX graph with dynamic batch and sequence axes.

Shapes are fixed later by the `fix_shapes` pass, per device profile, so ONNX intake and torch intake
go through the same rewrites. The TorchScript exporter is used on purpose: measured on MiniLM
(torch 2.13, onnxruntime 1.31), its graph of eager attention is the one ONNX Runtime's transformer
optimizer fuses into 6 `Attention` ops; the dynamo export fuses none.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import TYPE_CHECKING

from edgecompress.errors import UserError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

OPSET = 17
# onnxruntime 1.31 loads IR versions up to 13; stay well inside what mobile ORT builds accept.
MAX_IR_VERSION = 9


def export_onnx(bundle, sample_feeds: dict) -> onnx.ModelProto:
    """Export `bundle.module`; `sample_feeds` are real tokenized inputs used to trace the graph.

    A module that lowers itself (`to_onnx(sample_feeds, input_names, output_name)`, e.g. the integer-only
    model, whose integer arithmetic the torch exporter would turn into float ops) is asked to do so.
    """
    import onnx
    import torch

    module = bundle.module.eval()
    own_lowering = getattr(module, "to_onnx", None)
    if own_lowering is not None:
        model = own_lowering(sample_feeds, input_names=tuple(bundle.input_names), output_name=bundle.output_name)
        onnx.helper.set_model_props(model, {"converted_by": "edgecompress"})
        return model
    args = tuple(torch.from_numpy(sample_feeds[name][:1]) for name in bundle.input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in bundle.input_names}
    axes[bundle.output_name] = {0: "batch"}
    try:
        return torchscript_to_onnx(module, args, bundle.input_names, (bundle.output_name,), axes)
    except Exception as exc:
        raise UserError(
            f"torch.onnx.export failed: {type(exc).__name__}: {str(exc)[:300]}",
            where=str(bundle.source),
            hint="the model may contain a layer the ONNX exporter cannot lower",
        ) from None


def torchscript_to_onnx(
    module, args: tuple, input_names, output_names, dynamic_axes: dict, props: dict[str, str] | None = None
) -> onnx.ModelProto:
    """`module` through the TorchScript exporter (see the module docstring) at OPSET, into memory; IR version
    capped at MAX_IR_VERSION; `converted_by` (and `props`) in the model's metadata."""
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        # torch's stub names only paths; the TorchScript exporter writes to any binary file object
        torch.onnx.export(
            module,
            args,
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    # producer_name stays "pytorch": ONNX Runtime's fuser checks it to pick its BERT patterns.
    onnx.helper.set_model_props(model, {"converted_by": "edgecompress", **(props or {})})
    return model


# Lowering is checked on this many texts before any rewrite, so an exporter bug is named as such.
LOWERING_CHECK_ROWS = 32


def lower(bundle, feeds: dict, reference) -> onnx.ModelProto:
    """The lower stage: the compressed model as an ONNX graph, checked against its reference outputs.

    An ONNX intake is handed on as a copy of the input file's graph (the rewrites never touch the input).
    """
    import onnx

    from edgecompress.errors import VerificationError
    from edgecompress.verify.evaluate import compare, ort_session, parity_atol, run_session

    if bundle.module is None:
        graph = onnx.ModelProto()
        graph.CopyFrom(bundle.onnx_model)
        return graph
    graph = export_onnx(bundle, feeds)
    rows = {name: values[:LOWERING_CHECK_ROWS] for name, values in feeds.items()}
    session = ort_session(graph.SerializeToString(), threads=2, optimize=False)
    outputs = run_session(session, rows, output_name=bundle.output_name, batch_size=8)
    parity = compare(reference[:LOWERING_CHECK_ROWS], outputs, task=bundle.task, feeds=rows, atol=parity_atol(bundle))
    if not parity.passed:
        raise VerificationError(
            f"lowering to ONNX changed the model: max |diff| {parity.max_abs_diff:.3g} "
            f"> {parity.tolerance} on {parity.examples} texts (this is a bug; please report it)"
        )
    return graph
