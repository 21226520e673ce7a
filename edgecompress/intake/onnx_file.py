"""Intake of an existing .onnx file: the graph enters at the rewrite stage; its own outputs are the reference."""

from __future__ import annotations

from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.intake.model import CLASSIFICATION, EMBEDDING, ModelBundle, load_tokenizer

_ID_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_onnx_bundle(path: Path, *, tokenizer_dir: Path | None) -> ModelBundle:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise UserError(f"not a readable ONNX model ({type(exc).__name__})", where=str(path),
                        expected="a file written by torch.onnx.export or another ONNX exporter") from None
    if not model.graph.node:
        raise UserError("not an ONNX model: the graph has no nodes", where=str(path))
    input_names = tuple(i.name for i in model.graph.input)
    unknown = [name for name in input_names if name not in _ID_INPUTS]
    if "input_ids" not in input_names or unknown:
        raise UserError(f"unsupported model inputs {list(input_names)}", where=str(path),
                        expected=f"text-model inputs among {', '.join(_ID_INPUTS)}")
    folder = tokenizer_dir or path.parent
    tokenizer, settings = load_tokenizer(folder, {}, path)
    output = _primary_output(model, path)
    kind = CLASSIFICATION if output.name == "logits" else EMBEDDING
    return ModelBundle(source=path, kind=kind, labels=None, tokenizer=tokenizer, tokenizer_dir=folder,
                       tokenizer_settings=settings, onnx_model=model, config={},
                       input_names=input_names, output_name=output.name)


def _primary_output(model, path: Path):
    """The output an app consumes: `logits`, else the first 2-D float output (a sentence embedding)."""
    float_outputs = [o for o in model.graph.output if o.type.tensor_type.elem_type == 1]
    for output in float_outputs:
        if output.name == "logits":
            return output
    for output in float_outputs:
        if len(output.type.tensor_type.shape.dim) == 2:
            return output
    raise UserError("no logits or 2-D float embedding output found", where=str(path),
                    expected="an output named 'logits' or a [batch, hidden] float output")
