"""The peer for tools/bench_tflite.py: convert a classifier checkpoint to `.tflite` with `litert-torch`.

Runs inside the peer environment only (`/work/venvs/litert-torch/bin/python`, built as the docstring of
tools/bench_tflite.py says), never in edgecompress's own: litert-torch pins its own converter, quantizer
and LiteRT. It does what a user following litert-torch's README would do with a BERT classifier:

    model = AutoModelForSequenceClassification.from_pretrained(CHECKPOINT, attn_implementation="eager")
    litert_torch.convert(model, sample_kwargs=...).export("float.tflite")
    litert_torch.convert(model, sample_kwargs=..., quant_config=quant_recipes.full_dynamic_recipe())

A BiLSTM/CNN student folder of `edgecompress distill` is converted the same way from its torch module
(built from this repository's `students.py`, weights from model.safetensors), inputs `input_ids` and
`attention_mask`. Float and dynamic-range int8 (int8 weights per channel, activations quantized at run time:
litert-torch's `full_dynamic_recipe`, applied by ai-edge-quantizer). The sample inputs are batch 1, `--seq-len` long,
int64 like the inputs of edgecompress's `.tflite`; litert-torch
narrows int64 model inputs to int32 by default (`enable_x64=False`), which is kept, since it is what a
user gets. Prints one JSON line: {"float": path, "int8": path, "seconds": {...}, "versions": {...}}.

    /work/venvs/litert-torch/bin/python tools/peer_litert_torch.py CHECKPOINT --seq-len 128 -o OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (the peer environment has it; edgecompress's never runs this file)

BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
STUDENT_MODEL_TYPE = "edgecompress-student"  # BiLSTM/CNN students of `edgecompress distill`
VARIANTS = ("float", "int8")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "checkpoint", type=Path, help="checkpoint folder: a transformers sequence classifier or an edgecompress student"
    )
    parser.add_argument("--seq-len", type=int, required=True, help="fixed sequence length of the inputs")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for float.tflite and int8.tflite")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    return parser.parse_args(argv)


class LogitsOnly(torch.nn.Module):
    """The classifier with one output, `logits`, and positional inputs in our order, like our `.tflite`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def load_classifier(checkpoint: Path) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The torch model behind the checkpoint and its input names, in the order our `.tflite` takes them."""
    config = json.loads((checkpoint / "config.json").read_text())
    if config.get("model_type") == STUDENT_MODEL_TYPE:
        return load_student(checkpoint, config), ("input_ids", "attention_mask")
    return load_bert(checkpoint), BERT_INPUTS


def load_bert(checkpoint: Path) -> torch.nn.Module:
    """Eager attention, as litert-torch's examples load transformers models; same weights and maths."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), attn_implementation="eager", local_files_only=True
    )
    return LogitsOnly(model.eval()).eval()


def load_student(checkpoint: Path, config: dict) -> torch.nn.Module:
    """An edgecompress BiLSTM/CNN student: its torch module comes from this repository's source (pure torch,
    no other edgecompress dependency), its weights from model.safetensors."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgecompress.distill.students import build_student

    module = build_student(config)
    module.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    return module.eval()


def sample_inputs(seq_len: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Batch 1, int64, a realistic padded row: [CLS] tokens [SEP] then padding, as a tokenizer writes it."""
    ids = torch.zeros((1, seq_len), dtype=torch.int64)
    length = min(seq_len, 16)
    ids[0, :length] = torch.arange(1000, 1000 + length)
    ids[0, 0], ids[0, length - 1] = 101, 102
    row = {"input_ids": ids, "attention_mask": (ids != 0).to(torch.int64), "token_type_ids": torch.zeros_like(ids)}
    return {name: row[name] for name in names}


def convert(module, kwargs: dict, variant: str, path: Path) -> float:
    """Convert one variant and write it; returns the conversion seconds."""
    import litert_torch
    from litert_torch.generative.quantize import quant_recipes

    quant_config = quant_recipes.full_dynamic_recipe() if variant == "int8" else None
    start = time.perf_counter()
    edge_model = litert_torch.convert(module, sample_kwargs=kwargs, quant_config=quant_config)
    edge_model.export(str(path))
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        sys.stderr.write(
            f"peer_litert_torch: error: {args.checkpoint} has no config.json (expected a "
            "transformers checkpoint folder)\n"
        )
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.output.mkdir(parents=True, exist_ok=True)
    module, names = load_classifier(args.checkpoint)
    kwargs = sample_inputs(args.seq_len, names)
    result = {
        "seconds": {},
        "versions": {name: version(name) for name in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torch")},
    }
    with torch.no_grad():
        for variant in args.variants:
            path = args.output / f"{variant}.tflite"
            result["seconds"][variant] = round(convert(module, kwargs, variant, path), 1)
            result[variant] = str(path.resolve())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
