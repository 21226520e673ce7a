"""Intake of an existing .onnx file: the graph enters at the rewrite stage; its own outputs are the reference."""

from __future__ import annotations

from pathlib import Path

from edgecompress.architectures import Architecture, architectures
from edgecompress.errors import UserError
from edgecompress.intake.model import CLASSIFICATION, EMBEDDING, ModelBundle, check_vocabulary, load_tokenizer
from edgecompress.intake.onnx_geometry import AttentionGeometry, read_attention_geometry

_ID_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_onnx_bundle(path: Path, *, tokenizer_dir: Path | None) -> ModelBundle:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise UserError(
            f"not a readable ONNX model ({type(exc).__name__})",
            where=str(path),
            expected="a file written by torch.onnx.export or another ONNX exporter",
        ) from None
    if not model.graph.node:
        raise UserError("not an ONNX model: the graph has no nodes", where=str(path))
    input_names = tuple(i.name for i in model.graph.input)
    unknown = [name for name in input_names if name not in _ID_INPUTS]
    if "input_ids" not in input_names or unknown:
        raise UserError(
            f"unsupported model inputs {list(input_names)}",
            where=str(path),
            expected=f"text-model inputs among {', '.join(_ID_INPUTS)}",
        )
    _check_finite(model, path)
    folder = tokenizer_dir or path.parent
    tables = _embedding_tables(model)
    # Like config.json's max_position_embeddings: a profile's seq_len beyond the table is refused at intake.
    config = {"max_position_embeddings": tables["position"]} if "position" in tables else {}
    tokenizer, settings = load_tokenizer(folder, config, path)
    if "word" in tables:
        check_vocabulary(tokenizer, tables["word"], folder, f"the input_ids table of {path.name}")
    output = _primary_output(model, path)
    kind = CLASSIFICATION if output.name == "logits" else EMBEDDING
    family = _family_from_names(model)
    geometry = read_attention_geometry(model)
    return ModelBundle(
        source=path,
        kind=kind,
        labels=None,
        tokenizer=tokenizer,
        tokenizer_dir=folder,
        tokenizer_settings=settings,
        onnx_model=model,
        config=_graph_config(geometry, family),
        input_names=input_names,
        output_name=output.name,
        attention_width=geometry.attention_width if geometry else None,
        architecture=family,
    )


def _graph_config(geometry: AttentionGeometry | None, family: Architecture | None) -> dict[str, int]:
    """The config facts the graph shows, under the family's config keys (BERT's when the family is unknown),
    so that the fuser gets the real head count and the report the real shape."""
    if geometry is None:
        return {}
    keys = family or architectures()["bert"]
    return {keys.heads_key: geometry.heads, keys.hidden_key: geometry.hidden_size, keys.layers_key: geometry.blocks}


def _family_from_names(model) -> Architecture | None:
    """The one registered family whose encoder attribute prefixes the graph's weight names
    (`distilbert.embeddings.word_embeddings.weight`), else None: a third-party file may name weights freely,
    and then the fuser's BERT settings apply, which ONNX Runtime uses for every BERT-like encoder."""
    prefixes = {init.name.split(".", 1)[0] for init in model.graph.initializer if "." in init.name}
    found = [family for family in architectures().values() if family.base and family.base in prefixes]
    return found[0] if len(found) == 1 else None


def _primary_output(model, path: Path):
    """The output an app consumes: `logits`, else the first 2-D float output (a sentence embedding)."""
    float_outputs = [o for o in model.graph.output if o.type.tensor_type.elem_type == 1]
    for output in float_outputs:
        if output.name == "logits":
            return output
    for output in float_outputs:
        if len(output.type.tensor_type.shape.dim) == 2:
            return output
    raise UserError(
        "no logits or 2-D float embedding output found",
        where=str(path),
        expected="an output named 'logits' or a [batch, hidden] float output",
    )


def _embedding_tables(model) -> dict[str, int]:
    """Rows of the word table (gathered by `input_ids`) and of the position table (gathered by computed ids
    from a table named for positions, or the only such table of more than 2 rows), when the graph shows them.

    Before fusion a BERT export reads `Gather(word_table, input_ids)`, `Gather(type_table, token_type_ids)`
    and `Gather(position_table, Slice(position_ids))`.
    """
    tables = {init.name: tuple(init.dims) for init in model.graph.initializer if len(init.dims) == 2}
    inputs = {value.name for value in model.graph.input}
    gathers = [
        (node.input[0], node.input[1])
        for node in model.graph.node
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input[0] in tables
    ]
    found: dict[str, int] = {}
    word = next((table for table, ids in gathers if ids == "input_ids"), None)
    if word is None:
        return found
    found["word"] = tables[word][0]
    width = tables[word][1]
    computed = [table for table, ids in gathers if ids not in inputs and tables[table][1] == width]
    named = [table for table in computed if "position" in table.lower()]
    larger = [table for table in computed if tables[table][0] > 2]
    position = named[0] if len(named) == 1 else larger[0] if len(larger) == 1 else None
    if position is not None:
        found["position"] = tables[position][0]
    return found


def _check_finite(model, path: Path) -> None:
    import numpy as np
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
            values = numpy_helper.to_array(init)
            if not np.isfinite(values.astype(np.float32)).all():
                raise UserError(
                    f"initializer '{init.name}' has {int((~np.isfinite(values.astype(np.float32))).sum())} "
                    f"NaN or infinite value(s)",
                    where=str(path),
                    expected="finite weights",
                )
