"""Recovery fine-tuning: distil an untouched model (teacher) into a changed one (student). Registers no pass.

Used by the pruning passes (the unpruned model teaches the pruned one), by `qat` (the float model
teaches its fake-quantized copy), and through `RecoveringPass` by the passes that factorise or share weights.
Loss per batch, on `--train-data` texts (Hinton et al. 2015;
hidden-state term as in TinyBERT), computed by `distill/losses.py`:

    T^2 * KL(softmax(teacher / T) || softmax(student / T)) + CE(student, labels)
      + hidden_weight * mean over layers of MSE(student layer output, teacher layer output), real tokens only

Sentence encoders have no logits or labels: MSE between the two embeddings replaces KL and CE. The
hidden-state term pairs layer i with layer i, so it applies only when both have the same number of
layers; head and FFN pruning keep the hidden width, so the widths always match.

Resumable: given a `checkpoint_dir`, training saves weights, optimizer, schedule, step, loss trend and
the torch RNG state there every `checkpoint_every` steps (written to a temporary file, then renamed),
and a later call with the same student, teacher, data and options continues from the last save and
ends with the same weights as an uninterrupted run. The checkpoint is deleted when training completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from edgecompress.compress._pruning import encoder_layers
from edgecompress.compress._taskdata import Batch, TaskData, task_data, training_seq_len
from edgecompress.distill.losses import hard_loss, logit_loss, masked_mse
from edgecompress.errors import UserError
from edgecompress.logs import progress_log
from edgecompress.passes import Pass
from edgecompress.paths import cache_dir

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
PROGRESS_LINES = 10  # log lines per recovery run
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class Recovery:
    epochs: float  # passes over the training texts; fractions allowed
    lr: float
    batch_size: int
    temperature: float
    hidden_weight: float


@dataclass(frozen=True)
class RecoveringPass(Pass):
    """Shared options and steps of the passes that change the model and then distil the unchanged one into it
    (`low_rank`, `factorise_embeddings`, `share_layers`): `epochs` = 0 keeps the change untrained."""

    # What the message and notes call the changed model, and what `epochs = 0` leaves.
    changed: ClassVar[str] = "changed"
    untrained: ClassVar[str] = "the change without training"
    epochs: float = 1.0  # recovery epochs over --train-data
    lr: float = 5e-5
    batch_size: int = 32
    temperature: float = 2.0
    hidden_weight: float = 1.0
    seed: int = 0

    def check_recovery(self, ctx) -> None:
        for option in ("batch_size", "lr", "temperature"):
            value = getattr(self, option)
            if value <= 0:
                raise UserError(f"option '{option}' of pass '{self.name}' must be positive, got {value!r}")
        if self.epochs < 0:
            raise UserError(f"option 'epochs' of pass '{self.name}' must be 0 or more, got {self.epochs!r}")
        if self.epochs > 0 and ctx.train_data is None:
            raise UserError(
                f"pass '{self.name}' fine-tunes the {self.changed} model on training texts, but none were given",
                expected="--train-data (a labelled CSV, TSV or JSONL file)",
                hint=f"give --train-data, or set epochs = 0 for {self.untrained}",
            )

    def recover(self, new, bundle, ctx) -> tuple[dict, str]:
        """Distil `bundle` (unchanged) into `new` on --train-data; returns the training record and its note."""
        if self.epochs == 0:
            return {"steps": 0, "seconds": 0.0}, f"no recovery training (epochs = 0): {self.untrained}"
        training = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx))
        options = Recovery(self.epochs, self.lr, self.batch_size, self.temperature, self.hidden_weight)
        record = recover(new.module, bundle.module, training, options, seed=self.seed, label=self.name)
        trend = f", loss {record['loss_first']} -> {record['loss_last']}" if "loss_first" in record else ""
        note = (
            f"recovery: {record['steps']} steps of distillation on {len(training)} training texts "
            f"in {record['seconds']} s{trend}"
        )
        return record, note


@dataclass
class _Progress:
    """How far training got: what a checkpoint carries besides the tensors."""

    step: int = 0
    seconds: float = 0.0  # training time of earlier sessions
    trend: list[float] = field(default_factory=list)  # mean loss per progress line
    losses: list[float] = field(default_factory=list)  # losses since the last progress line


def recover(
    student,
    teacher,
    data: TaskData,
    options: Recovery,
    *,
    seed: int,
    label: str,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 50,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune `student` in place toward `teacher`; returns steps, seconds and the loss trend.

    `checkpoint_dir`: save there every `checkpoint_every` steps and resume from a matching save
    (see `training_digest`); None trains without saving. `on_step(step)` is called after every step.
    """
    steps = training_steps(data, options)
    if steps == 0:
        return {"steps": 0, "seconds": 0.0}
    optimizer, scheduler = _optimizer(student, options.lr, steps)
    checkpoint = (
        None
        if checkpoint_dir is None
        else _Checkpoint(Path(checkpoint_dir), training_digest(student, teacher, data, options, seed))
    )
    progress = checkpoint.resume(student, optimizer, scheduler) if checkpoint else _Progress()
    resumed_from = progress.step
    hidden_term = len(encoder_layers(student)) == len(encoder_layers(teacher)) and options.hidden_weight > 0
    start = time.perf_counter()
    student.train()
    teacher.eval()
    with _layer_outputs(student) as student_hidden, _layer_outputs(teacher) as teacher_hidden:
        batches = itertools.islice(_batches(data, options.batch_size, seed, steps), progress.step, None)
        for step, batch in enumerate(batches, start=progress.step + 1):
            with torch.no_grad():
                teacher_out = teacher(*batch.inputs)
            student_out = student(*batch.inputs)
            loss = distillation_loss(student_out, teacher_out, batch, options)
            if hidden_term:
                loss = loss + options.hidden_weight * hidden_loss(student_hidden, teacher_hidden, batch)
            student_hidden.clear()
            teacher_hidden.clear()
            _update(student, loss, optimizer, scheduler)
            _record(progress, step, steps, loss.item(), label, start, resumed_from)
            if checkpoint and step % checkpoint_every == 0 and step < steps:
                checkpoint.save(student, optimizer, scheduler, progress, time.perf_counter() - start)
            if on_step:
                on_step(step)
    student.eval()
    result = {
        "steps": steps,
        "seconds": round(progress.seconds + time.perf_counter() - start, 1),
        "loss_first": round(progress.trend[0], 4),
        "loss_last": round(progress.trend[-1], 4),
    }
    if checkpoint:
        checkpoint.remove()
        result["resumed_from_step"] = resumed_from
    return result


