"""Calibration: run the float model on calibration texts and record the range of every quantized activation.

The activation points are named per part (LAYER_POINTS, MODEL_POINTS); the modules behind them are found
through the model's architecture, so every family that opts in to integer-only is calibrated alike.

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

from edgecompress.architectures import architecture_of
from edgecompress.errors import UserError

# Activation points of one encoder layer: (the Architecture part, what is observed, point name). "in" is
# the module's first input, "out" its output. The parts are found through the model's family.
LAYER_POINTS = (
    ("query", "in", "x_attn"),
    ("query", "out", "q"),
    ("key", "out", "k"),
    ("value", "out", "v"),
    ("attention_output", "in", "ctx"),
    ("attention_norm", "in", "res1"),
    ("attention_norm", "out", "h1"),
    ("ffn_in", "in", "x_ffn"),
    ("ffn_in", "out", "gelu_in"),
    ("ffn_out", "in", "gelu_out"),
    ("ffn_norm", "in", "res2"),
    ("ffn_norm", "out", "h2"),
)
# Of the whole model: the embeddings' LayerNorm, the head's dense layer (its input and the activation's
# input) and its output layer.
MODEL_POINTS = (
    ("embeddings_norm", "out", "emb"),
    ("head_dense", "in", "x_pool"),
    ("head_dense", "out", "head_act_in"),
    ("head_output", "out", "logits"),
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


def _layer_parts(family, layer) -> dict:
    attention = family.attention(layer)
    ffn_in, ffn_out = family.ffn(layer)
    return {
        "query": attention.query,
        "key": attention.key,
        "value": attention.value,
        "attention_output": attention.output,
        "attention_norm": layer.get_submodule(family.attention_norm_path),
        "ffn_in": ffn_in,
        "ffn_out": ffn_out,
        "ffn_norm": layer.get_submodule(family.ffn_norm_path),
    }


def _model_parts(family, model) -> dict:
    head_dense, head_output = family.head(model)
    norm = family.encoder_part(model, family.embeddings_norm_path)
    return {"embeddings_norm": norm, "head_dense": head_dense, "head_output": head_output}


@contextlib.contextmanager
def _hooks(model, family, observer: RangeObserver) -> Iterator[None]:
    parts = _model_parts(family, model)
    points = [(parts[part], side, name) for part, side, name in MODEL_POINTS]
    for index, layer in enumerate(family.layers(model)):
        parts = _layer_parts(family, layer)
        points += [(parts[part], side, f"layer{index}.{name}") for part, side, name in LAYER_POINTS]

    def hook(name: str, side: str):
        def record(module, args, output):
            observer.observe(name, args[0] if side == "in" else output)

        return record

    handles = [module.register_forward_hook(hook(name, side)) for module, side, name in points]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def calibrate(model, feeds: dict, *, rows: int, percentile: float) -> dict[str, float]:
    """Ranges of every point of a sequence classifier (of a family that opts in to integer-only) on the first
    `rows` calibration texts; `feeds` hold the inputs the family takes."""
    family = architecture_of(model)
    observer = RangeObserver(percentile)
    inputs = {name: torch.from_numpy(np.asarray(feeds[name][:rows])) for name in family.input_names}
    mask = inputs["attention_mask"]
    model.eval()
    with torch.no_grad(), _hooks(model, family, observer):
        for start in range(0, len(mask), BATCH_SIZE):
            batch_mask = mask[start : start + BATCH_SIZE]
            width = max(int(batch_mask.sum(1).max()), 1)  # trailing padding changes nothing: trim it
            observer.token_mask = batch_mask[:, :width] > 0
            batch = {name: value[start : start + BATCH_SIZE, :width] for name, value in inputs.items()}
            zeros = {name: torch.zeros_like(batch["input_ids"]) for name in family.zero_inputs}
            model(**batch, **zeros)
    return {
        name: np.maximum(value, 1e-6) if isinstance(value, np.ndarray) else max(value, 1e-6)
        for name, value in observer.ranges.items()
    }
