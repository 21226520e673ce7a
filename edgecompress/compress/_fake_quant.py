"""Fake int8 quantization for training (Q8BERT, Zafrir et al. 2019). Registers no pass.

Before -> After (`wrap_encoder`, in place on a transformers encoder of any registered family):
    Linear(in, out)                -> QuantLinear: F.linear(fake_quant(x), fake_quant(W), b)
    word_embeddings Embedding(v, d) -> QuantEmbedding: lookup in fake_quant(table)
`unwrap_encoder` is the way back: plain Linear and Embedding modules holding the fine-tuned float weights.

Fake quantization rounds to the integer grid and back, so the forward pass sees int8 values while the
weights stay float. Rounding has no useful gradient; the straight-through estimator (Bengio et al. 2013)
passes the gradient unchanged inside the representable range and blocks it outside (where the value
was clipped, so a small change would not move the output).

What is simulated follows what `quantize_static` ships after `fuse_transformer` (onnxruntime 1.31):
- MatMul weights (attention output, FFN in and out): int8 symmetric per output channel, scale max|w|/127;
- Q, K and V: fused into one `Attention`, which becomes `QAttention`; ONNX Runtime quantizes its weight
  with reduce_range (grid -64..64, scale max|w|/64) and its input dynamically, from each call's own
  min/max (one text per call on the phone), so here the range is each text's own;
- other MatMul inputs: uint8 asymmetric per tensor, range [min(x, 0), max(x, 0)] as ONNX Runtime
  calibrates it. Differences: the range is an EMA of per-batch extremes tracked in training and frozen
  in eval (Q8BERT), where `quantize_static` takes the extremes over its calibration rows;
- the word-embedding table: `QEmbedLayerNormalization` stores it uint8 asymmetric per tensor. Position
  and token-type tables are quantized the same way in the graph but are small and left float here;
- pooler and classifier: left float by `keep_float` in the `qat` pass, because the graph keeps them
  float (they lower to `Gemm`, which `quantize_static` does not take; on MiniLM it quantized 6
  Attention, 1 EmbedLayerNormalization and 18 MatMul, the encoder's). `wrap_encoder` alone wraps them.
Not simulated: attention scores and softmax (QAttention computes them in float), LayerNorm, GELU, and
the sensitivity analysis of `quantize_static`, which may keep a node float that was trained as int8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.architectures import architecture_of

# EMA weight of the running range against each new batch's extremes (Q8BERT uses 0.9).
DEFAULT_MOMENTUM = 0.9
_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Grid:
    """An integer grid and how a float range is mapped onto it."""

    qmin: int
    qmax: int
    symmetric: bool  # range [-max|x|, max|x|], zero point in the middle; else [min(x, 0), max(x, 0)]

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1


INT8_SYMMETRIC = Grid(-127, 127, symmetric=True)  # MatMul weights in quantize_static (WeightSymmetric)
INT8_REDUCED = Grid(-64, 64, symmetric=True)  # QAttention weights: ONNX Runtime's reduce_range
UINT8 = Grid(0, 255, symmetric=False)  # activations, and QEmbedLayerNormalization tables


def fake_quantize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, grid: Grid) -> torch.Tensor:
    """x rounded onto `grid` spanning [low, high] (broadcast against x) and mapped back to float.

    Straight-through: d out / d x is 1 where x is inside the range and 0 where it was clipped.
    The range is treated as a constant (no gradient), as ONNX Runtime treats calibrated ranges.
    """
    scale, zero_point = scale_and_zero_point(low.detach(), high.detach(), grid)
    q = torch.clamp(x / scale + zero_point, grid.qmin, grid.qmax)
    q = q + (torch.round(q) - q).detach()
    return (q - zero_point) * scale


def scale_and_zero_point(low: torch.Tensor, high: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime's `compute_scale_zp`: the range always holds 0, so 0 is exact (padding, ReLU zeros)."""
    low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
    if grid.symmetric:
        high = torch.maximum(-low, high)
        low = -high
    scale = torch.clamp((high - low) / (grid.qmax - grid.qmin), min=_TINY)
    zero_point = torch.round(grid.qmin - low / scale)
    return scale, zero_point


def fake_quantize_weight(weight: torch.Tensor, grid: Grid, *, per_row: bool) -> torch.Tensor:
    """A weight on `grid`, with one range per output row (per channel) or one for the whole tensor."""
    if per_row:
        low, high = weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    else:
        low, high = weight.min(), weight.max()
    return fake_quantize(weight, low, high, grid)


