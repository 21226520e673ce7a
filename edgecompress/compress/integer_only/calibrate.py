"""Calibration: run the float model on calibration texts and record the range of every quantized activation.

A range is max |x| over real tokens (padding rows are left out: their activations never reach the
output). Inputs of Linear layers are ranged per channel (a vector: BERT's outlier channels are few and
fixed, see `model.smoothed_linear`). With `percentile` < 100, the other int8 points (Q, K, V) take
that percentile of |x| per batch instead (the max over batches); wider points always take the max.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from edgecompress.errors import UserError

# Activation points, by module path suffix -> (what is observed, point name). "in" is the module's
# first input, "out" its output.
LAYER_POINTS = (
    ("attention.self.query", "in", "x_attn"),
    ("attention.self.query", "out", "q"),
    ("attention.self.key", "out", "k"),
    ("attention.self.value", "out", "v"),
    ("attention.output.dense", "in", "ctx"),
    ("attention.output.LayerNorm", "in", "res1"),
    ("attention.output.LayerNorm", "out", "h1"),
    ("intermediate.dense", "in", "x_ffn"),
    ("intermediate.dense", "out", "gelu_in"),
    ("output.dense", "in", "gelu_out"),
    ("output.LayerNorm", "in", "res2"),
    ("output.LayerNorm", "out", "h2"),
)
MODEL_POINTS = (
    ("bert.embeddings.LayerNorm", "out", "emb"),
    ("bert.pooler.dense", "in", "x_pool"),
    ("bert.pooler.dense", "out", "tanh_in"),
    ("classifier", "out", "logits"),
)
INT8_POINTS = {"q", "k", "v"}
# Inputs of a Linear: ranged per channel (a vector), for the smoothing in `model.py`.
CHANNEL_POINTS = {"x_attn", "ctx", "x_ffn", "gelu_out", "x_pool"}
BATCH_SIZE = 16


class RangeObserver:
    """Keeps, per point name, the largest |x| (or per-batch percentile of |x|) seen on real tokens."""

    def __init__(self, percentile: float):
        self.percentile = percentile
        self.ranges: dict = {}
        self.token_mask: torch.Tensor | None = None  # [B, S] bool of the batch being run

    def observe(self, name: str, value: torch.Tensor) -> None:
        value = value.detach()
        if self.token_mask is not None and value.dim() == 3 and value.shape[:2] == self.token_mask.shape:
            value = value[self.token_mask]
        magnitude = value.abs().double()
        if not torch.isfinite(magnitude).all():
            raise UserError(
                f"calibration produced NaN or inf at activation '{name}'",
                expected="a model whose float outputs are finite on the calibration texts",
                hint="check the checkpoint's weights and the --calibration/--data texts",
            )
        point = name.rsplit(".", 1)[-1]
        if point in CHANNEL_POINTS:
            found = magnitude.reshape(-1, magnitude.shape[-1]).amax(dim=0).numpy()
            self.ranges[name] = np.maximum(self.ranges.get(name, 0.0), found)
            return
        magnitude = magnitude.flatten()
        if point in INT8_POINTS and self.percentile < 100 and magnitude.numel() > 1:
            sample = magnitude if magnitude.numel() <= 1 << 20 else magnitude[:: magnitude.numel() // (1 << 20) + 1]
            found = float(np.percentile(sample.numpy(), self.percentile))
        else:
            found = float(magnitude.max()) if magnitude.numel() else 0.0
        self.ranges[name] = max(self.ranges.get(name, 0.0), found)


@contextlib.contextmanager
def _hooks(model, observer: RangeObserver) -> Iterator[None]:
    modules = dict(model.named_modules())
    points = [(path, side, name) for path, side, name in MODEL_POINTS]
    for index in range(len(model.bert.encoder.layer)):
        points += [
            (f"bert.encoder.layer.{index}.{path}", side, f"layer{index}.{name}") for path, side, name in LAYER_POINTS
        ]

    def hook(name: str, side: str):
        def record(module, args, output):
            observer.observe(name, args[0] if side == "in" else output)

        return record

    handles = [modules[path].register_forward_hook(hook(name, side)) for path, side, name in points]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def calibrate(model, feeds: dict, *, rows: int, percentile: float) -> dict[str, float]:
    """Ranges of every point of a BertForSequenceClassification on the first `rows` calibration texts."""
    observer = RangeObserver(percentile)
    ids, mask, types = (
        torch.from_numpy(np.asarray(feeds[n][:rows])) for n in ("input_ids", "attention_mask", "token_type_ids")
    )
    model.eval()
    with torch.no_grad(), _hooks(model, observer):
        for start in range(0, len(ids), BATCH_SIZE):
            batch_mask = mask[start : start + BATCH_SIZE]
            width = max(int(batch_mask.sum(1).max()), 1)  # trailing padding changes nothing: trim it
            observer.token_mask = batch_mask[:, :width] > 0
            model(
                input_ids=ids[start : start + BATCH_SIZE, :width],
                attention_mask=batch_mask[:, :width],
                token_type_ids=types[start : start + BATCH_SIZE, :width],
            )
    return {
        name: np.maximum(value, 1e-6) if isinstance(value, np.ndarray) else max(value, 1e-6)
        for name, value in observer.ranges.items()
    }
