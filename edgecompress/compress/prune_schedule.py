"""Gradual structured pruning with recovery: heads and FFN neurons go in rounds, each followed by a
short distillation from the unpruned model on `--train-data`.

Before -> After (MiniLM, heads 0.5, ffn 0.5, steps 3):
    6 layers x 12 heads, intermediate 1536  ->  6 layers x 6 heads, intermediate 768, weights fine-tuned
    removed per layer after round i: s_i = s_f + (s_0 - s_f)(1 - i/n)^3, s_0 = 0 (Zhu & Gupta 2017),
    heads 4 -> 6 -> 6, neurons 540 -> 740 -> 768

The cubic schedule removes most units early, while the model is still close to the teacher, and
leaves the later rounds small changes and more recovery. Importance is re-measured before each round
(the pruned-and-recovered model is a different model); units are chosen exactly as `prune_heads` and
`prune_ffn` choose them, and recovery is `_recovery.recover`. Progress goes to `logging` (shown by
`edgecompress export -v`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgecompress.compress._pruning import (
    Pruned,
    check_positive,
    check_ratio,
    cloned,
    encoder_layers,
    heads,
    importance,
    importance_data,
    importance_method,
    neurons,
    parameter_count,
    record_attention_width,
    set_config,
    units_to_remove,
)
from edgecompress.compress._recovery import Recovery, recover
from edgecompress.compress._taskdata import task_data, training_seq_len
from edgecompress.errors import InternalError, UserError
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

log = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class PruneSchedule(Pass):
    name = "prune_schedule"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    heads: float = 0.5  # final fraction of attention heads removed per layer
    ffn: float = 0.5  # final fraction of FFN neurons removed per layer
    steps: int = 3  # pruning rounds
    epochs: float = 1.0  # recovery epochs over --train-data after each round
    lr: float = 5e-5
    batch_size: int = 32
    temperature: float = 2.0
    hidden_weight: float = 1.0  # weight of the hidden-state MSE in the recovery loss
    importance_texts: int = 1024  # labelled texts the gradient importance is averaged over
    seed: int = 0

    def requires(self, bundle, ctx: PassContext) -> None:
        check_ratio(self.name, "heads", self.heads)
        check_ratio(self.name, "ffn", self.ffn)
        for option in ("steps", "batch_size", "importance_texts", "lr", "temperature"):
            check_positive(self.name, option, getattr(self, option))
        if self.epochs < 0:
            raise UserError(f"option 'epochs' of pass '{self.name}' must be 0 or more, got {self.epochs!r}")
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to prune")
        if not any(self._targets(bundle).values()):
            raise PassSkipped(f"heads {self.heads} and ffn {self.ffn} remove no unit of any layer")
        if ctx.train_data is None:
            raise UserError(
                f"pass '{self.name}' fine-tunes the pruned model on training texts, but none were given",
                expected="--train-data (a labelled CSV, TSV or JSONL file)",
            )

    def _targets(self, bundle) -> dict:
        """Units removed per layer at the end, for each kind the options prune."""
        layer = encoder_layers(bundle.module)[0]
        return {
            units: units_to_remove(self.name, option, ratio, units.count(layer), units.kind)
            for units, option, ratio in (
                (heads(bundle.module), "heads", self.heads),
                (neurons(bundle.module), "ffn", self.ffn),
            )
        }

    def run(self, bundle, ctx: PassContext) -> PassResult:
        targets = {units: count for units, count in self._targets(bundle).items() if count}
        new = cloned(bundle)
        pruned = {units: Pruned.start(new.module, units) for units in targets}
        scoring, why_not = importance_data(bundle, ctx, self.importance_texts)
        training = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx))
        recovery = Recovery(self.epochs, self.lr, self.batch_size, self.temperature, self.hidden_weight)
        rounds = []
        for step in range(1, self.steps + 1):
            fraction = 1 - (1 - step / self.steps) ** 3
            for units, scores in zip(targets, importance(new.module, list(targets), scoring)):
                pruned[units].remove(new.module, scores, round(targets[units] * fraction) - pruned[units].removed)
            label = f"{self.name} round {step}/{self.steps}"
            log.info("%s: %s removed per layer", label, _removed(pruned))
            result = recover(new.module, bundle.module, training, recovery, seed=self.seed + 1000 * step, label=label)
            rounds.append({"removed": {u.kind: p.removed for u, p in pruned.items()}, **result})
        set_config(new, **{units.config_key: p.total - p.removed for units, p in pruned.items()})
        record_attention_width(new)
        notes = self._notes(pruned, rounds, training, [importance_method(u, scoring, why_not) for u in targets])
        stats = {
            "rounds": rounds,
            "training_seconds": round(sum(r["seconds"] for r in rounds), 1),
            "removed": {u.kind: p.removed_ids() for u, p in pruned.items()},
            "parameters_before": parameter_count(bundle.module),
            "parameters_after": parameter_count(new.module),
        }
        return PassResult(new, notes, stats, lossy=True)

    def _notes(self, pruned: dict, rounds: list[dict], training, methods: list[str]) -> list[str]:
        notes = [
            f"removed {_removed(pruned)} per layer in {self.steps} round(s) on the cubic schedule; "
            f"importance: {'; '.join(methods)}"
        ]
        for i, r in enumerate(rounds, start=1):
            removed = ", ".join(_plural(n, kind) for kind, n in r["removed"].items())
            trend = f", loss {r['loss_first']} -> {r['loss_last']}" if r["steps"] else ""
            notes.append(
                f"round {i}: {removed} removed; recovery {r['steps']} steps of distillation on "
                f"{len(training)} training texts in {r['seconds']} s{trend}"
            )
        return notes

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        for units in (heads(result.model.module), neurons(result.model.module)):
            expected = result.model.config[units.config_key]
            found = {units.count(layer) for layer in encoder_layers(result.model.module)}
            if found != {expected}:
                raise InternalError(f"{self.name} left {sorted(found)} {units.kind}s per layer; config says {expected}")


def _removed(pruned: dict) -> str:
    return ", ".join(f"{p.removed} of {_plural(p.total, units.kind)}" for units, p in pruned.items())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
