"""Quantization-aware fine-tuning of the float weights under the integer model's own quantizers.

Before -> After: float BERT (weights W) -> float BERT (weights W', fine-tuned while it ran with):
- every Linear input rounded to int8 on the per-channel steps `model.smoothed_linears` uses (fixed,
  from calibration), and its weight folded with those steps and rounded per output row, as shipped;
- Q, K and V rounded to int8 at their calibrated per-tensor steps; the head's activation output at the
  step its output layer reads (tanh: 1/127; ReLU: its input's int8 step);
- embedding tables rounded per hidden channel (each on its own: the integer model rounds RoBERTa's position
  table with type row 0 added, a difference below one step); GELU replaced by I-BERT's i-erf polynomial.
Rounding passes gradients straight through inside the range and blocks them where it clips (STE).
Not simulated: i-softmax's 8-bit output, i-LayerNorm, i-exp and the dyadic requantizations (each
below the int8 rounding). The loss is `_recovery`'s distillation from the untouched float model (KL +
CE on labels + hidden-state MSE), with its checkpoints, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from edgecompress.architectures import architecture_of
from edgecompress.compress import _recovery
from edgecompress.compress._taskdata import task_data, training_seq_len
from edgecompress.compress.integer_only.kernels import GELU_A, GELU_B
from edgecompress.compress.integer_only.model import head_input_step
from edgecompress.intake.reference import ReferenceModule

INT8 = 127


def fake_quant(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Round to the symmetric int8 grid of `step` and back; the gradient passes where x was not clipped."""
    limit = step * INT8
    clipped = torch.maximum(torch.minimum(x, limit), -limit)
    return clipped + (torch.round(clipped / step) * step - clipped).detach()


class FoldedWeight(torch.nn.Module):
    """W -> the weight the integer Linear computes with: round(W diag(t) per row) diag(t)^-1."""

    def __init__(self, input_step: torch.Tensor):
        super().__init__()
        self.register_buffer("input_step", input_step)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        folded = weight * self.input_step
        row_step = folded.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8
        return fake_quant(folded, row_step) / self.input_step


class ChannelTable(torch.nn.Module):
    """An embedding table rounded to int8 per hidden channel (column), as `model._int8_table` does."""

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        return fake_quant(table, table.detach().abs().amax(dim=0).clamp(min=1e-8) / INT8)


def poly_gelu(x: torch.Tensor) -> torch.Tensor:
    """x (1 + erf(x / sqrt 2)) / 2 with erf(u) ~ sign(u) [a (min(|u|, -b) + b)^2 + 1] (I-BERT)."""
    u = x / math.sqrt(2.0)
    erf = torch.sign(u) * (GELU_A * (torch.clamp(u.abs(), max=-GELU_B) + GELU_B) ** 2 + 1)
    return x * 0.5 * (1 + erf)


@contextlib.contextmanager
def fake_quantized(model, ranges: dict) -> Iterator[None]:
    """Run `model` (a sequence classifier of a family that opts in) under the integer model's quantizers, its
    parts found through the architecture seam, then undo them."""
    handles, parametrized = [], []

    def linear(module, input_step: torch.Tensor) -> None:
        parametrize.register_parametrization(module, "weight", FoldedWeight(input_step))
        parametrized.append(module)
        handles.append(module.register_forward_pre_hook(lambda m, args: (fake_quant(args[0], input_step),)))

    def channel_step(name: str) -> torch.Tensor:
        return torch.as_tensor(ranges[name], dtype=torch.float32) / INT8

    family = architecture_of(model)
    paths = (family.word_embeddings_path, family.position_embeddings_path, family.token_type_embeddings_path)
    for table in (family.encoder_part(model, path) for path in paths if path):
        parametrize.register_parametrization(table, "weight", ChannelTable())
        parametrized.append(table)
    for index, layer in enumerate(family.layers(model)):
        prefix, attention = f"layer{index}.", family.attention(layer)
        for name, module in zip("qkv", (attention.query, attention.key, attention.value)):
            linear(module, channel_step(prefix + "x_attn"))
            step = torch.tensor(ranges[prefix + name] / INT8)
            handles.append(module.register_forward_hook(lambda m, args, out, step=step: fake_quant(out, step)))
        ffn_in, ffn_out = family.ffn(layer)
        linear(attention.output, channel_step(prefix + "ctx"))
        linear(ffn_in, channel_step(prefix + "x_ffn"))
        linear(ffn_out, channel_step(prefix + "gelu_out"))
        activation = layer.get_submodule(family.ffn_activation_path)
        handles.append(activation.register_forward_hook(lambda m, args, out: poly_gelu(args[0])))
    head_dense, head_output = family.head(model)
    linear(head_dense, channel_step("x_pool"))
    head_step = head_input_step(family.head_activation, ranges)
    linear(head_output, torch.full((head_output.in_features,), head_step, dtype=torch.float32))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in parametrized:  # keep the trained float weights, not their rounded view
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def quantization_aware_training(model, float_model, bundle, ctx, ranges: dict, options) -> dict:
    """Fine-tune `model` in place under fake quantization, distilled from `float_model`."""
    data = task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx))
    recovery = _recovery.Recovery(
        epochs=options.qat_epochs,
        lr=options.lr,
        batch_size=options.batch_size,
        temperature=options.temperature,
        hidden_weight=1.0,
    )
    family = architecture_of(model)
    student, teacher = (
        ReferenceModule(m, pooled=False, input_names=family.input_names, zero_inputs=family.zero_inputs)
        for m in (model, float_model)
    )
    with fake_quantized(model, ranges):
        digest = _recovery.training_digest(student, teacher, data, recovery, options.seed)
        folder = Path(options.work_dir) if options.work_dir else _recovery.work_dir("integer-only", digest)
        result = _recovery.recover(
            student, teacher, data, recovery, seed=options.seed, label="integer_only QAT", checkpoint_dir=folder
        )
    return {key: result[key] for key in ("steps", "seconds", "loss_first", "loss_last") if key in result}
