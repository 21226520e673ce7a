"""The artifacts tools/bench_calibration.py checks the calibrated estimate on: real exports, none of them in the
micro-benchmark suite (edgecompress/measure/calibration/suite.py builds single-op graphs only).

Each artifact is one `model.onnx` in `WORK/artifacts/<name>/`, built once and kept (`--reuse` times them again
without rebuilding). Their accuracy does not matter here, only the graph each one runs, so the students are
distilled for one short epoch on 256 texts, the pruned teacher prunes without recovery training (the same
shapes and ops as a recovered one), and the other families are random-initialised at a mid size (4 layers of
256) with a trained tokenizer of the family's kind (tools/tiny_families.py).

    teacher-float-128      the Rotten Tomatoes MiniLM teacher, --quantize none, seq 128
    teacher-float-64       the same at seq 64
    teacher-dyn8-128/-32   dynamic int8 (the profiles' default) at seq 128 and 32
    teacher-int8-128       static int8 (calibrated QDQ)
    teacher-int4-128       4-bit MatMulNBits weights
    teacher-mixed-128      int8/int4 mixed
    teacher-intonly-128    integer-only (I-BERT style, unfused)
    pruned-float-64        half the heads and 3/4 of the FFN neurons pruned, float; pruned-dyn8-64 quantized
    bilstm/cnn/transformer-64  students, float; transformer-dyn8-64 quantized
    paraphrase-l3-128      the third-party paraphrase-MiniLM-L3-v2 ONNX file as written (ONNX Runtime fuses it
                           at load), seq 128
    roberta/distilbert/deberta-128  other families, float (DeBERTa-v2's attention is not fused)
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecompress.devices import derived_profile_text

import example_assets
import train_teacher
from tiny_families import TINY_CONFIGS, TOKENIZER_KIND, train_tokenizer


@dataclass(frozen=True)
class Spec:
    name: str
    seq_len: int
    build: Callable[[Path, Path], Path]  # (work folder, output folder) -> model.onnx


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def specs() -> list[Spec]:
    teacher = _export_teacher
    return [
        Spec("teacher-float-128", 128, lambda w, o: teacher(w, o, 128, quantize="none")),
        Spec("teacher-float-64", 64, lambda w, o: teacher(w, o, 64, quantize="none")),
        Spec("teacher-dyn8-128", 128, lambda w, o: teacher(w, o, 128, quantize="dynamic-int8")),
        Spec("teacher-dyn8-32", 32, lambda w, o: teacher(w, o, 32, quantize="dynamic-int8")),
        Spec("teacher-int8-128", 128, lambda w, o: teacher(w, o, 128, quantize="int8")),
        Spec("teacher-int4-128", 128, lambda w, o: teacher(w, o, 128, quantize="int4")),
        Spec("teacher-mixed-128", 128, lambda w, o: teacher(w, o, 128, quantize="int8-int4-mixed")),
        Spec("teacher-intonly-128", 128, lambda w, o: teacher(w, o, 128, recipe="integer-only")),
        Spec("pruned-float-64", 64, lambda w, o: teacher(w, o, 64, recipe=_pruned_recipe(w), quantize="none")),
        Spec("pruned-dyn8-64", 64, lambda w, o: teacher(w, o, 64, recipe=_pruned_recipe(w), quantize="dynamic-int8")),
        Spec("bilstm-64", 64, lambda w, o: _export(_student(w, "bilstm"), w, o, 64, quantize="none")),
        Spec("cnn-64", 64, lambda w, o: _export(_student(w, "cnn"), w, o, 64, quantize="none")),
        Spec("transformer-64", 64, lambda w, o: _export(_student(w, "transformer"), w, o, 64, quantize="none")),
        Spec(
            "transformer-dyn8-64",
            64,
            lambda w, o: _export(_student(w, "transformer"), w, o, 64, quantize="dynamic-int8"),
        ),
        Spec("paraphrase-l3-128", 128, _third_party),
        Spec("roberta-128", 128, lambda w, o: _export(_family(w, "roberta"), w, o, 128, quantize="none")),
        Spec("distilbert-128", 128, lambda w, o: _export(_family(w, "distilbert"), w, o, 128, quantize="none")),
        Spec("deberta-128", 128, lambda w, o: _export(_family(w, "deberta-v2"), w, o, 128, quantize="none")),
    ]


def build_all(work: Path, chosen: list[Spec], *, reuse: bool) -> dict[str, Path]:
    """name -> model.onnx for every spec, built now unless `reuse` and already there."""
    built = {}
    for index, spec in enumerate(chosen, 1):
        out = work / "artifacts" / spec.name
        model = out / "model.onnx"
        if reuse and model.is_file():
            built[spec.name] = model
            continue
        shutil.rmtree(out, ignore_errors=True)
        log(f"[{index}/{len(chosen)}] building {spec.name}")
        built[spec.name] = spec.build(work, out)
    return built


def _data(work: Path) -> Path:
    """64 labelled test texts: enough for the export's verification, few enough to keep each export short."""
    return _head(work / "data" / "texts.csv", example_assets.rotten_tomatoes_dir() / "test.csv", 64)


