"""Intake: a Hugging Face BERT-family checkpoint folder or an existing .onnx file -> ModelBundle.

Loading is offline and safe: safetensors, or `torch.load(weights_only=True)` for `.bin`. Weights are
matched against the config by hand (not `from_pretrained`), because `from_pretrained` silently
initialises missing tensors at random, which would ship an untrained model without a word.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.architectures import Architecture, architecture_for, architectures
from edgecompress.errors import InternalError, UserError

# The heads intake builds, as suffixes of a family's class prefix ("Bert" + "ForSequenceClassification").
SUPPORTED_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "Model")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# Task names (tasks/): passes that train with cross-entropy on labels check for single-label classification.
CLASSIFICATION = "sequence-classification"
EMBEDDING = "sentence-embedding"


@dataclass
class TokenizerSettings:
    """What the app's tokenizer must do so that the model sees what it was trained on."""

    lowercase: bool
    max_length: int
    padding: str = "max_length"
    truncation: bool = True
    pad_token_id: int = 0
    files: tuple[str, ...] = ()


@dataclass
class ModelBundle:
    """The model as it travels through the compress stage (torch) or enters at the graph stage (ONNX)."""

    source: Path
    task: Any  # an edgecompress.tasks Task: output, predictions, scores, agreement, data format
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    tokenizer_dir: Path
    tokenizer_settings: TokenizerSettings
    module: Any = None  # torch.nn.Module taking (input_ids, attention_mask, token_type_ids)
    onnx_model: Any = None  # onnx.ModelProto for ONNX intake
    config: dict[str, Any] = field(default_factory=dict)
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    output_name: str = "logits"
    # Width of the attention's Q/K/V projections (heads x head size): ONNX Runtime's fuser calls it
    # `hidden_size`, "the hidden dimension after pruning". None: the config's hidden_size (no heads pruned).
    attention_width: int | None = None
    # The model computes in integers from its inputs to its outputs (I-BERT): every artifact's op audit
    # must then find no float op between integer ops.
    integer_only: bool = False
    # The encoder family (architectures/): where its parts live, its inputs, its fusion settings. None: an
    # .onnx file or a distilled student that no family describes.
    architecture: Architecture | None = None
    # Tolerance of artifact parity for a model that is not float (an integer-only model: one least-significant
    # bit of its output scale); None: the float tolerance, FLOAT_PARITY_ATOL.
    parity_atol: float | None = None
    # Early exit (compress/early_exit.py): the trained ramps, policy and threshold (an exits.ramps.ExitRamps);
    # the package stage then ships the model as segments beside the whole-model artifacts. None: no exits.
    exits: Any = None

    @property
    def kind(self) -> str:
        """The task's name, e.g. CLASSIFICATION (single-label) or EMBEDDING."""
        return self.task.name

    @property
    def labels(self) -> list[str] | None:
        return self.task.labels

    @property
    def num_heads(self) -> int | None:
        return self.config.get(self.architecture.heads_key if self.architecture else "num_attention_heads")

    @property
    def hidden_size(self) -> int | None:
        return self.config.get(self.architecture.hidden_key if self.architecture else "hidden_size")

    @property
    def num_layers(self) -> int | None:
        return self.config.get(self.architecture.layers_key if self.architecture else "num_hidden_layers")


