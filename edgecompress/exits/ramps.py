"""Ramps: one small classifier per encoder layer but the last, trained by distillation with the backbone frozen.

A ramp has the shape of the model's own head (dense -> the head's activation -> output) and starts as a copy of
it, but reads the mean of the layer's token rows (padding excluded) rather than the first token's row: an early
layer's [CLS] row has gathered little of the text yet. Measured on the MiniLM Rotten Tomatoes teacher (ramps
trained on 3,000 texts of the train split, scored on the validation split, teacher 82.67%): layer 1's ramp reached
75.7% on the mean against 70.0% on [CLS]; at entropy threshold 0.3 the pooled ramps lost 0.3 points at a mean
exit layer of 3.8 of 6, the [CLS] ramps 0.7 points at 4.1.

Because the backbone does not change, each layer's pooled rows are computed once and cached; training then
touches only the ramps (seconds on two cores, not an epoch of the encoder). The loss is KL divergence to the
final head's logits at temperature T (scaled by T^2), plus, with weight `label_weight`, cross-entropy on the
labels when --train-data has them. The default is plain distillation (T = 1, no labels); in the same
measurement labels at weight 0.5 with T = 2 did about as well (at a mean exit layer of ~3.4: -0.9 points
against -0.8).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from edgecompress.compress._taskdata import TaskData


class Ramp(torch.nn.Module):
    """dense -> activation -> output on one layer's pooled row: the model's head, trained for that layer."""

    def __init__(self, dense: torch.nn.Linear, output: torch.nn.Linear, activation: str):
        super().__init__()
        self.dense = copy.deepcopy(dense)
        self.output = copy.deepcopy(output)
        self.activation = activation

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = self.dense(pooled)
        hidden = torch.tanh(hidden) if self.activation == "tanh" else torch.nn.functional.gelu(hidden)
        return self.output(hidden)


@dataclass
class ExitRamps:
    """What the early_exit pass adds to a bundle: ramps[k] reads layer k's output (0-based) through `mean_pool`,
    the last layer keeps the model's head; the policy and threshold the app will ship with; how they trained."""

    ramps: torch.nn.ModuleList
    policy: str
    threshold: float
    sweep: tuple[float, ...]
    training: dict = field(default_factory=dict)

    @property
    def exits(self) -> int:
        return len(self.ramps) + 1


def additive_mask(attention_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[batch, seq] 0/1 -> [batch, 1, seq, seq] with 0 where the key is attended and the float minimum where it is
    padding, the values transformers gives eager attention (so segment k reproduces layer k in torch).

    Written as transformers 4 wrote its SDPA mask (Unsqueeze, Unsqueeze, Expand, Cast, Sub, then Where on the
    inverted mask), the form ONNX Runtime's attention fuser matches (as compress/eliminate_tokens.py found):
    written as (1 - mask) * min, no segment's attention fused."""
    batch, tokens = attention_mask.shape
    inverted = 1.0 - attention_mask.unsqueeze(1).unsqueeze(2).expand(batch, 1, tokens, tokens).to(dtype)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq, width] -> [batch, width]: the mean over the text's own tokens (attention_mask 1)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def layer_rows(module, architecture, data: TaskData, batch_size: int = 64):
    """Each layer's pooled rows [layers][texts, hidden], the final logits [texts, classes] and the labels, with the
    layers run one by one through the architecture seam (the same calls the segments make)."""
    hf_model = module.hf_model
    layers = architecture.layers(hf_model)
    rows: list[list[torch.Tensor]] = [[] for _ in layers]
    logits, labels = [], []
    hf_model.eval()
    with torch.no_grad():
        for batch in data.batches(batch_size):
            input_ids, mask, token_types = batch.inputs
            hidden = architecture.embed(hf_model, input_ids, token_types)
            extended = additive_mask(mask)
            for k, layer in enumerate(layers):
                hidden = architecture.run_layer(layer, hidden, extended)
                rows[k].append(mean_pool(hidden, mask))
            logits.append(architecture.classify(hf_model, hidden))
            if batch.labels is not None:
                labels.append(batch.labels)
    return (
        [torch.cat(r) for r in rows],
        torch.cat(logits),
        torch.cat(labels) if labels else None,
    )


