"""The small-transformer student: a shallower (optionally narrower) BertForSequenceClassification.

Same width as the teacher (the default): embeddings, pooler and classifier are copied, and student layer
i starts as teacher layer `teacher_layers[i]`, evenly spaced by default (layers 2, 4, 6 of a 6-layer
teacher), DistilBERT's every-other-layer initialisation. A narrower student cannot take the teacher's
matrices: it starts from random layers and the teacher's word embeddings projected by PCA, and its
hidden-state loss goes through a learned projection. Either way the result is a plain BERT checkpoint
that intake already takes, with the teacher's tokenizer.
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
    "vocab_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
_WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads")


def transformer_config(
    teacher_config: dict[str, Any], overrides: dict[str, Any], *, tokenizer, where: str
) -> dict[str, Any]:
    """Teacher config with half its layers (or the user's settings), checked against tokenizer and teacher."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise UserError(
            f"unknown transformer student setting '{unknown[0]}'", where=where, hint=f"Known: {', '.join(SETTINGS)}"
        )
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

    bert_config = BertConfig.from_dict({k: v for k, v in config.items() if k != "teacher_layers"})
    bert_config._attn_implementation = "eager"
    return BertForSequenceClassification(bert_config)


def init_from_teacher(student, config: dict[str, Any], teacher_hf) -> None:
    """Copy the teacher's parts into a new student (see the module docstring)."""
    import torch

    from edgecompress.distill.embeddings import pca_projection, teacher_word_embeddings

    with torch.no_grad():
        if not same_width(config, teacher_hf.config.to_dict()):
            table = pca_projection(teacher_word_embeddings(teacher_hf), config["hidden_size"])
            student.bert.embeddings.word_embeddings.weight.copy_(table * student.config.initializer_range)
            return
        student.bert.embeddings.load_state_dict(teacher_hf.bert.embeddings.state_dict())
        student.bert.pooler.load_state_dict(teacher_hf.bert.pooler.state_dict())
        student.classifier.load_state_dict(teacher_hf.classifier.state_dict())
        for layer, source in zip(student.bert.encoder.layer, config["teacher_layers"]):
            layer.load_state_dict(teacher_hf.bert.encoder.layer[source - 1].state_dict())
