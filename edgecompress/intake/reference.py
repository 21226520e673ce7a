"""The torch reference: the exact function every artifact is lowered from and checked against."""

from __future__ import annotations

import torch


class ReferenceModule(torch.nn.Module):
    """The family's inputs (input_ids, attention_mask[, token_type_ids]) -> the task's one output (tasks/:
    logits, span_logits, a pooled sentence embedding). The task's post-processing (pooling, start/end stacking)
    is part of the model, so the app receives what the manifest describes.

    Without a task: logits, or (`pooled`) mean-pooled embeddings, for callers that wrap a bare classifier.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pooled: bool = False,
        task=None,
        input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids"),
        zero_inputs: tuple[str, ...] = (),
    ):
        super().__init__()
        self.model = model
        self.task = task
        # Passes that only handle a classifier's logits ask this (integer_only refuses a pooled encoder).
        self.pooled = pooled or (task is not None and task.head is None)
        self.input_names = tuple(input_names)
        self.zero_inputs = tuple(zero_inputs)  # the family's Architecture.zero_inputs

    def forward(self, input_ids, attention_mask, *rest):
        extra = dict(zip(self.input_names[2:], rest))  # token_type_ids, for the families that take them
        extra |= {name: torch.zeros_like(input_ids) for name in self.zero_inputs}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.task is not None:
            return self.task.reference_output(out, attention_mask)
        if not self.pooled:
            return out.logits
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        summed = (out.last_hidden_state * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.model
