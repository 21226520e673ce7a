"""Probe: how the granularity of run-time int8 activation quantization moves a BERT teacher's predictions.

Why this exists: ONNX Runtime's fast dynamic int8 kernels (DynamicQuantizeMatMul, QAttention) quantize
each activation per tensor; LiteRT's hybrid FULLY_CONNECTED (XNNPACK "qd8") quantizes per row. The
`.tflite` must agree with the ONNX Runtime artifact on >= 99% of texts, so backends/tflite_dynamic.py
adds guard columns that make LiteRT quantize per tensor too, at a measured ~20% of its int8 run time.
This probe shows where the per-tensor loss comes from and what each alternative would buy, without
building either runtime's graph: the encoder's Linear layers run in torch with ORT's int8 weights
(symmetric, per output channel) and fake-quantized inputs, per mode:

  float       no quantization (the reference)
  per tensor  ONNX Runtime's DynamicQuantizeLinear: uint8, range [min(0, min x), max(0, max x)]
  per row     LiteRT/XNNPACK hybrid: asymmetric int8 per row (token)
  cls apart   per tensor, but the FFN inputs quantize row 0 ([CLS]) on its own: what a graph that
              slices the [CLS] row out of each FFN would compute on ONNX Runtime

It prints, per Linear input, the median per-row max |x| by token kind ([CLS], [SEP], padding, text),
then how often each pair of modes predicts the same label. Embeddings and attention scores stay float
in every mode, so "per tensor" lands near, not on, the real ORT file's agreement.

    python tools/probe_activation_quant.py [--data test.csv --seq-len 128 --limit N --threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgecompress.intake.data import label_ids, load_dataset  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402

MODES = ("float", "per tensor", "per row", "cls apart")
FFN_INPUTS = ("intermediate.dense", "output.dense")  # BERT's FFN: `attention.output.dense` is not matched
TOKEN_KINDS = ("cls", "sep", "pad", "text")


def ort_per_tensor(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then back to float: uint8, scale (hi - lo) / 255, zero point rounded."""
    lo, hi = min(0.0, x.min().item()), max(0.0, x.max().item())
    scale = (hi - lo) / 255 or 1.0
    zero = float(np.clip(round(-lo / scale), 0, 255))
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def litert_per_row(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric int8 per row over the last axis, 0 inside every row's range (XNNPACK's qd8 convert)."""
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero = torch.round(-128 - lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


def cls_apart(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([ort_per_tensor(x[:, :1]), ort_per_tensor(x[:, 1:])], dim=1)


def fake_quantize(mode: str, name: str, x: torch.Tensor) -> torch.Tensor:
    if mode == "per row":
        return litert_per_row(x)
    if mode == "cls apart" and name.endswith(FFN_INPUTS) and "attention" not in name:
        return cls_apart(x)
    return ort_per_tensor(x)


def int8_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's quantize_dynamic weights (QInt8, per_channel): symmetric, max |w| / 127 per row."""
    scale = weight.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(weight / scale).clamp(-127, 127) * scale


class Probe:
    """The teacher with its encoder Linears switchable between modes, recording input row ranges."""

    def __init__(self, model, token_kinds: dict[str, torch.Tensor]) -> None:
        self.model, self.mode, self.token_kinds = model, "float", token_kinds
        self.row_max: dict[str, dict[str, list[np.ndarray]]] = {}
        for name, linear in model.named_modules():
            if isinstance(linear, torch.nn.Linear) and ".encoder." in f".{name}":
                linear.forward = self._forward(name, linear, int8_per_channel(linear.weight.data))

    def _forward(self, name: str, linear, int8_weight: torch.Tensor):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.mode == "float":
                self._record(name, x)
                return torch.nn.functional.linear(x, linear.weight, linear.bias)
            return torch.nn.functional.linear(fake_quantize(self.mode, name, x), int8_weight, linear.bias)

        return forward

    def _record(self, name: str, x: torch.Tensor) -> None:
        per_row = x.abs().amax(-1)[0].numpy()
        kinds = self.row_max.setdefault(name, {kind: [] for kind in TOKEN_KINDS})
        for kind in TOKEN_KINDS:
            kinds[kind].append(per_row[self.token_kinds[kind][self.row]])

    def predict(self, mode: str, encoded: dict[str, torch.Tensor]) -> np.ndarray:
        self.mode, labels = mode, []
        with torch.no_grad():
            for self.row in range(len(encoded["input_ids"])):
                one = {key: value[self.row : self.row + 1] for key, value in encoded.items()}
                labels.append(int(self.model(**one).logits[0].argmax()))
        return np.array(labels)


def token_kinds(tokenizer, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    kinds = {
        "cls": input_ids == tokenizer.cls_token_id,
        "sep": input_ids == tokenizer.sep_token_id,
        "pad": input_ids == tokenizer.pad_token_id,
    }
    kinds["text"] = ~(kinds["cls"] | kinds["sep"] | kinds["pad"])
    return {kind: mask.numpy() for kind, mask in kinds.items()}


def print_row_ranges(row_max: dict[str, dict[str, list[np.ndarray]]]) -> None:
    print("| Linear input | " + " | ".join(f"{kind} median max|x|" for kind in TOKEN_KINDS) + " |")
    print("|---" * (len(TOKEN_KINDS) + 1) + "|")
    for name, kinds in row_max.items():
        if name.endswith(("self.key", "self.value")):  # the same input as self.query
            continue
        medians = [np.median(np.concatenate(kinds[kind])) if kinds[kind] else float("nan") for kind in TOKEN_KINDS]
        label = name.removeprefix("bert.encoder.").replace("self.query", "self.query/key/value")
        print(f"| {label} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")


def print_agreement(labels: dict[str, np.ndarray], truth: np.ndarray) -> None:
    print("\n| mode | " + " | ".join(f"same label as {other}" for other in labels) + " | accuracy |")
    print("|---" * (len(labels) + 2) + "|")
    for mode, got in labels.items():
        same = " | ".join(f"{np.mean(got == other):.2%}" for other in labels.values())
        print(f"| {mode} | {same} | {np.mean(got == truth):.2%} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="HF checkpoint folder (default: the Rotten Tomatoes teacher)")
    parser.add_argument("--data", type=Path, help="labelled texts (default: Rotten Tomatoes test split)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--limit", type=int, help="first N texts only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    source = args.model or train_teacher.teacher_dir()
    dataset = load_dataset(args.data or example_assets.rotten_tomatoes_dir() / "test.csv", require_labels=True)
    texts = dataset.texts[: args.limit]
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=True).eval()
    encoded = tokenizer(texts, padding="max_length", max_length=args.seq_len, truncation=True, return_tensors="pt")
    probe = Probe(model, token_kinds(tokenizer, encoded["input_ids"]))
    labels = {}
    for mode in MODES:
        print(f"running {mode} on {len(texts)} texts", file=sys.stderr, flush=True)
        labels[mode] = probe.predict(mode, encoded)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    truth = label_ids(dataset, names)[: len(texts)]
    print(f"{source.name}, {len(texts)} texts of {(args.data or Path('test.csv')).name}, seq_len {args.seq_len}\n")
    print_row_ranges(probe.row_max)
    print_agreement(labels, truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