class ActivationQuantizer(nn.Module):
    """Per-tensor uint8 fake quantization of an activation.

    Static (the default): the range is an EMA of each training batch's min and max, frozen in eval.
    Dynamic: each text's own min and max, as ONNX Runtime's run-time quantization of a batch-1 input.
    """

    def __init__(self, *, dynamic: bool = False, momentum: float = DEFAULT_MOMENTUM, grid: Grid = UINT8):
        super().__init__()
        self.dynamic, self.momentum, self.grid = dynamic, momentum, grid
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            dims = tuple(range(1, x.dim()))
            shape = (-1,) + (1,) * (x.dim() - 1)
            return fake_quantize(x, x.amin(dim=dims).reshape(shape), x.amax(dim=dims).reshape(shape), self.grid)
        if self.training:
            self._observe(x.detach())
        if self.batches == 0:  # never observed: nothing to quantize against yet
            return x
        return fake_quantize(x, self.low, self.high, self.grid)

    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min(), x.max()
        if self.batches == 0:
            self.low.copy_(low)
            self.high.copy_(high)
        else:
            self.low.mul_(self.momentum).add_(low, alpha=1 - self.momentum)
            self.high.mul_(self.momentum).add_(high, alpha=1 - self.momentum)
        self.batches += 1

    def extra_repr(self) -> str:
        kind = "dynamic" if self.dynamic else f"static, momentum {self.momentum}"
        return f"{kind}, grid {self.grid.qmin}..{self.grid.qmax}"


class QuantLinear(nn.Module):
    """A Linear whose input and weight are fake-quantized; holds the original Linear's parameters."""

    def __init__(self, linear: nn.Linear, *, weight_grid: Grid, input_quantizer: ActivationQuantizer):
        super().__init__()
        self.linear, self.weight_grid, self.input_quantizer = linear, weight_grid, input_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quantize_weight(self.linear.weight, self.weight_grid, per_row=True)
        return F.linear(self.input_quantizer(x), weight, self.linear.bias)

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize_weight(self.linear.weight.detach(), self.weight_grid, per_row=True)


class QuantEmbedding(nn.Module):
    """An Embedding looked up in its fake-quantized table (uint8 per tensor, as QEmbedLayerNormalization)."""

    def __init__(self, embedding: nn.Embedding, *, grid: Grid = UINT8):
        super().__init__()
        self.embedding, self.grid = embedding, grid

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Only the looked-up rows are rounded, with the whole table's range: the same values as rounding
        # the table first, without touching MiniLM's 11.7M entries on every step.
        table = self.embedding.weight
        rows = F.embedding(ids, table, self.embedding.padding_idx)
        return fake_quantize(rows, table.min(), table.max(), self.grid)

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize_weight(self.embedding.weight.detach(), self.grid, per_row=False)

    @property
    def weight(self) -> torch.Tensor:  # transformers reads the input embeddings' weight (tying, resizing)
        return self.embedding.weight


def wrap_encoder(model: nn.Module, *, momentum: float = DEFAULT_MOMENTUM, keep_float: tuple[str, ...] = ()) -> int:
    """Wrap every Linear and the word-embedding table of a transformers encoder (of any registered family) in
    place; returns the count.

    `keep_float` names Linear modules (as in `model.named_modules()`) to leave as they are. Q, K and V of
    one layer share one dynamic input quantizer: the fused QAttention quantizes its input once for all three.
    """
    count = 0
    architecture = architecture_of(model)
    for layer in architecture.layers(model):
        shared = ActivationQuantizer(dynamic=True)
        for path in (architecture.query_path, architecture.key_path, architecture.value_path):
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path)
            setattr(parent, name, QuantLinear(getattr(parent, name), weight_grid=INT8_REDUCED, input_quantizer=shared))
            count += 1
    kept = {id(model.get_submodule(name)) for name in keep_float}
    for parent, name, linear in _plain_linears(model):
        if id(linear) not in kept:
            setattr(
                parent,
                name,
                QuantLinear(linear, weight_grid=INT8_SYMMETRIC, input_quantizer=ActivationQuantizer(momentum=momentum)),
            )
            count += 1
    architecture.set_word_embeddings(model, QuantEmbedding(architecture.word_embeddings(model)))
    return count + 1


def unwrap_encoder(model: nn.Module, *, snap: bool = False) -> int:
    """Put the plain Linear and Embedding modules back, in place; returns how many were unwrapped.

    With `snap`, each weight is replaced by its fake-quantized value, so that quantizing it again on
    the same grid (as ONNX Runtime will) changes nothing.
    """
    count = 0
    for parent, name, wrapper in list(_wrappers(model)):
        inner = wrapper.linear if isinstance(wrapper, QuantLinear) else wrapper.embedding
        if snap:
            with torch.no_grad():
                inner.weight.copy_(wrapper.quantized_weight())
        setattr(parent, name, inner)
        count += 1
    return count


def wrapped_count(model: nn.Module) -> int:
    return sum(1 for _ in _wrappers(model))


def _plain_linears(model: nn.Module):
    """(parent, attribute, Linear) for every Linear not already inside a wrapper."""
    for parent in list(model.modules()):
        if isinstance(parent, QuantLinear):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                yield parent, name, child


def _wrappers(model: nn.Module):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (QuantLinear, QuantEmbedding)):
                yield parent, name, child
