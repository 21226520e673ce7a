"""DistributedDataParallel trainer for students: one plain process, or many under torchrun (gloo, CPU).

    python -m torch.distributed.run --nproc_per_node 2 -m edgecompress.distill.trainer WORK_DIR

WORK_DIR comes from `run.prepare`: job.json (what to train), transfer.npz (texts with teacher logits) and
init.pt (the initial student). Without torchrun's environment the code runs as a world of one and skips
DDP; with it, every process joins a gloo group and DDP averages gradients, so all replicas take identical
steps on their own shard of each batch. Each epoch ends in checkpoint.pt (weights, optimizer, schedule,
step, every rank's RNG state), written atomically by rank 0, and a rerun resumes from it. The final
weights go to trained.pt, atomically, once all ranks have shown they hold identical weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgecompress.architectures import architecture_of
from edgecompress.distill.losses import LossOptions
from edgecompress.errors import EdgecompressError, InternalError

log = logging.getLogger(__name__)

JOB, TRANSFER, INIT, CHECKPOINT, TRAINED = "job.json", "transfer.npz", "init.pt", "checkpoint.pt", "trained.pt"
TENSORS = ("input_ids", "attention_mask", "teacher_logits", "labels")  # what training reads from transfer.npz
POOL_BATCHES = 50  # batches per length-sorted pool: little padding, yet a different order every epoch
MAX_GRAD_NORM = 1.0
TRANSFORMERS = ("transformer", "squeezed")  # BERT students: hidden-state and attention losses apply


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 3
    batch_size: int = 32  # per process
    lr: float = 1e-3
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 50


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's RANK and WORLD_SIZE)."""

    rank: int
    size: int

    @classmethod
    def join(cls) -> World:
        import torch.distributed as dist

        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size > 1:
            dist.init_process_group("gloo")
        return cls(int(os.environ.get("RANK", "0")), size)

    def gather(self, value) -> list:
        """`value` from every rank, in rank order (a collective: all ranks must call it)."""
        import torch.distributed as dist

        if self.size == 1:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def leave(self, *, finished: bool) -> None:
        """A finished rank waits for the others before tearing its gloo group down: one that left while rank 0
        was still saving aborted at exit ("terminate called without an active exception", SIGABRT) and failed
        a finished run now and then. A failed rank leaves at once (the others may never reach a barrier)."""
        import torch.distributed as dist

        if self.size > 1 and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def train(work: Path) -> None:
    """Train the job in `work` as this process's share of the world; rank 0 writes trained.pt."""
    world = World.join()
    finished = False
    try:
        _train(Path(work), world)
        finished = True
    finally:
        world.leave(finished=finished)


def _train(work: Path, world: World) -> None:
    import numpy as np
    import torch

    job = json.loads((work / JOB).read_text(encoding="utf-8"))
    options = TrainOptions(**job["train"])
    if world.size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.size))
    torch.manual_seed(options.seed)  # the projection starts the same everywhere (DDP also broadcasts it)
    teacher = _teacher(job)
    model = _objective(work, job, teacher)
    with np.load(work / TRANSFER) as transfer:
        data = {name: torch.from_numpy(transfer[name]) for name in TENSORS}
    lengths = data["attention_mask"].sum(dim=1).tolist()
    steps_per_epoch = len(epoch_batches(lengths, options.batch_size, world, options.seed, 0))
    optimizer, scheduler = _optimizer(model, options, steps_per_epoch * options.epochs)
    torch.manual_seed(options.seed * 1000 + world.rank + 1)  # dropout draws differ per rank
    state = _resume(work, model, optimizer, scheduler, world)
    trainable = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    progress = _Progress(
        steps_per_epoch * options.epochs, state["step"], state["train_seconds"], world.rank == 0, options.log_every
    )
    for epoch in range(state["epoch"], options.epochs):
        batches = epoch_batches(lengths, options.batch_size, world, options.seed, epoch)
        mean_loss = _run_epoch(trainable, optimizer, scheduler, data, batches, teacher, progress)
        state = {
            "epoch": epoch + 1,
            "step": progress.done,
            "train_seconds": progress.elapsed(),
            "epoch_losses": state["epoch_losses"] + [mean_loss],
        }
        if world.rank == 0:
            log.info("epoch %d/%d done: mean loss %.4f", epoch + 1, options.epochs, mean_loss)
        _save_checkpoint(work, model, optimizer, scheduler, state, world)
    _finish(work, model, world, {**state, "processes": world.size, "steps_per_epoch": steps_per_epoch})


