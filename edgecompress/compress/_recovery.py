"""Recovery fine-tuning: distil the unpruned model (teacher) into the pruned one (student). Registers no pass.

Loss per batch, on `--train-data` texts (Hinton et al. 2015; hidden-state term as in TinyBERT):

    T^2 * KL(softmax(teacher / T) || softmax(student / T)) + CE(student, labels)
      + hidden_weight * mean over layers of MSE(student layer output, teacher layer output), real tokens only

Sentence encoders have no logits or labels: MSE between the two embeddings replaces KL and CE. The
hidden-state term pairs layer i with layer i, so it applies only when both have the same number of
layers; head and FFN pruning keep the hidden width, so the widths always match.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ._pruning import encoder_layers
from ._taskdata import Batch, TaskData

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
PROGRESS_LINES = 10  # log lines per recovery run


@dataclass(frozen=True)
class Recovery:
    epochs: float  # passes over the training texts; fractions allowed
    lr: float
    batch_size: int
    temperature: float
    hidden_weight: float


def recover(student, teacher, data: TaskData, options: Recovery, *, seed: int, label: str) -> dict:
    """Fine-tune `student` in place toward `teacher`; returns steps, seconds and the loss trend."""
    steps = math.ceil(options.epochs * math.ceil(len(data) / options.batch_size))
    if steps == 0:
        return {"steps": 0, "seconds": 0.0}
    optimizer, scheduler = _optimizer(student, options.lr, steps)
    hidden_term = len(encoder_layers(student)) == len(encoder_layers(teacher)) and options.hidden_weight > 0
    start, losses, trend = time.perf_counter(), [], []
    student.train()
    teacher.eval()
    with _layer_outputs(student) as student_hidden, _layer_outputs(teacher) as teacher_hidden:
        for step, batch in enumerate(_batches(data, options.batch_size, seed, steps), start=1):
            with torch.no_grad():
                teacher_out = teacher(*batch.inputs)
            student_out = student(*batch.inputs)
            loss = distillation_loss(student_out, teacher_out, batch, options)
            if hidden_term:
                loss = loss + options.hidden_weight * hidden_loss(student_hidden, teacher_hidden, batch)
            student_hidden.clear()
            teacher_hidden.clear()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step % max(1, steps // PROGRESS_LINES) == 0 or step == steps:
                trend.append(sum(losses) / len(losses))
                losses.clear()
                _progress(label, step, steps, trend[-1], time.perf_counter() - start)
    student.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
            "loss_first": round(trend[0], 4), "loss_last": round(trend[-1], 4)}


def distillation_loss(student_out, teacher_out, batch: Batch, options: Recovery) -> torch.Tensor:
    if batch.labels is None:  # a sentence encoder: match the embedding itself
        return F.mse_loss(student_out, teacher_out)
    t = options.temperature
    soft = F.kl_div(F.log_softmax(student_out / t, dim=-1), F.log_softmax(teacher_out / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    return soft + F.cross_entropy(student_out, batch.labels)


def hidden_loss(student_hidden: list, teacher_hidden: list, batch: Batch) -> torch.Tensor:
    """Mean over layers of the MSE between layer outputs, counting real tokens only (padding is noise)."""
    mask = batch.inputs[1].unsqueeze(-1).to(student_hidden[0].dtype)
    width = student_hidden[0].shape[-1]
    total = sum(((s - t) ** 2 * mask).sum() for s, t in zip(student_hidden, teacher_hidden))
    return total / (len(student_hidden) * mask.sum() * width)


@contextlib.contextmanager
def _layer_outputs(module) -> Iterator[list]:
    """Collect each encoder layer's output during a forward pass, in layer order."""
    outputs: list = []

    def keep(layer, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(keep) for layer in encoder_layers(module)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _batches(data: TaskData, batch_size: int, seed: int, steps: int) -> Iterator[Batch]:
    """`steps` training batches: whole shuffled epochs, the last one cut short for fractional epochs."""
    epoch = 0
    while True:
        for batch in data.batches(batch_size, seed=seed + epoch):
            yield batch
            steps -= 1
            if steps == 0:
                return
        epoch += 1


def _optimizer(module, lr: float, steps: int):
    """AdamW without decay on biases and LayerNorm, linear warm-up then linear decay to 0."""
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in module.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_FRACTION * steps), steps)


def _progress(label: str, step: int, steps: int, loss: float, elapsed: float) -> None:
    eta = elapsed / step * (steps - step)
    log.info("%s: recovery step %d/%d, loss %.4f, %s elapsed, %s left", label, step, steps, loss,
             _clock(elapsed), _clock(eta))


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
