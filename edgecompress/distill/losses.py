"""Distillation losses, and the training objective that combines them for one student.

- logits: MSE between student and teacher logits (Tang et al. 2019: it works better than soft targets for
  small students), or KL(teacher || student) of the softened distributions at a temperature, times T^2
  so the gradient keeps its scale as T changes (Hinton et al. 2015);
- hard labels: cross-entropy on the rows that have one (augmented rows have none), mixed in by weight;
- transformer students only: MSE between hidden states of mapped layers (through a learned projection
  when the widths differ, TinyBERT), and KL between attention distributions of mapped layers
  (MiniLM-style; head-averaged when the head counts differ). Both count real tokens only.

The recovery fine-tuning of the compress passes (`compress/_recovery.py`) uses the same functions:
`logit_loss` (KL) plus `hard_loss` for classifiers, `logit_loss` (MSE) for sentence embeddings, and
`masked_mse` over same-numbered layers.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from edgecompress.errors import UserError

LOGIT_LOSSES = ("mse", "kl")


@dataclass(frozen=True)
class LossOptions:
    logit_loss: str = "mse"
    temperature: float = 1.0
    hard_weight: float = 0.0  # share of the hard-label loss; the logit loss gets the rest
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    layer_map: tuple[int, ...] | None = None  # teacher layer (1-based) per student layer; None: evenly spaced

    @property
    def uses_internals(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    def resolved(self, *, student_layers: int | None, teacher_layers: int, where: str) -> LossOptions:
        """Checked options with the layer map filled in; `student_layers` is None for non-transformers."""
        if self.logit_loss not in LOGIT_LOSSES:
            raise UserError(
                f"unknown logit loss {self.logit_loss!r}", where=where, expected=f"one of {', '.join(LOGIT_LOSSES)}"
            )
        if (
            self.temperature <= 0
            or not 0 <= self.hard_weight <= 1
            or min(self.hidden_weight, self.attention_weight) < 0
        ):
            raise UserError(
                "loss settings out of range",
                where=where,
                expected="temperature > 0, hard_weight in [0, 1], hidden and attention weights >= 0",
            )
        if student_layers is None:
            if self.uses_internals or self.layer_map:
                raise UserError(
                    "hidden-state and attention losses need a transformer student",
                    where=where,
                    hint="use --student transformer, or drop the hidden/attention weights",
                )
            return self
        layer_map = tuple(self.layer_map or even_layer_map(student_layers, teacher_layers))
        if len(layer_map) != student_layers or not all(1 <= t <= teacher_layers for t in layer_map):
            raise UserError(
                f"layer map {list(layer_map)} does not fit {student_layers} student layers",
                where=where,
                expected=f"{student_layers} teacher layers among 1..{teacher_layers}",
            )
        return dataclasses.replace(self, layer_map=layer_map)


def even_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for each student layer, evenly spaced with the last matched to the last."""
    return [(i + 1) * teacher_layers // student_layers for i in range(student_layers)]


def logit_loss(student, teacher, *, kind: str, temperature: float):
    if kind == "mse":
        return ((student - teacher) ** 2).mean()
    log_student = (student / temperature).log_softmax(dim=-1)
    log_teacher = (teacher / temperature).log_softmax(dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1).mean() * temperature**2


def hard_loss(student, labels):
    """Cross-entropy over rows with a label (label >= 0); zero when the batch has none."""
    import torch.nn.functional as F

    labelled = labels >= 0
    if not bool(labelled.any()):
        return student.sum() * 0.0  # keeps the graph connected, so every process reduces the same gradients
    return F.cross_entropy(student[labelled], labels[labelled])


def prediction_loss(student, teacher, labels, options: LossOptions):
    soft = logit_loss(student, teacher, kind=options.logit_loss, temperature=options.temperature)
    if options.hard_weight == 0:
        return soft
    return (1 - options.hard_weight) * soft + options.hard_weight * hard_loss(student, labels)


def hidden_loss(student_states, teacher_states, attention_mask, layer_map, projection=None):
    """Mean squared error over real tokens between student layer i and teacher layer layer_map[i-1].

    States are per layer, index 0 being the embedding output, which is always matched to the teacher's.
    """
    pairs = [(0, 0)] + [(i + 1, t) for i, t in enumerate(layer_map)]
    project = (lambda state: state) if projection is None else projection
    return masked_mse([(project(student_states[s]), teacher_states[t]) for s, t in pairs], attention_mask)


def masked_mse(pairs, attention_mask):
    """Mean over (student, teacher) state pairs of the squared error per real token and unit of width.

    Padding is left out: its states are noise the model never uses. States are [batch, tokens, width].
    """
    real = attention_mask[..., None].to(pairs[0][0].dtype)
    total = 0.0
    for student, teacher in pairs:
        total = total + ((student - teacher) ** 2 * real).sum() / (real.sum() * student.shape[-1])
    return total / len(pairs)


def attention_loss(student_maps, teacher_maps, attention_mask, layer_map):
    """KL(teacher || student) of each real query row's attention distribution, mean over heads and layers.

    Maps are per layer, [batch, heads, query, key]; with different head counts the head means are compared.
    """
    import torch

    real = attention_mask.to(student_maps[0].dtype)
    total = 0.0
    for i, t in enumerate(layer_map):
        student, teacher = student_maps[i], teacher_maps[t - 1]
        if student.shape[1] != teacher.shape[1]:
            student, teacher = student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
        kl = (torch.xlogy(teacher, teacher) - teacher * student.clamp(min=1e-12).log()).sum(dim=-1)
        total = total + (kl * real[:, None, :]).sum() / (real.sum() * kl.shape[1])
    return total / len(layer_map)


def objective(student, options: LossOptions, *, transformer: bool, projection=None):
    """The module a trainer optimises: student (+ projection) in, scalar loss out.

    One module, so DistributedDataParallel reduces the projection's gradients along with the student's.
    """
    return _objective_class()(student, options, transformer, projection)


@functools.cache
def _objective_class() -> type:
    """Defined on first use so that importing this file does not import torch."""
    import torch
    from torch import nn

    class DistillationObjective(nn.Module):
        def __init__(self, student, options: LossOptions, transformer: bool, projection):
            super().__init__()
            self.student, self.projection = student, projection
            self.options, self.transformer = options, transformer

        def forward(self, input_ids, attention_mask, teacher_logits, labels, teacher_internals=None):
            if not self.transformer:
                logits = self.student(input_ids, attention_mask)
                return prediction_loss(logits, teacher_logits, labels, self.options)
            out = self.student(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
                output_hidden_states=self.options.hidden_weight > 0,
                output_attentions=self.options.attention_weight > 0,
            )
            loss = prediction_loss(out.logits, teacher_logits, labels, self.options)
            if self.options.hidden_weight > 0:
                loss = loss + self.options.hidden_weight * hidden_loss(
                    out.hidden_states,
                    teacher_internals.hidden_states,
                    attention_mask,
                    self.options.layer_map,
                    self.projection,
                )
            if self.options.attention_weight > 0:
                loss = loss + self.options.attention_weight * attention_loss(
                    out.attentions, teacher_internals.attentions, attention_mask, self.options.layer_map
                )
            return loss

    return DistillationObjective
