"""The Weight Squeezing student (Chumachenko et al., 2020): a narrow BERT whose weights are learned linear maps
of the fine-tuned teacher's weights.

Every student matrix is `W_s = L W_t R^T`, where `W_t` is the teacher's matrix (frozen) and `L`, `R` map the
teacher's widths to the student's. The maps belong to a layer and to the kind of width they map: per student
layer one map for the residual stream (`hidden`), one for the attention heads' width (`inner`: Q, K, V out,
the attention output in) and one for the FFN neurons (`ffn`); one more (`embedding`) maps the embedding tables
and their LayerNorm. A vector (bias, LayerNorm scale and shift) is `L v_t`. Only the maps train, with the
distillation losses the transformer student uses (logits, hidden states through a learned projection,
attention maps); after training the student's weights are computed once and the maps are dropped, so what
ships is a plain BertForSequenceClassification that intake takes like any other.

The maps start where a narrow student would sensibly start: the residual-stream maps on the top principal
directions of the teacher's word embeddings (one basis for every layer, so the layers agree at step 0), the
attention maps keep the teacher's first heads, the FFN maps its neurons of largest weight norm.

A student tensor without a teacher counterpart (token types for a family without them, the BERT head of a
DistilBERT/ELECTRA/RoBERTa teacher, whose heads are not BERT's pooler + classifier) is a plain trainable
tensor that starts as a fresh BERT's. Teachers whose layers are not BERT-shaped (MobileBERT's bottlenecks,
ALBERT's narrow factorised embeddings) are refused before any work: there is no `W_t` of the right kind.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from edgecompress.errors import UserError

# Student layer parts (Architecture attributes) with the kinds of their output and input widths.
_LAYER_PARTS = {
    "query_path": ("inner", "hidden"),
    "key_path": ("inner", "hidden"),
    "value_path": ("inner", "hidden"),
    "attention_output_path": ("hidden", "inner"),
    "attention_norm_path": ("hidden", None),
    "ffn_in_path": ("ffn", "hidden"),
    "ffn_out_path": ("hidden", "ffn"),
    "ffn_norm_path": ("hidden", None),
}


WORD_TABLE = "bert.embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class Rule:
    """How one student tensor is computed: `L @ teacher @ R.T` (either map may be absent)."""

    student: str  # the student's state_dict name
    teacher: Any  # the teacher's tensor (frozen)
    out_map: str | None  # the map of its rows (`L`)
    in_map: str | None  # the map of its columns (`R`); only for matrices


def squeezed_config(teacher_config: dict[str, Any], overrides: dict[str, Any], *, tokenizer, where: str):
    """The student's BERT config: the transformer student's, at half the teacher's widths unless the user says
    otherwise (keeping the teacher's head width, so the attention maps can keep whole heads)."""
    from edgecompress.architectures import architecture_for
    from edgecompress.distill.small_bert import transformer_config

    if "init" in overrides:
        raise UserError(
            "a squeezed student has no 'init' setting: its weights always come from the teacher's",
            where=where,
            hint='for a student trained from scratch use --student transformer with "init": "random"',
        )
    teacher = architecture_for(teacher_config.get("model_type")).bert_config(teacher_config)
    head_width = teacher["hidden_size"] // teacher["num_attention_heads"]
    heads = max(1, teacher["num_attention_heads"] // 2)
    narrow = {
        "hidden_size": heads * head_width,
        "num_attention_heads": heads,
        "intermediate_size": max(1, teacher["intermediate_size"] // 2),
    }
    return transformer_config(teacher_config, {**narrow, **overrides}, tokenizer=tokenizer, where=where)


def check_squeezable(teacher_hf, where: str) -> None:
    """Refuse a teacher whose layers or embeddings are not BERT's shapes: no `W_t` to map."""
    from edgecompress.architectures import architecture_of

    family = architecture_of(teacher_hf)
    config = family.bert_config(teacher_hf.config.to_dict())
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    widths = {"hidden": hidden, "inner": hidden, "ffn": ffn}
    table = family.word_embeddings(teacher_hf).embedding_dim
    if table != hidden:
        raise UserError(
            f"Weight Squeezing needs embeddings as wide as the layers; this {family.describe()} teacher's are "
            f"{table} wide for {hidden}-wide layers",
            where=where,
            hint="use --student transformer",
        )
    layer = family.layers(teacher_hf)[0]
    for part, (out_kind, in_kind) in _LAYER_PARTS.items():
        path = getattr(family, part)
        try:
            shape = tuple(layer.get_submodule(path).weight.shape)
        except AttributeError:
            shape = None
        expected = (widths[out_kind],) + ((widths[in_kind],) if in_kind else ())
        if shape != expected:
            found = f"has shape {shape}" if shape else "is missing"
            raise UserError(
                f"Weight Squeezing needs BERT-shaped layers, and this {family.describe()} teacher's '{path}' {found}",
                where=where,
                expected=f"{expected} (hidden {hidden}, FFN {ffn})",
                hint="use --student transformer, whose narrow form starts from random layers",
            )


def squeezed_student(config: dict[str, Any], teacher_hf):
    """The trainable module: maps (and the few free tensors) in, a BERT's outputs out. Its state_dict holds
    only what trains; `shipped_state()` gives the plain BERT's weights."""
    return _squeezed_class()(config, teacher_hf)


def squeeze_rules(student, config: dict[str, Any], teacher_hf) -> list[Rule]:
    """Every student tensor that has a teacher counterpart, with the maps that compute it."""
    from edgecompress.architectures import architecture_for, architecture_of

    family, bert = architecture_of(teacher_hf), architecture_for("bert")
    names = {id(module): name for name, module in student.named_modules()}
    teacher_layers, last = family.layers(teacher_hf), config["num_hidden_layers"] - 1
    rules: list[Rule] = []
    for index, (layer, source) in enumerate(zip(bert.layers(student), config["teacher_layers"])):
        for part, (out_kind, in_kind) in _LAYER_PARTS.items():
            target = names[id(layer.get_submodule(getattr(bert, part)))]
            teacher = teacher_layers[source - 1].get_submodule(getattr(family, part))
            rules.append(
                Rule(f"{target}.weight", teacher.weight, f"{out_kind}.{index}", in_kind and f"{in_kind}.{index}")
            )
            rules.append(Rule(f"{target}.bias", teacher.bias, f"{out_kind}.{index}", None))
    rules += _embedding_rules(teacher_hf, family, student)
    if family is bert:  # the pooler and classifier read the last layer's residual stream
        for part, out_map in (("bert.pooler.dense", f"hidden.{last}"), ("classifier", None)):
            module = teacher_hf.get_submodule(part)
            rules.append(Rule(f"{part}.weight", module.weight, out_map, f"hidden.{last}"))
            rules.append(Rule(f"{part}.bias", module.bias, out_map, None))
    return [replace(rule, teacher=rule.teacher.detach()) for rule in rules]  # the teacher never trains


def _embedding_rules(teacher_hf, family, student) -> list[Rule]:
    """Word, position (from the family's offset, as many rows as the student has) and token-type tables, and
    the embedding LayerNorm: tables map their columns, the LayerNorm its vector."""
    teacher = family.encoder_model(teacher_hf)
    rows = student.bert.embeddings.position_embeddings.weight.shape[0]
    offset = family.position_offset(teacher_hf.config.to_dict())
    positions = teacher.get_submodule(family.position_embeddings_path).weight[offset : offset + rows]
    norm = teacher.get_submodule(family.embeddings_norm_path)
    rules = [
        Rule(WORD_TABLE, family.word_embeddings(teacher_hf).weight, None, "embedding"),
        Rule("bert.embeddings.position_embeddings.weight", positions, None, "embedding"),
        Rule("bert.embeddings.LayerNorm.weight", norm.weight, "embedding", None),
        Rule("bert.embeddings.LayerNorm.bias", norm.bias, "embedding", None),
    ]
    if family.token_type_embeddings_path:
        types = teacher.get_submodule(family.token_type_embeddings_path).weight
        rules.append(Rule("bert.embeddings.token_type_embeddings.weight", types, None, "embedding"))
    return rules


def initial_maps(config: dict[str, Any], teacher_hf) -> dict[str, Any]:
    """Each map's starting value (see the module docstring), [student width, teacher width]."""
    import torch

    from edgecompress.architectures import architecture_of

    family = architecture_of(teacher_hf)
    teacher_config = family.bert_config(teacher_hf.config.to_dict())
    hidden = _principal_directions(family.word_embeddings(teacher_hf).weight.detach(), config["hidden_size"])
    inner = torch.eye(teacher_config["hidden_size"])[: config["hidden_size"]]
    maps = {"embedding": hidden.clone()}
    for index, source in enumerate(config["teacher_layers"]):
        ffn_in, ffn_out = family.ffn(family.layers(teacher_hf)[source - 1])
        maps[f"hidden.{index}"] = hidden.clone()
        maps[f"inner.{index}"] = inner.clone()
        maps[f"ffn.{index}"] = _strongest_neurons(ffn_in.weight, ffn_out.weight, config["intermediate_size"])
    return maps


def _principal_directions(table, count: int):
    """[count, width]: the top principal directions of the rows of `table` (zero rows past its rank)."""
    import torch

    centered = table.double() - table.double().mean(dim=0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    kept = vh[: min(count, vh.shape[0])].float()
    return torch.cat([kept, torch.zeros(count - kept.shape[0], table.shape[1])])


def _strongest_neurons(ffn_in, ffn_out, count: int):
    """[count, neurons]: rows of the identity selecting the FFN neurons with the largest in x out weight norms."""
    import torch

    strength = ffn_in.detach().norm(dim=1) * ffn_out.detach().norm(dim=0)
    chosen = strength.argsort(descending=True)[:count].sort().values
    return torch.eye(ffn_in.shape[0])[chosen]


@functools.cache
def _squeezed_class() -> type:
    """Defined on first use so that importing this file does not import torch."""
    import torch
    from torch import nn

    from edgecompress.distill.small_bert import new_transformer_student

    class SqueezedBert(nn.Module):
        def __init__(self, config: dict[str, Any], teacher_hf):
            super().__init__()
            skeleton = new_transformer_student(config)
            skeleton.requires_grad_(False)
            # Kept out of the module tree: its own weights are never used (functional_call replaces them), and
            # registered they would fill every checkpoint and make DDP look for their gradients.
            self._skeleton = [skeleton]
            self.rules = squeeze_rules(skeleton, config, teacher_hf)
            self.maps = nn.ParameterDict(
                {_key(name): nn.Parameter(value) for name, value in initial_maps(config, teacher_hf).items()}
            )
            self._words = next(rule for rule in self.rules if rule.student == WORD_TABLE)
            computed = {rule.student for rule in self.rules}
            free = {name: value for name, value in skeleton.named_parameters() if name not in computed}
            self.free = nn.ParameterDict({_key(name): nn.Parameter(value.clone()) for name, value in free.items()})
            self.config = skeleton.config

        def train(self, mode: bool = True):
            self._skeleton[0].train(mode)  # outside the module tree: dropout follows by hand
            return super().train(mode)

        def shipped_state(self) -> dict[str, Any]:
            """The plain BERT's weights: every tensor of its state_dict, computed from the maps."""
            with torch.no_grad():
                weights = self.student_weights()
            state = self._skeleton[0].state_dict()
            return {name: weights.get(name, tensor).detach().clone() for name, tensor in state.items()}

        def student_weights(self, *, skip: str | None = None) -> dict[str, Any]:
            weights = {_name(key): value for key, value in self.free.items()}
            for rule in self.rules:
                if rule.student != skip:
                    weights[rule.student] = self._computed(rule, rule.teacher)
            return weights

        def _computed(self, rule: Rule, value):
            if rule.in_map is not None:
                value = value @ self.maps[_key(rule.in_map)].T
            if rule.out_map is not None:
                value = self.maps[_key(rule.out_map)] @ value
            return value

        def forward(self, input_ids, **inputs):
            # Only the batch's rows of the word table are mapped: the whole table (vocabulary x width) would
            # cost more per step than the student's layers do.
            words = torch.nn.functional.embedding(input_ids, self._words.teacher)
            inputs["inputs_embeds"] = self._computed(self._words, words)
            weights = self.student_weights(skip=WORD_TABLE)
            return torch.func.functional_call(self._skeleton[0], weights, (), inputs)

    return SqueezedBert


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold dots


def _name(key: str) -> str:
    return key.replace("__", ".")