def training_steps(data: TaskData, options: Recovery) -> int:
    return math.ceil(options.epochs * math.ceil(len(data) / options.batch_size))


def _update(student, loss: torch.Tensor, optimizer, scheduler) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _record(
    progress: _Progress, step: int, steps: int, loss: float, label: str, start: float, resumed_from: int
) -> None:
    progress.step = step
    progress.losses.append(loss)
    if step % max(1, steps // PROGRESS_LINES) == 0 or step == steps:
        progress.trend.append(sum(progress.losses) / len(progress.losses))
        progress.losses.clear()
        session = time.perf_counter() - start
        eta = session / (step - resumed_from) * (steps - step)  # this session's pace: the machine may differ
        _progress(label, step, steps, progress.trend[-1], progress.seconds + session, eta=eta)


def _progress(label: str, step: int, steps: int, loss: float, elapsed: float, eta: float | None = None) -> None:
    eta = elapsed / step * (steps - step) if eta is None else eta
    progress_log().info(
        "%s: step %d/%d, loss %.4f, %s elapsed, %s left", label, step, steps, loss, _clock(elapsed), _clock(eta)
    )


def distillation_loss(student_out, teacher_out, batch: Batch, options: Recovery) -> torch.Tensor:
    if batch.labels is None:  # a sentence encoder: match the embedding itself
        return logit_loss(student_out, teacher_out, kind="mse", temperature=1.0)
    soft = logit_loss(student_out, teacher_out, kind="kl", temperature=options.temperature)
    return soft + hard_loss(student_out, batch.labels)


def hidden_loss(student_hidden: list, teacher_hidden: list, batch: Batch) -> torch.Tensor:
    """Mean over layers of the MSE between layer outputs, counting real tokens only (padding is noise)."""
    return masked_mse(list(zip(student_hidden, teacher_hidden)), batch.inputs[1])


@contextlib.contextmanager
def _layer_outputs(module) -> Iterator[list]:
    """Collect each encoder layer's output during a forward pass, in layer order."""
    outputs: list = []

    def keep(layer, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    # Once per distinct module: with shared layers (`share_layers`) one module runs at several depths, and
    # its hook then fires once per depth, in depth order.
    distinct = {id(layer): layer for layer in encoder_layers(module)}.values()
    handles = [layer.register_forward_hook(keep) for layer in distinct]
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

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in module.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    return optimizer, get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_FRACTION * steps), steps)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


# --- checkpoints ------------------------------------------------------------------------------------


def training_digest(student, teacher, data: TaskData, options: Recovery, seed: int) -> str:
    """sha256 of what decides the trained weights: both models' parameters, the data, options and seed.

    Parameters, not buffers: buffers such as activation ranges are computed by forward passes, whose
    last bits can differ between processes (vectorised kernels depend on memory alignment), and a
    restart must still find its checkpoint. A resume restores the buffers with the weights.
    """
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "options": dataclasses.asdict(options),
                "seed": seed,
                "ids": data.ids,
                "labels": data.labels,
                "pad": data.pad_id,
            }
        ).encode()
    )
    for module in (student, teacher):
        for name, tensor in module.named_parameters():
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def work_dir(kind: str, digest: str) -> Path:
    """The default checkpoint folder of one training run: `<cache>/work/<kind>-<digest>`."""
    return cache_dir() / "work" / f"{kind}-{digest[:16]}"


@dataclass
class _Checkpoint:
    folder: Path
    digest: str

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def resume(self, student, optimizer, scheduler) -> _Progress:
        """Restore the last save when it belongs to this very run; otherwise start from step 0."""
        saved = self._load()
        if saved is None:
            return _Progress()
        if saved["digest"] != self.digest:
            log.warning("ignoring %s: it was saved by a run with other weights, data or options", self.path)
            return _Progress()
        student.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        log.info("resuming after step %d from %s", saved["progress"]["step"], self.path)
        return _Progress(**saved["progress"])

    def _load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, weights_only=True)
        except Exception as exc:  # unreadable (another torch, a damaged disk): training again is safe
            log.warning("ignoring unreadable checkpoint %s (%s: %s)", self.path, type(exc).__name__, exc)
            return None

    def save(self, student, optimizer, scheduler, progress: _Progress, session_seconds: float) -> None:
        """Write to a temporary file, then rename: a reader sees the previous save or this one, never half."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = dataclasses.replace(
            progress,
            seconds=progress.seconds + session_seconds,
            trend=list(progress.trend),
            losses=list(progress.losses),
        )
        tmp = self.path.with_name(f"{CHECKPOINT_FILE}.tmp-{os.getpid()}")
        torch.save(
            {
                "digest": self.digest,
                "model": student.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "progress": dataclasses.asdict(state),
            },
            tmp,
        )
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        for stale in self.folder.glob(f"{CHECKPOINT_FILE}.tmp-*"):  # left by a process killed while saving
            stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a folder the caller also uses for other files stays
            self.folder.rmdir()
