"""The small-transformer student: a shallower (optionally narrower) BertForSequenceClassification.

Same width as the teacher (the default): embeddings, pooler and classifier are copied, and student layer
i starts as teacher layer `teacher_layers[i]`, evenly spaced by default (layers 2, 4, 6 of a 6-layer
teacher), DistilBERT's every-other-layer initialisation. A narrower student cannot take the teacher's
matrices: it starts from random layers and the teacher's word embeddings projected by PCA, and its
hidden-state loss goes through a learned projection. Either way the result is a plain BERT checkpoint
that intake already takes, with the teacher's tokenizer.

A teacher of another family (DistilBERT, RoBERTa, XLM-R, ELECTRA) gets a BERT student too: its config is
the teacher's in BERT's terms (`Architecture.bert_config`: key names, positions from row 0, the teacher's
pad id and vocabulary), its layers are copied part by part through the seam (Q/K/V, attention output,
FFN, both LayerNorms: the same functions under other names), its embeddings likewise (RoBERTa's position
rows shifted by the pad offset). The head starts fresh unless the teacher is a BERT: DistilBERT's
(ReLU) and ELECTRA's (GELU) heads are not BERT's pooler + classifier. An ELECTRA whose embeddings are
narrower than its layers gives only its layers: its projected embeddings are no BERT embedding.

With `"init": "random"` nothing is copied: the student starts as a fresh BERT (trained from scratch, the
baseline that shows what starting from the teacher is worth).
"""

from __future__ import annotations

from typing import Any

from edgecompress.distill.losses import even_layer_map
from edgecompress.errors import UserError

SETTINGS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "teacher_layers",
    "init",
    "vocab_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
_WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads")
# "teacher": start from the teacher's parts (see the module docstring); "random": a fresh BERT's weights, for a
# student trained from scratch (the baseline that shows what the teacher's weights are worth).
INITS = ("teacher", "random")
# Our settings, not BertConfig's: kept out of the checkpoint's config.json.
_OWN_SETTINGS = ("teacher_layers", "init")


def transformer_config(
    teacher_config: dict[str, Any], overrides: dict[str, Any], *, tokenizer, where: str
) -> dict[str, Any]:
    """Teacher config with half its layers (or the user's settings), checked against tokenizer and teacher."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise UserError(
            f"unknown transformer student setting '{unknown[0]}'", where=where, hint=f"Known: {', '.join(SETTINGS)}"
        )
    from edgecompress.architectures import architecture_for

    teacher_config = architecture_for(teacher_config.get("model_type")).bert_config(teacher_config)
    teacher_layers = teacher_config["num_hidden_layers"]
    config = {
        **teacher_config,
        "num_hidden_layers": max(1, teacher_layers // 2),
        **overrides,
        "architectures": ["BertForSequenceClassification"],
    }
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"'{key}' must be a positive integer, got {value!r}", where=where)
    if config["hidden_size"] % config["num_attention_heads"]:
        raise UserError(
            f"hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
            f"{config['num_attention_heads']}",
            where=where,
        )
    if config["vocab_size"] != len(tokenizer):
        raise UserError(
            f"student vocab_size {config['vocab_size']} does not match the tokenizer's {len(tokenizer)} tokens",
            where=where,
            hint="the student reads the teacher tokenizer's ids; drop vocab_size from the config",
        )
    if config.setdefault("init", "teacher") not in INITS:
        raise UserError(f"unknown init {config['init']!r}", where=where, expected=f"one of {', '.join(INITS)}")
    layers = config.setdefault("teacher_layers", even_layer_map(config["num_hidden_layers"], teacher_layers))
    if len(layers) != config["num_hidden_layers"] or not all(
        isinstance(t, int) and 1 <= t <= teacher_layers for t in layers
    ):
        raise UserError(
            f"teacher_layers {layers!r} does not fit {config['num_hidden_layers']} student layers",
            where=where,
            expected=f"{config['num_hidden_layers']} layer numbers among 1..{teacher_layers}",
        )
    return config


def same_width(config: dict[str, Any], teacher_config: dict[str, Any]) -> bool:
    return all(config[key] == teacher_config[key] for key in _WIDTHS)


def new_transformer_student(config: dict[str, Any]):
    """The student's architecture with fresh weights (eager attention: the loss reads attention maps)."""
    from transformers import BertConfig, BertForSequenceClassification

    bert_config = BertConfig.from_dict({k: v for k, v in config.items() if k not in _OWN_SETTINGS})
    bert_config._attn_implementation = "eager"
    return BertForSequenceClassification(bert_config)


def init_from_teacher(student, config: dict[str, Any], teacher_hf) -> None:
    """Copy the teacher's parts into a new student (see the module docstring)."""
    import torch

    from edgecompress.architectures import architecture_for, architecture_of
    from edgecompress.distill.embeddings import pca_projection, teacher_word_embeddings

    if config.get("init") == "random":
        return
    family, bert = architecture_of(teacher_hf), architecture_for("bert")
    teacher_config = family.bert_config(teacher_hf.config.to_dict())
    with torch.no_grad():
        if not same_width(config, teacher_config):
            table = pca_projection(teacher_word_embeddings(teacher_hf), config["hidden_size"])
            student.bert.embeddings.word_embeddings.weight.copy_(table * student.config.initializer_range)
            return
        teacher_layers = family.layers(teacher_hf)
        for layer, source in zip(bert.layers(student), config["teacher_layers"]):
            for part in _LAYER_PARTS:
                copied = _get(teacher_layers[source - 1], getattr(family, part)).state_dict()
                _get(layer, getattr(bert, part)).load_state_dict(copied)
        if family.word_embeddings(teacher_hf).embedding_dim == config["hidden_size"]:
            _copy_embeddings(student, teacher_hf, family)
        if family is bert:
            student.bert.pooler.load_state_dict(teacher_hf.bert.pooler.state_dict())
            student.classifier.load_state_dict(teacher_hf.classifier.state_dict())


# The parts of an encoder layer, as Architecture attributes: copied one by one between families.
_LAYER_PARTS = (
    "query_path",
    "key_path",
    "value_path",
    "attention_output_path",
    "attention_norm_path",
    "ffn_in_path",
    "ffn_out_path",
    "ffn_norm_path",
)


def _copy_embeddings(student, teacher_hf, family) -> None:
    """Word, position and token-type tables and the LayerNorm; position rows from the family's offset on,
    zero token types for a family without them (a BERT student always adds a token-type row)."""
    teacher = family.encoder_model(teacher_hf)
    embeddings = student.bert.embeddings
    embeddings.word_embeddings.weight.copy_(family.word_embeddings(teacher_hf).weight)
    offset = family.position_offset(teacher_hf.config.to_dict())
    rows = embeddings.position_embeddings.weight.shape[0]
    positions = _get(teacher, family.position_embeddings_path).weight[offset : offset + rows]
    embeddings.position_embeddings.weight.copy_(positions)
    if family.token_type_embeddings_path:
        embeddings.token_type_embeddings.load_state_dict(_get(teacher, family.token_type_embeddings_path).state_dict())
    else:
        embeddings.token_type_embeddings.weight.zero_()
    embeddings.LayerNorm.load_state_dict(_get(teacher, family.embeddings_norm_path).state_dict())


def _get(root, path: str):
    return root.get_submodule(path)