def load_bundle(path: Path, *, tokenizer_dir: Path | None = None, task_name: str | None = None) -> ModelBundle:
    """Intake dispatch: a checkpoint folder or an .onnx file."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            "model path does not exist",
            where=str(path),
            expected="a checkpoint folder (config.json, weights, tokenizer) or an .onnx file",
        )
    if path.is_file():
        from edgecompress.intake.onnx_file import load_onnx_bundle

        return load_onnx_bundle(path, tokenizer_dir=tokenizer_dir, task_name=task_name)
    return load_checkpoint(path, task_name)


def load_checkpoint(folder: Path, task_name: str | None = None) -> ModelBundle:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
    if not any(folder.iterdir()):
        raise UserError(
            "checkpoint folder is empty",
            where=str(folder),
            expected="config.json, model.safetensors (or pytorch_model.bin), tokenizer files",
        )
    config = read_config(folder)
    from edgecompress.distill.students import ARCHITECTURES as STUDENTS

    if (config.get("architectures") or [None])[0] in STUDENTS.values():  # a distilled BiLSTM or CNN
        from edgecompress.distill.checkpoint import load_student

        return load_student(folder, config)
    family, head = check_architecture(config, folder)
    task = checkpoint_task(config, family.class_prefix + head, folder, task_name)
    module = build_module(folder, config, family, task)
    tokenizer, settings = load_tokenizer(folder, config, folder)
    check_vocabulary(tokenizer, config["vocab_size"], folder, "config.json vocab_size")
    check_pad_id(tokenizer, config, family, folder)
    return ModelBundle(
        source=folder,
        task=task,
        tokenizer=tokenizer,
        tokenizer_dir=folder,
        tokenizer_settings=settings,
        module=module,
        config=config,
        output_name=task.output_name,
        input_names=family.input_names,
        architecture=family,
    )


def checkpoint_task(config: dict[str, Any], architecture: str, folder: Path, task_name: str | None):
    """The task the checkpoint's head and config.json say; `--task`, when given, must be the same."""
    from edgecompress.tasks import detect_task

    task = detect_task(config, architecture, folder)
    if task_name is not None and task_name != task.name:
        raise UserError(
            f"--task {task_name} does not match the checkpoint, which is {task.name} ({architecture})",
            where=str(folder / "config.json"),
            hint="leave out --task for a checkpoint folder: its head and config.json decide",
        )
    return task


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(
            "config.json is missing", where=str(folder), hint="point at the folder written by save_pretrained()"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config.json is not valid JSON ({exc})", where=str(path)) from None
    if not isinstance(config, dict):
        raise UserError("config.json is not a JSON object", where=str(path))
    return config


def check_architecture(config: dict[str, Any], folder: Path) -> tuple[Architecture, str]:
    """The config's family (through the architecture registry) and head (a suffix of SUPPORTED_HEADS)."""
    where = str(folder / "config.json")
    family = architecture_for(config.get("model_type"), where=where)
    architectures = config.get("architectures") or [family.class_prefix + "Model"]
    supported = [family.class_prefix + head for head in SUPPORTED_HEADS]
    if architectures[0] not in supported:
        raise UserError(
            f"unsupported head {architectures[0]!r} for {family.describe()}",
            where=where,
            expected=f"one of {', '.join(supported)}",
        )
    for key in (family.hidden_key, family.heads_key, family.layers_key, "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise UserError(f"field '{key}' must be a positive integer, got {config.get(key)!r}", where=where)
    if config[family.hidden_key] % config[family.heads_key]:
        raise UserError(
            f"{family.hidden_key} {config[family.hidden_key]} is not a multiple of {family.heads_key} "
            f"{config[family.heads_key]}",
            where=where,
            hint="is config.json from the same checkpoint as the weights?",
        )
    return family, architectures[0][len(family.class_prefix) :]


def build_module(folder: Path, config: dict[str, Any], family: Architecture, task):
    """Build the torch model of the family and the task's head with eager attention; load the weights strictly."""
    import torch
    import transformers

    # Eager attention exports the MatMul/Softmax pattern ONNX Runtime fuses into `Attention`; SDPA
    # exports a NaN-guarded softmax that no fuser recognises (measured on BERT: 0 fused attention ops).
    hf_config = getattr(transformers, family.config_class).from_dict({**config, "attn_implementation": "eager"})
    hf_config._attn_implementation = "eager"
    with torch.device("meta"):
        shell = getattr(transformers, family.class_prefix + (task.head or "Model"))(hf_config)
    state = _as_float32(read_weights(folder))
    state = _align_prefix(state, shell, family.base)
    _check_weights(state, shell, folder)
    _check_finite(state, folder)
    model = shell.to_empty(device="cpu")
    model.load_state_dict(state, strict=False, assign=True)
    # non-persistent buffers are never loaded, even when the checkpoint carries them
    _reinit_buffers(model, hf_config, loaded=set(state) & set(model.state_dict()))
    model.eval()
    from edgecompress.intake.reference import ReferenceModule

    return ReferenceModule(model, task=task, input_names=family.input_names, zero_inputs=family.zero_inputs)


def read_weights(folder: Path) -> dict[str, Any]:
    safetensors_path, bin_path = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_path.is_file():
        return _read_safetensors(safetensors_path)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        return _read_shards(index_path)
    if bin_path.is_file():
        import torch

        try:
            state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(
                f"cannot read weights safely ({_brief(exc)})",
                where=str(bin_path),
                hint="re-save the checkpoint with safetensors",
            ) from None
        found = (
            f"a {type(state).__name__}"
            if not isinstance(state, dict)
            else next(
                (
                    f"entry {k!r} is a {type(v).__name__}"
                    for k, v in state.items()
                    if not isinstance(k, str) or not isinstance(v, torch.Tensor)
                ),
                None,
            )
        )
        if found:
            raise UserError(
                f"not a state dict of named tensors ({found})",
                where=str(bin_path),
                expected="a file written by torch.save(model.state_dict()) or save_pretrained()",
            )
        return state
    raise UserError(
        "no weights found",
        where=str(folder),
        expected="model.safetensors, model.safetensors.index.json with its shards, or pytorch_model.bin",
    )


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"cannot read weights ({_brief(exc)})", where=str(path)) from None


def _read_shards(index_path: Path) -> dict[str, Any]:
    """A sharded checkpoint (save_pretrained with max_shard_size): every shard the index names."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"not a readable shard index ({type(exc).__name__}: {exc})",
            where=str(index_path),
            expected='a JSON object with a "weight_map" of tensor name -> shard file',
        ) from None
    state: dict[str, Any] = {}
    for shard in shards:
        path = index_path.parent / str(shard)
        if path.parent != index_path.parent or not path.is_file():
            raise UserError(
                f"shard '{shard}' named in the index is missing",
                where=str(index_path.parent),
                expected="every file of the weight_map beside the index",
            )
        state.update(_read_safetensors(path))
    return state


def _as_float32(state: dict[str, Any]) -> dict[str, Any]:
    """Half-precision checkpoints (float16, bfloat16) compute in float32: no device profile asks for fp16
    compute, and every runtime here takes float32 weights."""
    import torch

    return {
        name: tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
        for name, tensor in state.items()
    }


def _check_finite(state: dict[str, Any], folder: Path) -> None:
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(
                f"tensor '{name}' has {bad} NaN or infinite value(s)",
                where=str(folder),
                expected="finite weights",
                hint="the checkpoint is damaged or training diverged",
            )


def _brief(exc: Exception) -> str:
    """One line from a library's exception: torch's weights_only refusal spans paragraphs, keep its cause."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if match:
        cause = " ".join(match.group(1).split()).split(". Please")[0]
        text = f"torch.load(weights_only=True) refused it: {cause}"
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."


def _align_prefix(state: dict[str, Any], shell, base: str) -> dict[str, Any]:
    """Sentence-transformers save `embeddings.*`, classifiers save `bert.embeddings.*`: match the model."""
    prefix = base + "."
    wanted_prefix = any(k.startswith(prefix) for k in shell.state_dict())
    has_prefix = any(k.startswith(prefix) for k in state)
    if wanted_prefix and not has_prefix:
        head = {k.split(".")[0] for k in shell.state_dict() if not k.startswith(prefix)}
        return {(k if k.split(".")[0] in head else prefix + k): v for k, v in state.items()}
    if not wanted_prefix and has_prefix:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


# Buffers that transformers recomputes from the config; checkpoints may or may not carry them.
_DERIVED_BUFFERS = ("position_ids", "token_type_ids")


def _check_weights(state: dict[str, Any], shell, folder: Path) -> None:
    expected = shell.state_dict()
    where = str(folder)
    extra = sorted(name for name in state if name not in expected and not name.endswith(_DERIVED_BUFFERS))
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise UserError(
            f"weights do not match the config: {len(extra)} tensor(s) the config has no place for "
            f"({', '.join(repr(n) for n in extra[:3])}{more})",
            where=where,
            hint="is config.json from the same checkpoint as the weights?",
        )
    for name, tensor in expected.items():
        if name.endswith(_DERIVED_BUFFERS):
            continue
        if name not in state:
            raise UserError(
                f"weights do not match the config: tensor '{name}' is missing",
                where=where,
                hint="is config.json from the same checkpoint as the weights?",
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"weights do not match the config: '{name}' has shape {tuple(state[name].shape)}",
                where=where,
                expected=f"{tuple(tensor.shape)} from config.json",
            )


def _reinit_buffers(model, hf_config, *, loaded: set[str]) -> None:
    """Buffers the checkpoint did not carry (`to_empty` left them uninitialised) are rebuilt as transformers
    would: position ids count up, token type ids are zero (every family registers them under these names)."""
    import torch

    length = hf_config.max_position_embeddings
    for name, module in list(model.named_modules()):
        for buffer_name, _ in list(module.named_buffers(recurse=False)):
            if f"{name}.{buffer_name}".lstrip(".") in loaded:
                continue
            if buffer_name not in _DERIVED_BUFFERS:
                raise InternalError(f"buffer '{name}.{buffer_name}' was not in the checkpoint and has no rule")
            value = torch.arange(length) if buffer_name == "position_ids" else torch.zeros(length, dtype=torch.long)
            module.register_buffer(buffer_name, value.expand((1, -1)), persistent=False)


def load_tokenizer(folder: Path, config: dict[str, Any], where: Path):
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise UserError(
            "tokenizer is missing",
            where=str(where),
            expected=f"one of {', '.join(TOKENIZER_FILES)} in {folder}",
            hint="save the tokenizer with tokenizer.save_pretrained() next to the model",
        )
    # transformers 5 exports BertTokenizerFast as an alias its type stubs do not declare
    from transformers import AutoTokenizer, BertTokenizerFast  # type: ignore[attr-defined]

    try:
        tokenizer = (
            AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            if (folder / "tokenizer_config.json").is_file()
            else BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        )
    except Exception as exc:
        raise UserError(f"cannot load the tokenizer ({_brief(exc)})", where=str(folder)) from None
    family = architecture_for(config.get("model_type")) if config.get("model_type") in architectures() else None
    max_positions = family.max_length(config) if family else int(config.get("max_position_embeddings", 512))
    max_length = min(int(getattr(tokenizer, "model_max_length", max_positions) or max_positions), max_positions)
    shipped = tuple(
        name
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
        if (folder / name).is_file()
    )
    settings = TokenizerSettings(
        lowercase=_lowercase(tokenizer),
        max_length=max_length,
        pad_token_id=int(tokenizer.pad_token_id or 0),
        files=shipped,
    )
    return tokenizer, settings


def check_vocabulary(tokenizer, rows: int, where: Path, table: str) -> None:
    """Every id the tokenizer can emit must index a row of the embedding table (else: IndexError at run time).

    The highest id counts, not the number of tokens: a vocab.txt that lists a token twice numbers the rest
    with a gap, so 110 distinct tokens can reach id 110 in a table of 110 rows.
    """
    size = len(tokenizer)
    ids = max(tokenizer.get_vocab().values(), default=-1) + 1
    if max(size, ids) <= rows:
        return
    if ids > size:
        what = f"the tokenizer emits ids up to {ids - 1} ({size} distinct tokens: one listed twice in vocab.txt?)"
    else:
        what = f"the tokenizer has {size} tokens"
    raise UserError(
        f"{what} but the model's embedding table has {rows} rows ({table})",
        where=str(where),
        expected=f"token ids below {rows}",
        hint="is the tokenizer from the same checkpoint as the model? (see --tokenizer)",
    )


def check_pad_id(tokenizer, config: dict[str, Any], family: Architecture, where: Path) -> None:
    """The tokenizer must pad with the id the model was trained to treat as padding. A tokenizer of another
    family usually does not (BERT's WordPiece pads with 0, RoBERTa's BPE and XLM-R's Unigram with 1), and
    RoBERTa-family models number positions past the pad id, so a wrong one shifts every position."""
    expected, found = config.get("pad_token_id"), tokenizer.pad_token_id
    if isinstance(expected, int) and found is not None and found != expected:
        raise UserError(
            f"the tokenizer pads with id {found} ({tokenizer.pad_token!r}) but config.json says pad_token_id "
            f"{expected}",
            where=str(where),
            expected=f"a {family.family} tokenizer whose padding token has id {expected}",
            hint="is the tokenizer from the same checkpoint as the model? (a tokenizer of another family?)",
        )


def _lowercase(tokenizer) -> bool:
    if hasattr(tokenizer, "do_lower_case"):
        return bool(tokenizer.do_lower_case)
    probe = tokenizer.tokenize("HELLO")
    return probe == tokenizer.tokenize("hello")


def label_names(config: dict[str, Any]) -> list[str]:
    from edgecompress.tasks.sequence_classification import label_names as names

    return names(config)
