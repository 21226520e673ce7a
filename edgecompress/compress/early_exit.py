"""Early exit (DeeBERT / PABEE): a classifier ramp after every encoder layer, trained by distillation.

Before -> After:
    bundle: ids -> L layers -> head -> logits
 -> the same bundle (its model is not changed: the whole-model artifacts stay exact) plus `bundle.exits`:
    L - 1 ramps (ramp k reads the mean of layer k's token rows; the last layer keeps the model's own head), the exit
    policy and its threshold. The package stage then ships the model as L segments (exits/segments.py) with the
    policy in the manifest, and the report gives accuracy and mean latency per threshold on --data.

The backbone is frozen: ramps learn from the final head's logits (KL, temperature `temperature`) and, when
--train-data is labelled and `label_weight` > 0, from the labels, on each layer's pooled rows computed once.
Refused before any work: a family that has not opted in (`Architecture.early_exit`), a task other than
single-label classification, a threshold out of the policy's range, training options that cannot train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

from edgecompress.compress._taskdata import task_data, training_seq_len
from edgecompress.errors import InternalError, UserError
from edgecompress.exits.policy import check_policy, default_sweep, default_threshold
from edgecompress.exits.ramps import ExitRamps, RampTraining, train_ramps
from edgecompress.intake.model import CLASSIFICATION
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass


@register_pass
@dataclass(frozen=True)
class EarlyExit(Pass):
    name = "early_exit"
    stage = "compress"
    in_place = False  # returns a new bundle carrying the ramps; the model itself is shared and left unchanged
    # The ramps read the backbone as it ships: every pass that changes the encoder must come first.
    runs_after = (
        "trim_vocab",
        "prune_heads",
        "prune_ffn",
        "prune_schedule",
        "drop_layers",
        "low_rank",
        "share_layers",
        "factorise_embeddings",
    )
    # The segments run the float layers one by one, each on every token.
    excludes = MappingProxyType(
        {
            "eliminate_tokens": "its layers keep fewer tokens than the segments hand on, and ramps pool every token",
            "qat": "the segments are exported from the float layers, not from quantization-aware ones",
            "integer_only": "the segments are exported from the float layers; an integer-only model has none",
        }
    )
    policy: str = "entropy"  # "entropy" (DeeBERT) or "patience" (PABEE)
    # The one the manifest ships: entropy in [0, 1], patience in [0, layers - 1]; None: policy.default_threshold.
    threshold: float | None = None
    sweep: tuple = ()  # thresholds the report scores besides it (empty: a default grid per policy)
    epochs: int = 20  # over the cached rows: each epoch costs the ramps only, not the encoder
    learning_rate: float = 1e-3
    temperature: float = 1.0
    label_weight: float = 0.0  # weight of cross-entropy on labels (when --train-data has them) against KL
    texts: int = 0  # training texts taken from --train-data (0: all)

    def check_model(self, bundle) -> None:
        where = f"pass '{self.name}'"
        family = bundle.architecture
        if family is None or bundle.module is None:
            raise UserError(
                f"early exit needs the model's layers as torch modules; {bundle.source} has none",
                where=where,
                expected="a checkpoint folder of a supported family (not an .onnx file or a distilled student)",
            )
        why = family.refuse(self.name)
        if why:
            raise UserError(f"early exit does not apply to {family.describe()}: {why}", where=where)
        if bundle.kind != CLASSIFICATION:
            raise UserError(
                f"early exit does not apply to task '{bundle.kind}': a ramp's answer must be judged alone by its "
                "confidence, which only a single-label classifier's softmax gives",
                where=where,
                expected=f"a '{CLASSIFICATION}' model",
            )
        layers = int(bundle.num_layers or 0)
        if layers < 2:
            raise UserError(f"early exit needs at least 2 encoder layers, the model has {layers}", where=where)
        check_policy(self.policy, (*([] if self.threshold is None else [self.threshold]), *self.sweep), layers, where)
        self._check_training(where)

    def _check_training(self, where: str) -> None:
        checks = (
            ("epochs", self.epochs >= 1, "a whole number of at least 1"),
            ("texts", self.texts >= 0, "a whole number; 0 takes every --train-data text"),
            ("learning_rate", self.learning_rate > 0, "a positive number"),
            ("temperature", self.temperature > 0, "a positive number"),
            ("label_weight", 0 <= self.label_weight <= 1, "a number in [0, 1]"),
        )
        for option, ok, expected in checks:
            if not ok:
                raise UserError(
                    f"option '{option}' of pass '{self.name}' = {getattr(self, option)!r} cannot train",
                    where=where,
                    expected=expected,
                )

    def requires(self, bundle, ctx: PassContext) -> None:
        self.check_model(bundle)
        if bundle.exits is not None:
            raise PassSkipped("the model has exit ramps already")
        if ctx.train_data is None:
            raise UserError(
                f"pass '{self.name}' trains its ramps by distillation",
                expected="--train-data (labels optional: without them the ramps learn from the model's logits only)",
                hint="give --train-data FILE",
            )

    def run(self, bundle, ctx: PassContext) -> PassResult:
        limit = self.texts or None
        data = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx), limit=limit)
        settings = RampTraining(self.epochs, self.learning_rate, self.temperature, self.label_weight)
        ramps, training = train_ramps(bundle.module, bundle.architecture, data, settings)
        exits_count = len(ramps) + 1
        threshold = float(default_threshold(self.policy, exits_count) if self.threshold is None else self.threshold)
        sweep = tuple(sorted({threshold, *map(float, self.sweep or default_sweep(self.policy, exits_count))}))
        exits = ExitRamps(ramps, self.policy, threshold, sweep, training)
        new = dataclasses.replace(bundle, exits=exits)
        agreement = ", ".join(f"{a:.1%}" for a in training["train_agreement_per_ramp"])
        losses = "KL + labels" if training["labelled"] and self.label_weight else "KL only"
        notes = [
            f"{len(ramps)} ramps trained on {training['texts']} texts of --train-data for {self.epochs} epochs in "
            f"{training['seconds']:.1f} s (backbone frozen; {losses}); "
            f"agreement with the model's head on those texts per layer: {agreement}",
            f"policy {self.policy}, threshold {threshold:g} shipped; the report scores {len(sweep)} thresholds",
        ]
        return PassResult(new, notes, {"early_exit": training})

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        exits, layers = result.model.exits, before.num_layers
        if exits is None or exits.exits != layers:
            raise InternalError(f"{self.name} made {0 if exits is None else exits.exits} exits for {layers} layers")