def epoch_batches(lengths: list[int], batch_size: int, world: World, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches (row indices) for one epoch; every rank gets the same number of batches.

    All ranks draw the same global order from (seed, epoch), pad it by wrapping to a multiple of
    batch_size x world size (as DistributedSampler does: DDP hangs if one rank runs an extra step),
    sort rows by length within pools of POOL_BATCHES batches so little padding is computed, shuffle
    the global batches, and take rank r's slice of each.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    global_size = batch_size * world.size
    target = math.ceil(len(order) / global_size) * global_size
    order = (order * math.ceil(target / len(order)))[:target]
    pool = global_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        rows = sorted(order[start : start + pool], key=lengths.__getitem__)
        batches += [rows[i : i + global_size] for i in range(0, len(rows), global_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i][world.rank :: world.size] for i in shuffled]


def _teacher(job: dict):
    """The frozen teacher, only when the losses read its hidden states or attention maps."""
    if not LossOptions(**_loss_fields(job)).uses_internals:
        return None
    return frozen_teacher(job)


def frozen_teacher(job: dict):
    """The job's teacher, in eval mode and without gradients."""
    from edgecompress.intake.model import load_checkpoint

    teacher = load_checkpoint(Path(job["transfer"]["teacher"])).module.hf_model.eval()
    return teacher.requires_grad_(False)


def _loss_fields(job: dict) -> dict:
    fields = dict(job["losses"])
    fields["layer_map"] = tuple(fields["layer_map"]) if fields.get("layer_map") else None
    return fields


def _objective(work: Path, job: dict, teacher):
    """Student (from init.pt) plus, for a narrower transformer's hidden-state loss, a learned projection."""
    import torch

    from edgecompress.distill.losses import objective

    init = torch.load(work / INIT, weights_only=True)
    squeezing = None
    if job["kind"] == "squeezed":  # its weights are maps of the teacher's, whatever the losses read
        squeezing = teacher if teacher is not None else frozen_teacher(job)
    student = new_student(job["kind"], init["config"], teacher=squeezing)
    student.load_state_dict(init["state"])
    losses = LossOptions(**_loss_fields(job))
    projection = None
    if losses.hidden_weight > 0 and init["config"]["hidden_size"] != teacher.config.hidden_size:
        projection = torch.nn.Linear(init["config"]["hidden_size"], teacher.config.hidden_size)
    return objective(student, losses, transformer=job["kind"] in TRANSFORMERS, projection=projection)


def new_student(kind: str, config: dict, *, teacher=None):
    """A student module of `kind`: fresh weights, or for "squeezed" the maps of `teacher`'s weights."""
    if kind == "transformer":
        from edgecompress.distill.small_bert import new_transformer_student

        return new_transformer_student(config)
    if kind == "squeezed":
        from edgecompress.distill.squeeze import squeezed_student

        return squeezed_student(config, teacher)
    from edgecompress.distill.students import build_student

    return build_student(config)


def _optimizer(model, options: TrainOptions, total_steps: int):
    """AdamW with linear warmup then linear decay to zero."""
    import torch

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=options.weight_decay
    )
    warmup = int(options.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _run_epoch(trainable, optimizer, scheduler, data, batches, teacher, progress: _Progress) -> float:
    import torch

    trainable.train()
    total = 0.0
    for rows in batches:
        batch = _collate(data, rows)
        internals = None
        if teacher is not None:
            with torch.no_grad():
                internals = teacher(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    **architecture_of(teacher).zero_inputs_for(batch["input_ids"]),
                    output_hidden_states=True,
                    output_attentions=True,
                )
        loss = trainable(
            batch["input_ids"], batch["attention_mask"], batch["teacher_logits"], batch["labels"], internals
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        total += loss.item()
        progress.step(loss.item())
    return total / max(1, len(batches))


def _collate(data: dict, rows: list[int]) -> dict:
    """The rows of a batch, trimmed to its longest text: padding is most of a 64-token row."""
    import torch

    index = torch.tensor(rows)
    mask = data["attention_mask"][index]
    width = max(1, int(mask.sum(dim=1).max()))
    return {
        "input_ids": data["input_ids"][index, :width],
        "attention_mask": mask[:, :width],
        "teacher_logits": data["teacher_logits"][index],
        "labels": data["labels"][index],
    }


class _Progress:
    """Rank 0 logs step/total, mean loss since its last line, elapsed time and ETA."""

    def __init__(self, total: int, done: int, prior_seconds: float, active: bool, every: int):
        self.total, self.done, self.start_step = total, done, done
        self.prior, self.start = prior_seconds, time.monotonic()
        self.active, self.every = active, every
        self.losses: list[float] = []

    def elapsed(self) -> float:
        return self.prior + time.monotonic() - self.start

    def step(self, loss: float) -> None:
        self.done += 1
        self.losses.append(loss)
        if not self.active or (self.done % self.every and self.done != self.total):
            return
        session = time.monotonic() - self.start
        eta = session / (self.done - self.start_step) * (self.total - self.done)
        log.info(
            "step %d/%d  loss %.4f  elapsed %s  eta %s",
            self.done,
            self.total,
            sum(self.losses) / len(self.losses),
            _clock(self.elapsed()),
            _clock(eta),
        )
        self.losses.clear()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _save_checkpoint(work: Path, model, optimizer, scheduler, state: dict, world: World) -> None:
    import torch

    rng = world.gather(torch.get_rng_state())
    if world.rank == 0:
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "world_size": world.size,
                **state,
            },
            work / CHECKPOINT,
        )