def _train(work: Path) -> Path:
    return _head(work / "data" / "train.csv", example_assets.rotten_tomatoes_dir() / "train.csv", 256)


def _head(path: Path, source: Path, rows: int) -> Path:
    """The first `rows` examples of a split (texts may span lines: read and written as CSV)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        example_assets.write_csv(path, example_assets.read_csv(source)[:rows])
    return path


def _profile(work: Path, seq_len: int) -> Path:
    """pixel7's recipe defaults at one fixed length, ONNX artifact only (the hardware facts are not used here)."""
    path = work / "profiles" / f"calib{seq_len}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(derived_profile_text("pixel7", name=f"calib{seq_len}", seq_len=seq_len, artifacts=["onnx"]))
    return path


def _export_teacher(work: Path, out: Path, seq_len: int, **options) -> Path:
    return _export(train_teacher.teacher_dir(), work, out, seq_len, **options)


def _export(model: Path, work: Path, out: Path, seq_len: int, *, quantize=None, recipe=None) -> Path:
    from edgecompress.pipeline import ExportRequest, run_export

    result = run_export(
        ExportRequest(
            model=model,
            device=str(_profile(work, seq_len)),
            out_root=out / "export",
            data=_data(work),
            train_data=_train(work),
            recipe=recipe,
            quantize=quantize,
            measure=False,
        )
    )
    shutil.copy(result.out_dir / "model.onnx", out / "model.onnx")
    (out / "how.json").write_text(json.dumps({"model": str(model), "recipe": recipe, "quantize": quantize}) + "\n")
    return out / "model.onnx"


def _pruned_recipe(work: Path) -> str:
    """The packaged `pruned` recipe's shapes in one round without recovery training: latency depends on the
    shapes and ops, not on the recovered weights."""
    path = work / "recipes" / "pruned-untrained.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        'description = "pruned shapes without recovery (latency benchmark)"\nextends = "default"\n\n'
        '[[compress]]\npass = "trim_vocab"\n\n'
        '[[compress]]\npass = "prune_schedule"\nheads = 0.5\nffn = 0.75\nsteps = 1\nepochs = 0.0\n'
    )
    return str(path)


def _student(work: Path, kind: str) -> Path:
    from edgecompress.distill.run import DistillRequest, distill

    folder = work / "students" / kind
    if not (folder / "training.json").is_file():
        log(f"distilling a {kind} student (one short epoch: only its graph matters here)")
        shutil.rmtree(folder, ignore_errors=True)
        distill(
            DistillRequest(
                teacher=train_teacher.teacher_dir(),
                student=kind,
                train_data=_train(work),
                out_dir=folder,
                seq_len=64,
                training={"epochs": 1},
            )
        )
    return folder


# Mid-size random configs of other families: big enough that their matmuls, not per-node overhead, set the time.
_FAMILY_SIZES = {
    "distilbert": dict(dim=256, n_layers=4, n_heads=4, hidden_dim=1024, max_position_embeddings=130),
}
_MID = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def _family(work: Path, model_type: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = work / "families" / model_type
    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(TOKENIZER_KIND[model_type])
    tokenizer.save_pretrained(str(folder))
    settings = {
        **TINY_CONFIGS[model_type],
        **_FAMILY_SIZES.get(model_type, _MID),
        "pad_token_id": tokenizer.pad_token_id,
    }
    labels = {0: "negative", 1: "positive"}
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), id2label=labels, label2id={v: k for k, v in labels.items()}, **settings
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _third_party(work: Path, out: Path) -> Path:
    """The paraphrase-MiniLM-L3-v2 file as published, its inputs fixed to [1, 128] (as an app serving one length
    ships it; the estimate needs fixed shapes, and the file that is timed is the file that is estimated): ONNX
    Runtime's own load-time fusions are all it gets, which is what the estimate must see through."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(example_assets.paraphrase_onnx_path()))
    make_dim_param_fixed(model.graph, "batch_size", 1)
    make_dim_param_fixed(model.graph, "sequence_length", 128)
    onnx.save(model, str(out / "model.onnx"))
    (out / "how.json").write_text(json.dumps({"model": "paraphrase-MiniLM-L3-v2.onnx, inputs fixed to [1, 128]"}))
    return out / "model.onnx"
