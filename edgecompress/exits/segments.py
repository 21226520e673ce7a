"""The model as segments, one ONNX file per encoder layer, and their check against torch.

Segment 0 takes the token inputs (input_ids, attention_mask[, token_type_ids]); segment k > 0 takes
`hidden_in` (the previous segment's `hidden`) and `attention_mask`. Every segment but the last returns
`hidden` [batch, seq, width] and `logits` (its ramp on the mean of the token rows); the last returns only `logits`, from
the model's own head. Each layer's weights live in exactly one file (the embeddings in segment 0, the head in the
last), so the files together hold the model plus its ramps once: nothing is duplicated across files (except
after `share_layers`: each ONNX file then holds its own copy of a shared layer; the .tflite stores it once).
"""

from __future__ import annotations

import numpy as np
import torch

from edgecompress.errors import VerificationError
from edgecompress.exits import HIDDEN_IN, HIDDEN_OUT, LOGITS
from edgecompress.exits.ramps import additive_mask, mean_pool
from edgecompress.lower import torchscript_to_onnx


class Segment(torch.nn.Module):
    """Layer `index` of the model (with the embeddings before it when index is 0) and its exit."""

    def __init__(self, hf_model, architecture, index: int, ramp, input_names: tuple[str, ...]):
        super().__init__()
        self.hf_model, self.architecture, self.index, self.ramp = hf_model, architecture, index, ramp
        self.layer = architecture.layers(hf_model)[index]
        self.last = ramp is None
        self.input_names = input_names if index == 0 else (HIDDEN_IN, "attention_mask")
        self.output_names = (LOGITS,) if self.last else (HIDDEN_OUT, LOGITS)

    def forward(self, first, attention_mask, *rest):
        if self.index == 0:
            token_types = rest[0] if rest else torch.zeros_like(first)
            first = self.architecture.embed(self.hf_model, first, token_types)
        hidden = self.architecture.run_layer(self.layer, first, additive_mask(attention_mask))
        if self.last:
            return self.architecture.classify(self.hf_model, hidden)
        return hidden, self.ramp(mean_pool(hidden, attention_mask))


def segments(bundle) -> list[Segment]:
    exits = bundle.exits
    architecture, hf_model = bundle.architecture, bundle.module.hf_model
    ramps = [*exits.ramps, None]
    return [Segment(hf_model, architecture, k, ramp, tuple(bundle.input_names)) for k, ramp in enumerate(ramps)]


def export_segment(segment: Segment, sample: dict[str, np.ndarray]):
    """One segment as an ONNX graph with dynamic batch and sequence axes (the TorchScript exporter, as lower.py)."""
    args = tuple(torch.from_numpy(sample[name]) for name in segment.input_names)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in segment.input_names}
    axes[LOGITS] = {0: "batch"}
    if not segment.last:
        axes[HIDDEN_OUT] = {0: "batch", 1: "sequence"}
    props = {"early_exit_segment": str(segment.index)}
    return torchscript_to_onnx(segment.eval(), args, segment.input_names, segment.output_names, axes, props)


def torch_chain(parts: list[Segment], feeds: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    """[exits, texts, classes]: every exit's logits in torch, the segments chained as the app chains them."""
    return _chain(lambda k, inputs: _torch_run(parts[k], inputs), len(parts), feeds, parts[0].input_names, batch_size)


def ort_chain(sessions, feeds: dict[str, np.ndarray], input_names, batch_size: int = 32) -> np.ndarray:
    """The same with ONNX Runtime sessions, each fed the previous session's own `hidden` output."""

    def run(k, inputs):
        names = [o.name for o in sessions[k].get_outputs()]
        return dict(zip(names, sessions[k].run(names, inputs)))

    return _chain(run, len(sessions), feeds, input_names, batch_size)


def _torch_run(segment: Segment, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = segment(*(torch.from_numpy(inputs[name]) for name in segment.input_names))
    out = out if isinstance(out, tuple) else (out,)
    return {name: value.numpy() for name, value in zip(segment.output_names, out)}


def _chain(run, count: int, feeds, input_names, batch_size: int) -> np.ndarray:
    rows = len(feeds["attention_mask"])
    per_exit: list[list[np.ndarray]] = [[] for _ in range(count)]
    for start in range(0, rows, batch_size):
        inputs = {name: feeds[name][start : start + batch_size] for name in input_names}
        mask = inputs["attention_mask"]
        for k in range(count):
            out = run(k, inputs)
            per_exit[k].append(out[LOGITS])
            if HIDDEN_OUT in out:
                inputs = {HIDDEN_IN: out[HIDDEN_OUT], "attention_mask": mask}
    return np.stack([np.concatenate(chunks) for chunks in per_exit]).astype(np.float32)


def check_segments(
    expected: np.ndarray, found: np.ndarray, reference: np.ndarray, *, task, feeds, lossy: bool, atol: float, what: str
) -> dict:
    """Every exit of `found` against `expected` (float: within `atol` with the same predictions; quantized: the
    task's agreement bar, as verification holds any lossy artifact to), and the last exit against the whole
    model's `reference` likewise; a VerificationError names the first that fails. `what` names the chain."""
    from edgecompress.verify.evaluate import compare

    per_exit = [
        compare(expected[k], found[k], task=task, feeds=feeds, lossy=lossy, atol=atol) for k in range(len(found))
    ]
    for k, parity in enumerate(per_exit):
        if not parity.passed:
            raise VerificationError(
                f"early-exit segment {k} ({what}) differs: max |diff| {parity.max_abs_diff:.3g} "
                f"({'lossy' if lossy else f'tolerance {atol:g}'}), same predictions on "
                f"{parity.prediction_agreement:.2%} of {found.shape[1]} texts (this is a bug; please report it)"
            )
    last = compare(reference, found[-1], task=task, feeds=feeds, lossy=lossy, atol=atol)
    if not last.passed:
        raise VerificationError(
            f"early-exit segments chained ({what}) differ from the whole model at the last exit: max |diff| "
            f"{last.max_abs_diff:.3g}, same predictions on {last.prediction_agreement:.2%} "
            f"({'lossy' if lossy else f'tolerance {atol:g}'}; this is a bug; please report it)"
        )
    return {
        "max_abs_diff_per_exit": [p.max_abs_diff for p in per_exit],
        "agreement_per_exit": [p.prediction_agreement for p in per_exit],
        "last_exit_vs_model": last.max_abs_diff,
        "last_exit_agreement_with_model": last.prediction_agreement,
        "tolerance": None if lossy else atol,
        "lossy": lossy,
    }
