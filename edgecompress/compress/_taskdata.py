"""Labelled training texts (`--train-data`) -> torch batches, for importance scores and recovery training.

A helper of the compress passes: it registers no pass. Texts are tokenized once without padding and
each batch is padded to its own longest text: Rotten Tomatoes snippets average ~26 word pieces, so
padding every batch to the device's seq_len would spend most of the compute on padding.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from edgecompress.intake.data import label_ids
from edgecompress.intake.model import CLASSIFICATION

# Batches per length-sorted pool when shuffling: lengths are grouped, yet batches differ per epoch.
BUCKET_POOL = 50


@dataclass
class Batch:
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, token_type_ids
    labels: torch.Tensor | None


@dataclass
class TaskData:
    """Tokenized texts (unpadded) and their label ids; None labels for sentence encoders."""

    ids: list[list[int]]
    labels: list[int] | None
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int, *, seed: int | None = None) -> Iterator[Batch]:
        """Length-sorted batches when `seed` is None (scoring); bucketed random batches otherwise (training)."""
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        if seed is None:
            groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        else:
            groups = bucketed_batches([len(ids) for ids in self.ids], batch_size, random.Random(seed), order=order)
        for group in groups:
            yield self._collate(group)

    def _collate(self, rows: list[int]) -> Batch:
        width = max(len(self.ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            input_ids[row, : len(self.ids[i])] = torch.tensor(self.ids[i])
            mask[row, : len(self.ids[i])] = 1
        labels = None if self.labels is None else torch.tensor([self.labels[i] for i in rows])
        return Batch((input_ids, mask, torch.zeros_like(input_ids)), labels)


def bucketed_batches(
    lengths: list[int], batch_size: int, rng: random.Random, order: list[int] | None = None
) -> list[list[int]]:
    """Batches of row indices (of `order`, default all rows) with similar lengths, in random order.

    Texts are far shorter than seq_len, so padding every batch to seq_len would waste most compute.
    Sorting within random pools of BUCKET_POOL batches keeps padding low while batches still differ
    from epoch to epoch. tools/train_teacher.py batches the same way.
    """
    shuffled = list(range(len(lengths))) if order is None else order[:]
    rng.shuffle(shuffled)
    pool_size = batch_size * BUCKET_POOL
    groups = []
    for start in range(0, len(shuffled), pool_size):
        pool = sorted(shuffled[start : start + pool_size], key=lengths.__getitem__)
        groups += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    rng.shuffle(groups)
    return groups


def task_data(bundle, dataset, *, seq_len: int, limit: int | None = None, seed: int = 0) -> TaskData:
    """Tokenize `dataset` as the app will (truncated to `seq_len`); `limit` takes a seeded random subset."""
    rows = list(range(len(dataset)))
    if limit is not None and limit < len(rows):
        rows = sorted(random.Random(seed).sample(rows, limit))
    texts = [dataset.texts[i] for i in rows]
    ids = bundle.tokenizer(texts, truncation=True, max_length=seq_len)["input_ids"]
    labels = None
    if bundle.kind == CLASSIFICATION and dataset.labels is not None:
        all_labels = label_ids(dataset, bundle.labels)
        labels = [int(all_labels[i]) for i in rows]
    return TaskData(ids=ids, labels=labels, pad_id=bundle.tokenizer_settings.pad_token_id)


def training_seq_len(bundle, ctx) -> int:
    """The device's sequence length (what the app feeds), capped by what the model can take."""
    return min(ctx.seq_len or bundle.tokenizer_settings.max_length, bundle.tokenizer_settings.max_length)


def task_loss(module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of the classifier on the batch's labels: the loss pruning importance is measured on."""
    return torch.nn.functional.cross_entropy(module(*batch.inputs), batch.labels)


def mean_task_loss(module, data: TaskData, batch_size: int = 64) -> float:
    """Mean cross-entropy over all of `data`, in eval mode and without gradients."""
    module.eval()
    total = 0.0
    with torch.no_grad():
        for batch in data.batches(batch_size):
            total += task_loss(module, batch).item() * len(batch.labels)
    return total / len(data)