def _resume(work: Path, model, optimizer, scheduler, world: World) -> dict:
    """Progress so far: restored from checkpoint.pt when there is one, else a fresh start."""
    import torch

    path = work / CHECKPOINT
    if not path.is_file():
        return {"epoch": 0, "step": 0, "train_seconds": 0.0, "epoch_losses": []}
    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved.pop("model"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    rng, size = saved.pop("rng"), saved.pop("world_size")
    if size == world.size:
        torch.set_rng_state(rng[world.rank])
    elif world.rank == 0:
        log.warning(
            "checkpoint written by %d processes, resuming with %d: dropout draws differ from an uninterrupted run",
            size,
            world.size,
        )
    if world.rank == 0:
        log.info("resuming after epoch %d (step %d) from %s", saved["epoch"], saved["step"], path)
    return saved


def state_digest(state: dict) -> str:
    """sha256 over every tensor's name and bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _finish(work: Path, model, world: World, record: dict) -> None:
    """Check that DDP kept every replica identical, then publish the student's weights (rank 0)."""
    student = model.student
    # A squeezed student ships the weights its maps compute, not the maps.
    state = student.shipped_state() if hasattr(student, "shipped_state") else student.state_dict()
    digests = world.gather(state_digest(state))
    if len(set(digests)) != 1:
        raise InternalError(f"training processes ended with different weights (digests {digests})")
    if world.rank == 0:
        _atomic_save({"student": state, "record": {**record, "rank_weight_digests": digests}}, work / TRAINED)


def _atomic_save(value, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point for torchrun: train the prepared job in WORK_DIR as one rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="folder prepared by edgecompress.distill.run")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING, format=f"[rank {rank}] %(message)s")
    try:
        train(args.work_dir)
    except EdgecompressError as exc:
        log.error("error: %s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
