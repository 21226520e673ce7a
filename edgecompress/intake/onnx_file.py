"""Intake of an existing .onnx file: the graph enters at the rewrite stage; its own outputs are the reference.

The task (and the labels) come from a config.json beside the file when there is one (Optimum writes it), else
from --task; a file whose outputs do not say the task on their own is refused, naming --task. A question
answering file's start_logits and end_logits are stacked into span_logits: one output per artifact.
"""

from __future__ import annotations

from pathlib import Path

from edgecompress.architectures import Architecture, architectures
from edgecompress.errors import UserError
from edgecompress.intake.model import ModelBundle, check_vocabulary, load_tokenizer
from edgecompress.intake.onnx_geometry import AttentionGeometry, read_attention_geometry

_ID_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_onnx_bundle(path: Path, *, tokenizer_dir: Path | None, task_name: str | None = None) -> ModelBundle:
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
    task = _task(model, path, task_name)
    if task.output_name == "span_logits" and "span_logits" not in {o.name for o in model.graph.output}:
        _stack_span_logits(model, path)
    output = _task_output(model, path, task)
    family = _family_from_names(model)
    geometry = read_attention_geometry(model)
    return ModelBundle(
        source=path,
        task=task,
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


def _task(model, path: Path, task_name: str | None):
    """The file's task: config.json beside it, else --task, else what its outputs say without doubt."""
    from edgecompress.intake.model import read_config
    from edgecompress.tasks import detect_task, task_class, task_names

    config_path = path.parent / "config.json"
    config = read_config(path.parent) if config_path.is_file() else {}
    if config:
        architecture = (config.get("architectures") or [""])[0]
        if architecture:
            task = detect_task(config, architecture, path.parent)
            if task_name is not None and task_name != task.name:
                raise UserError(
                    f"--task {task_name} does not match config.json beside the file, which says {task.name}",
                    where=str(config_path),
                )
            return task
    if task_name is not None:
        return task_class(task_name).from_config(config, path.parent)
    guessed = _unambiguous_task(model)
    if guessed is None:
        outputs = ", ".join(f"{o.name} {_rank(o)}-D" for o in model.graph.output)
        raise UserError(
            f"cannot tell the task from the outputs ({outputs}) and there is no config.json beside the file",
            where=str(path),
            hint=f"give --task ({', '.join(task_names())}) or put the model's config.json beside it",
        )
    return task_class(guessed).from_config({}, path.parent)


def _unambiguous_task(model) -> str | None:
    """A task only the outputs' names and ranks show: span logits, per-token logits, a pooled embedding.
    2-D logits are not: single-label, multi-label and regression heads all write them."""
    ranks = {o.name: _rank(o) for o in model.graph.output if o.type.tensor_type.elem_type == 1}
    if {"start_logits", "end_logits"} <= set(ranks) or ranks.get("span_logits") == 3:
        return "question-answering"
    if ranks.get("logits") == 3:
        return "token-classification"
    if ranks.get("sentence_embedding") == 2 or (len(ranks) == 1 and "logits" not in ranks and 2 in ranks.values()):
        return "sentence-embedding"
    return None


def _rank(output) -> int:
    return len(output.type.tensor_type.shape.dim)


def _task_output(model, path: Path, task):
    """The task's output: by its name, else (an embedding) the only 2-D float output."""
    float_outputs = [o for o in model.graph.output if o.type.tensor_type.elem_type == 1]
    named = [o for o in float_outputs if o.name == task.output_name]
    if not named and task.output_name == "sentence_embedding":
        named = [o for o in float_outputs if _rank(o) == 2][:1]
    if not named or _rank(named[0]) != len(task.output_axes):
        raise UserError(
            f"no {task.name} output found among {[o.name for o in model.graph.output]}",
            where=str(path),
            expected=f"a float output {task.output_name} [{', '.join(task.output_axes)}]",
        )
    return named[0]


def _stack_span_logits(model, path: Path) -> None:
    """start_logits, end_logits [batch, seq] -> span_logits [batch, seq, 2] (what the app reads), in place."""
    from onnx import TensorProto, helper

    outputs = {o.name: o for o in model.graph.output}
    if not {"start_logits", "end_logits"} <= set(outputs):
        raise UserError(
            "a question-answering file needs start_logits and end_logits outputs",
            where=str(path),
            expected="outputs start_logits and end_logits [batch, sequence] (as Optimum exports them)",
        )
    axes = helper.make_tensor("span_axes", TensorProto.INT64, [1], [-1])
    model.graph.initializer.append(axes)
    for name in ("start_logits", "end_logits"):
        model.graph.node.append(helper.make_node("Unsqueeze", [name, "span_axes"], [f"{name}_span"]))
    model.graph.node.append(
        helper.make_node("Concat", ["start_logits_span", "end_logits_span"], ["span_logits"], axis=-1)
    )
    dims = [d.dim_param or d.dim_value for d in outputs["start_logits"].type.tensor_type.shape.dim]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("span_logits", TensorProto.FLOAT, [*dims, 2]))


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
