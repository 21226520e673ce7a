"""Drop whole encoder layers.

Before -> After (6 layers, ratio 0.5):
    encoder.layer[0..5]  ->  encoder.layer = [0, 2, 4] (every_other)  or  the 3 whose removal hurt least
    config num_hidden_layers 6 -> 3

`every_other` needs no data: it drops evenly spaced layers, which at ratio 0.5 is layers 1, 3, 5.
`importance` measures: it drops, one at a time, the layer whose removal raises the task loss on
labelled `--train-data` least, re-measuring after each drop because layers compensate for each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgecompress.architectures import architecture_of
from edgecompress.compress._pruning import (
    check_positive,
    check_ratio,
    cloned,
    encoder_layers,
    parameter_count,
    record_attention_width,
    set_config,
)
from edgecompress.compress._taskdata import mean_task_loss, task_data, training_seq_len
from edgecompress.errors import InternalError, UserError
from edgecompress.intake.model import CLASSIFICATION
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

STRATEGIES = ("every_other", "importance")


@register_pass
@dataclass(frozen=True)
class DropLayers(Pass):
    name = "drop_layers"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    strategy: str = "every_other"
    ratio: float = 0.5  # fraction of the encoder layers dropped
    importance_texts: int = 512  # labelled texts the loss is measured on (strategy "importance")

    def requires(self, bundle, ctx: PassContext) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(
                f"unknown strategy '{self.strategy}' for pass '{self.name}'", hint=f"Known: {', '.join(STRATEGIES)}"
            )
        check_ratio(self.name, "ratio", self.ratio)
        check_positive(self.name, "importance_texts", self.importance_texts)
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to drop layers from")
        total = len(encoder_layers(bundle.module))
        if self._count(total) == 0:
            raise PassSkipped(f"ratio {self.ratio} of {total} layers drops none")
        if self.strategy == "importance" and (
            bundle.kind != CLASSIFICATION or ctx.train_data is None or ctx.train_data.labels is None
        ):
            raise UserError(
                f"strategy 'importance' of pass '{self.name}' measures the task loss",
                expected="a classifier and labelled --train-data",
                hint='give --train-data, or use strategy = "every_other"',
            )

    def _count(self, total: int) -> int:
        count = round(self.ratio * total)
        if count >= total:
            raise UserError(
                f"option 'ratio' of pass '{self.name}' = {self.ratio} would drop all {total} layers",
                expected=f"a ratio below {(total - 0.5) / total:.3f}",
            )
        return count

    def run(self, bundle, ctx: PassContext) -> PassResult:
        new = cloned(bundle)
        layers = encoder_layers(new.module)
        count = self._count(len(layers))
        if self.strategy == "every_other":
            dropped, how = evenly_spaced(len(layers), count), "evenly spaced (strategy every_other)"
        else:
            data = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx), limit=self.importance_texts)
            dropped, losses = least_harmful(new.module, data, count)
            how = f"least harmful first (strategy importance): loss on {len(data)} training texts " + " -> ".join(
                f"{loss:.4f}" for loss in losses
            )
        keep(new.module, [i for i in range(len(layers)) if i not in dropped])
        set_config(new, **{architecture_of(new.module).layers_key: len(layers) - count})
        record_attention_width(new)
        notes = [f"dropped layers {sorted(dropped)} of {len(layers)}, {how}"]
        stats = {
            "dropped": sorted(dropped),
            "layers_before": len(layers),
            "layers_after": len(layers) - count,
            "parameters_before": parameter_count(bundle.module),
            "parameters_after": parameter_count(new.module),
        }
        return PassResult(new, notes, stats, lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        found, recorded = len(encoder_layers(result.model.module)), result.model.num_layers
        if found != recorded:
            raise InternalError(f"{self.name} left {found} layers; config says {recorded}")


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` layer indices spread over `total`, starting at the second: 1, 3, 5 of 6."""
    return [int((j + 0.5) * total / count) for j in range(count)]


def least_harmful(module, data, count: int) -> tuple[list[int], list[float]]:
    """Greedily drop the layer whose absence gives the lowest loss; returns original indices and losses."""
    alive = list(range(len(encoder_layers(module))))
    losses = [mean_task_loss(module, data)]
    dropped = []
    for _ in range(count):
        trial = {i: _loss_without(module, alive, i, data) for i in alive}
        best = min(trial, key=trial.get)
        alive.remove(best)
        dropped.append(best)
        losses.append(trial[best])
    return dropped, losses


def _loss_without(module, alive: list[int], skip: int, data) -> float:
    architecture = architecture_of(module)
    full = encoder_layers(module)
    architecture.set_layers(module.hf_model, torch.nn.ModuleList([full[i] for i in alive if i != skip]))
    try:
        return mean_task_loss(module, data)
    finally:
        architecture.set_layers(module.hf_model, full)


def keep(module, indices: list[int]) -> None:
    full = encoder_layers(module)
    architecture_of(module).set_layers(module.hf_model, torch.nn.ModuleList([full[i] for i in indices]))
