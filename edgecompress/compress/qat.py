"""Quantization-aware training (Q8BERT, Zafrir et al. 2019): fine-tune the model under simulated int8.

Before -> After:
    float BERT (weights W)  ->  float BERT (weights W', fine-tuned while the encoder's Linear layers and
                                the word-embedding table ran fake-quantized, then unwrapped;
                                `snap_weights` leaves W' on the int8 grid it was trained on)
The architecture, config and tokenizer do not change: the recipe's `quantize_static` then calibrates
and quantizes the graph, and finds weights that were trained to survive it. `_fake_quant.py` says what
is simulated and where it differs from what `quantize_static` ships.

Training is `_recovery.recover` on `--train-data`: distillation from the untouched float model (KL at a
temperature + CE on labels, plus hidden-state MSE; MSE on the embedding for sentence encoders). A slice
of `--train-data` is held out; agreement with the float model on it is measured for the simulated int8
model before and after training, and for the float weights that ship. Training resumes from a
checkpoint under `<cache>/work/` after an interruption (same model, options and data); the checkpoint
is deleted when training completes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from edgecompress.architectures import architecture_of
from edgecompress.compress._fake_quant import ActivationQuantizer, unwrap_encoder, wrap_encoder, wrapped_count
from edgecompress.compress._pruning import check_positive, cloned
from edgecompress.compress._recovery import Recovery, recover, training_digest, work_dir
from edgecompress.compress._taskdata import TaskData, task_data, training_seq_len
from edgecompress.errors import InternalError, UserError
from edgecompress.intake.model import CLASSIFICATION
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

log = logging.getLogger(__name__)

# Batches run through the fake-quantized model before training to start the activation ranges from
# data rather than from the first training batch alone.
CALIBRATION_BATCHES = 8
EVAL_BATCH = 64


def head_linears(model) -> tuple[str, ...]:
    """Linear layers the graph keeps float: the pooler and the head after the encoder. They act on one
    token's vector, so the exporter lowers them to Gemm, which quantize_static does not quantize (see
    `_fake_quant.py`); simulating int8 there would train for noise the app never sees."""
    architecture = architecture_of(model)
    encoder = architecture.encoder_model(model)
    embeddings = encoder.get_submodule(architecture.word_embeddings_path.rpartition(".")[0])
    inside = {id(m) for part in (architecture.layers(model), embeddings) for m in part.modules()}
    return tuple(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) not in inside)


@register_pass
@dataclass(frozen=True)
class Qat(Pass):
    name = "qat"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    # Last of the passes that change the float model: the weights it trains under simulated int8 (and
    # leaves on the int8 grid) are the ones quantize_static must find.
    runs_after = ("drop_layers", "prune_heads", "prune_ffn", "prune_schedule")
    epochs: float = 1.0  # passes over the training texts (--train-data minus the held-out slice)
    lr: float = 2e-5  # small: the model is already fine-tuned, training only adapts it to the int8 grid
    batch_size: int = 32
    temperature: float = 2.0
    hidden_weight: float = 1.0  # weight of the hidden-state MSE to the float model's layers
    momentum: float = 0.9  # EMA of the activation ranges (Q8BERT)
    holdout: float = 0.1  # share of --train-data held out to measure agreement, never trained on
    snap_weights: bool = True
    checkpoint_every: int = 50  # training steps between checkpoints
    seed: int = 0

    def requires(self, bundle, ctx: PassContext) -> None:
        for option in ("epochs", "lr", "batch_size", "temperature", "checkpoint_every"):
            check_positive(self.name, option, getattr(self, option))
        for option in ("momentum", "holdout"):
            if not 0 <= getattr(self, option) < 1:
                raise UserError(
                    f"option '{option}' of pass '{self.name}' must be in [0, 1), got {getattr(self, option)!r}"
                )
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to fine-tune")
        if not hasattr(bundle.module, "hf_model"):
            raise PassSkipped(
                f"{type(bundle.module).__name__} is not a transformer encoder: fake quantization "
                "wraps a transformers encoder's Linear layers"
            )
        if ctx.train_data is None:
            raise UserError(
                f"pass '{self.name}' fine-tunes the model under simulated int8 on training texts, but none were given",
                expected="--train-data (a labelled CSV, TSV or JSONL file)",
            )

    def run(self, bundle, ctx: PassContext) -> PassResult:
        new = cloned(bundle)
        training, held_out = self._texts(bundle, ctx)
        agreement = Agreement(bundle.module, held_out, bundle.kind == CLASSIFICATION)
        wrapped = wrap_encoder(
            new.module.hf_model,
            momentum=self.momentum,
            keep_float=head_linears(new.module.hf_model),
        )
        calibrate_ranges(new.module, training, self.batch_size, self.seed)
        before = agreement.of(new.module)
        trained = self._train(new.module, bundle.module, training)
        after = agreement.of(new.module)
        unwrap_encoder(new.module.hf_model, snap=self.snap_weights)
        stats = {
            "steps": trained["steps"],
            "epochs": self.epochs,
            "training_texts": len(training),
            "held_out_texts": len(held_out),
            "loss_first": trained.get("loss_first"),
            "final_loss": trained.get("loss_last"),
            "seconds": trained["seconds"],
            "resumed_from_step": trained.get("resumed_from_step", 0),
            "wrapped_modules": wrapped,
            f"held_out_{agreement.measure}": {
                "fake_int8_before": before,
                "fake_int8_after": after,
                "float_after": agreement.of(new.module),
            },
        }
        return PassResult(new, self._notes(stats, agreement.measure), stats, lossy=True)

    def _texts(self, bundle, ctx: PassContext) -> tuple[TaskData, TaskData]:
        """--train-data tokenized as the app will, split into (training, held out)."""
        data = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx))
        training, held_out = split(data, self.holdout, self.seed)
        if len(training) == 0:
            raise UserError(
                f"pass '{self.name}' has no training texts left after holding out {len(held_out)} of {len(data)}",
                expected="more --train-data rows or a smaller holdout",
            )
        return training, held_out

    def _train(self, student, teacher, training: TaskData) -> dict:
        """Distil `teacher` into the fake-quantized `student`, resumable from `<cache>/work/qat-<digest>`."""
        options = Recovery(self.epochs, self.lr, self.batch_size, self.temperature, self.hidden_weight)
        folder = work_dir(self.name, training_digest(student, teacher, training, options, self.seed))
        with torch.random.fork_rng(devices=[]):  # dropout draws from `seed`; the caller's RNG is left as it was
            torch.manual_seed(self.seed)
            return recover(
                student,
                teacher,
                training,
                options,
                seed=self.seed,
                label=self.name,
                checkpoint_dir=folder,
                checkpoint_every=self.checkpoint_every,
            )

    def _notes(self, stats: dict, measure: str) -> list[str]:
        held = stats[f"held_out_{measure}"]
        resumed = f", resumed after step {stats['resumed_from_step']}" if stats["resumed_from_step"] else ""
        return [
            f"fine-tuned {stats['wrapped_modules']} fake-int8 modules (weights int8 per channel, Q/K/V "
            f"7-bit as QAttention, activations uint8 per tensor; pooler and classifier float, as the graph "
            f"keeps them) for {stats['steps']} steps "
            f"({self.epochs} epochs of {stats['training_texts']} texts) distilling the float model in "
            f"{stats['seconds']} s{resumed}; loss {stats['loss_first']} -> {stats['final_loss']}",
            f"{measure} with the float model on {stats['held_out_texts']} held-out training texts: simulated "
            f"int8 {held['fake_int8_before']} before, {held['fake_int8_after']} after; shipped float "
            f"weights{' (snapped to the int8 grid)' if self.snap_weights else ''} {held['float_after']}",
        ]

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        left = wrapped_count(result.model.module)
        if left:
            raise InternalError(f"{self.name} left {left} fake-quantization wrappers in the model")


def split(data: TaskData, share: float, seed: int) -> tuple[TaskData, TaskData]:
    """(training, held out): a seeded random `share` of the texts held out, at least one when share > 0."""
    rows = list(range(len(data)))
    random.Random(seed).shuffle(rows)
    count = max(1, round(share * len(rows))) if share > 0 else 0
    return _subset(data, sorted(rows[count:])), _subset(data, sorted(rows[:count]))


def _subset(data: TaskData, rows: list[int]) -> TaskData:
    labels = None if data.labels is None else [data.labels[i] for i in rows]
    return TaskData(ids=[data.ids[i] for i in rows], labels=labels, pad_id=data.pad_id)


def calibrate_ranges(module, data: TaskData, batch_size: int, seed: int) -> None:
    """Start the static activation ranges from a few training batches: only the quantizers observe
    (train mode), the rest of the model is in eval mode (no dropout) and no weight changes."""
    module.eval()
    quantizers = [m for m in module.modules() if isinstance(m, ActivationQuantizer)]
    for quantizer in quantizers:
        quantizer.train()
    with torch.no_grad():
        for _, batch in zip(range(CALIBRATION_BATCHES), data.batches(batch_size, seed=seed)):
            module(*batch.inputs)
    module.eval()


class Agreement:
    """How closely a model follows the float model on held-out texts: the share of equal predictions
    for a classifier, the mean cosine of the embeddings for a sentence encoder."""

    def __init__(self, reference, data: TaskData, classifier: bool):
        self.data, self.classifier = data, classifier
        self.measure = "agreement" if classifier else "mean_cosine"
        self.reference = _outputs(reference, data)

    def of(self, module) -> float | None:
        if len(self.data) == 0:
            return None
        outputs = _outputs(module, self.data)
        if self.classifier:
            return round((outputs.argmax(-1) == self.reference.argmax(-1)).float().mean().item(), 4)
        return round(torch.nn.functional.cosine_similarity(outputs, self.reference, dim=-1).mean().item(), 4)


def _outputs(module, data: TaskData) -> torch.Tensor:
    """Outputs on every text of `data`, in a fixed order (length-sorted batches), in eval mode."""
    module.eval()
    with torch.no_grad():
        return torch.cat([module(*batch.inputs) for batch in data.batches(EVAL_BATCH)]) if len(data) else torch.zeros(0)