@dataclass(frozen=True)
class RampTraining:
    epochs: int
    learning_rate: float
    temperature: float
    label_weight: float
    batch_size: int = 128
    seed: int = 0


def train_ramps(module, architecture, data: TaskData, settings: RampTraining) -> tuple[torch.nn.ModuleList, dict]:
    """Ramps for every layer but the last, distilled from the final head on cached rows; returns the ramps and
    what the report says about their training (texts, epochs, loss, each ramp's agreement on the training rows)."""
    start = time.perf_counter()
    rows, teacher, labels = layer_rows(module, architecture, data)
    dense, output = architecture.head(module.hf_model)
    torch.manual_seed(settings.seed)
    ramps = torch.nn.ModuleList(Ramp(dense, output, architecture.head_activation) for _ in rows[:-1])
    # Train on standardized rows (each feature to mean 0, std 1 over the training texts): an early layer's rows
    # differ little from text to text around a large common part, and on raw rows the early ramps stayed at the
    # majority class (measured: layers 1-3 at 57.8% on the validation split, the share of its larger class).
    # Standardizing is affine, so it is folded into each ramp's dense layer before and after (the ramp starts as
    # the head exactly and ships with the shape of the head).
    stats = [(r.mean(0), r.std(0).clamp(min=1e-6)) for r in rows[:-1]]
    rows = [(r - mean) / std for r, (mean, std) in zip(rows, stats)] + rows[len(stats) :]
    for ramp, (mean, std) in zip(ramps, stats):
        _fold(ramp.dense, mean, std, into_standardized=True)
    optimizer = torch.optim.Adam(ramps.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    ramps.train()
    loss = torch.tensor(0.0)
    for _ in range(settings.epochs):
        order = torch.randperm(len(teacher), generator=generator)
        for start_row in range(0, len(order), settings.batch_size):
            pick = order[start_row : start_row + settings.batch_size]
            optimizer.zero_grad()
            losses = [_loss(ramp(rows[k][pick]), teacher[pick], labels, pick, settings) for k, ramp in enumerate(ramps)]
            loss = torch.stack(losses).sum()
            loss.backward()
            optimizer.step()
    ramps.eval()
    with torch.no_grad():
        agreement = [
            float((ramp(rows[k]).argmax(-1) == teacher.argmax(-1)).float().mean()) for k, ramp in enumerate(ramps)
        ]
    for ramp, (mean, std) in zip(ramps, stats):
        _fold(ramp.dense, mean, std, into_standardized=False)
    return ramps, {
        "texts": len(teacher),
        "labelled": labels is not None,
        "epochs": settings.epochs,
        "final_loss": float(loss.detach()) / max(len(ramps), 1),
        "train_agreement_per_ramp": [round(a, 4) for a in agreement],
        "seconds": round(time.perf_counter() - start, 2),
    }


def _fold(dense, mean: torch.Tensor, std: torch.Tensor, *, into_standardized: bool) -> None:
    """Rewrite the Linear `dense` so that it computes the same function of standardized inputs
    z = (x - mean) / std (`into_standardized`), or back: of raw inputs x. W x + b = (W std) z + (b + W mean)."""
    weight, bias = dense.weight, dense.bias
    with torch.no_grad():
        if into_standardized:
            bias.add_(weight @ mean)
            weight.mul_(std)
        else:
            weight.div_(std)
            bias.sub_(weight @ mean)


def _loss(student: torch.Tensor, teacher: torch.Tensor, labels, pick, settings: RampTraining) -> torch.Tensor:
    t = settings.temperature
    soft = torch.nn.functional.kl_div(
        torch.log_softmax(student / t, -1), torch.softmax(teacher / t, -1), reduction="batchmean"
    ) * (t * t)
    if labels is None or settings.label_weight == 0:
        return soft
    hard = torch.nn.functional.cross_entropy(student, labels[pick])
    return (1 - settings.label_weight) * soft + settings.label_weight * hard


def ramp_logits(ramps, rows: list[torch.Tensor]) -> np.ndarray:
    """[exits - 1, texts, classes] of the ramps on cached rows (tests and the benchmark)."""
    with torch.no_grad():
        return np.stack([ramp(rows[k]).numpy() for k, ramp in enumerate(ramps)])
