"""Every task end to end on a tiny random model (float parity on .onnx, .ort and .tflite, the task's data
format, its scores in the report and its decoding in the manifest), and each task's scoring functions against
hand-worked values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, _write_vocab

from edgecompress.cli import main

LABELS = {
    "token-classification": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "multi-label-classification": ["funny", "sad", "long"],
}


def build(folder: Path, head: str, seed: int = 0, **config) -> Path:
    """A 2-layer, 32-wide Bert<head> saved as a checkpoint folder (the tiny vocabulary of conftest)."""
    import torch
    import transformers
    from transformers import BertConfig, BertTokenizerFast  # type: ignore[attr-defined]

    folder.mkdir(parents=True, exist_ok=True)
    _write_vocab(folder)
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = getattr(transformers, f"Bert{head}")(BertConfig(vocab_size=len(tokenizer), **TINY, **config))
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def labelled(names: list[str], **config) -> dict:
    return dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}, **config)


def export(model: Path, device, data: Path | None, out: Path, *extra) -> dict:
    argv = ["export", str(model), "--device", str(device), "-o", str(out), "--no-measure", "--json", *extra]
    if data is not None:
        argv += ["--data", str(data)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code in (0, 3), (result.output, result.exception)
    return json.loads(result.stdout)


def manifest(out: Path, device: str = "tinyphone") -> dict:
    return json.loads((out / device / "manifest.json").read_text())


def assert_exact_parity(report: dict, kinds=("onnx", "ort", "tflite")) -> None:
    assert sorted(a["kind"] for a in report["artifacts"]) == sorted(kinds)
    for artifact in report["artifacts"]:
        assert artifact["parity"]["passed"] and artifact["parity"]["tolerance"] is not None, artifact["file"]
        assert artifact["parity"]["max_abs_diff"] <= 1e-4
        assert artifact["parity"]["prediction_agreement"] in (None, 1.0)


# ---- data files ---------------------------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- O O

the B-PER
movie I-PER
was O
in B-LOC
good I-LOC

a O
boring B-PER
actor I-PER
"""


def squad(path: Path) -> Path:
    paragraphs = [
        {
            "context": "the movie was great and the actor was fun",
            "qas": [
                {"id": "1", "question": "what was great?", "answers": [{"text": "the movie", "answer_start": 0}]},
                {"id": "2", "question": "who was fun?", "answers": [{"text": "actor", "answer_start": 28}]},
            ],
        },
        {
            "context": "a boring plot with the worst story ever",
            "qas": [{"id": "3", "question": "what was boring?", "answers": [{"text": "plot", "answer_start": 9}]}],
        },
    ]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


# ---- end to end, --quantize none: exact parity on every artifact --------------------------------------------


def test_token_classification_conll_end_to_end(tmp_path, tiny_device):
    model = build(tmp_path / "ner", "ForTokenClassification", **labelled(LABELS["token-classification"]))
    data = tmp_path / "eval.conll"
    data.write_text(CONLL)
    report = export(model, tiny_device, data, tmp_path / "out")
    assert_exact_parity(report)
    assert report["model"]["task"] == "token-classification"
    assert report["model"]["output"] == {"name": "logits", "axes": ["batch", "sequence", "labels"]}
    assert set(report["data"]["reference_scores"]) == {"entity_precision", "entity_recall", "entity_f1", "word_accuracy"}
    for artifact in report["artifacts"]:  # float artifacts score what the torch model scores
        assert artifact["scores"] == pytest.approx(report["data"]["reference_scores"])
    shipped = manifest(tmp_path / "out")
    assert shipped["model"]["decode"]["alignment"] == "first sub-token"
    assert shipped["tokenizer"]["is_split_into_words"] is True
    assert shipped["outputs"][0]["name"] == "logits" and len(shipped["outputs"][0]["shape"]) == 3


def test_token_classification_jsonl_with_tag_indices(tmp_path, tiny_device):
    model = build(tmp_path / "ner", "ForTokenClassification", **labelled(LABELS["token-classification"]))
    data = tmp_path / "eval.jsonl"
    rows = [{"tokens": ["the", "movie", "was", "fun"], "tags": [1, 2, 0, 0]}, {"tokens": ["dull"], "tags": ["O"]}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = export(model, tiny_device, data, tmp_path / "out")
    assert_exact_parity(report)
    assert report["data"]["texts"] == 2 and report["data"]["headline_score"] == "entity_f1"


def test_question_answering_squad_end_to_end(tmp_path, tiny_device):
    model = build(tmp_path / "qa", "ForQuestionAnswering")
    report = export(model, tiny_device, squad(tmp_path / "dev.json"), tmp_path / "out")
    assert_exact_parity(report)
    assert report["model"]["output"]["name"] == "span_logits"
    assert set(report["data"]["reference_scores"]) == {"f1", "exact_match"}
    shipped = manifest(tmp_path / "out")
    assert shipped["model"]["decode"]["max_answer_length"] == 30
    assert shipped["outputs"][0]["name"] == "span_logits" and shipped["outputs"][0]["shape"][-1] == 2
    assert shipped["tokenizer"]["truncation"].startswith("only_second")


def test_multi_label_end_to_end(tmp_path, tiny_device):
    config = labelled(LABELS["multi-label-classification"], problem_type="multi_label_classification")
    model = build(tmp_path / "multi", "ForSequenceClassification", **config)
    data = tmp_path / "eval.csv"
    data.write_text("text,label\na fun movie,funny\nsad and long,sad|long\nthe plot,\n")
    report = export(model, tiny_device, data, tmp_path / "out")
    assert_exact_parity(report)
    assert report["model"]["task"] == "multi-label-classification"
    assert report["data"]["headline_score"] == "micro_f1"
    assert manifest(tmp_path / "out")["model"]["decode"]["thresholds"] == [0.5, 0.5, 0.5]


def test_regression_end_to_end(tmp_path, tiny_device):
    """Used to fail with "labels ['0.0', '1.0'] are not known to the model"."""
    model = build(tmp_path / "reg", "ForSequenceClassification", num_labels=1)
    data = tmp_path / "eval.csv"
    data.write_text("text,label\na fun movie,0.9\nboring,0.1\nthe plot,0.5\nit was good,0.7\n")
    report = export(model, tiny_device, data, tmp_path / "out")
    assert_exact_parity(report)
    assert report["model"]["task"] == "regression"
    assert set(report["data"]["reference_scores"]) == {"pearson", "spearman", "mean_absolute_error"}
    assert "spread" in report["data"]["agreement_means"]


def test_embedding_pairs_scored_by_spearman(tmp_path, tiny_device, tiny_encoder):
    data = tmp_path / "pairs.csv"
    data.write_text("text_a,text_b,score\na fun movie,a great film,4.5\nboring,the best,0.5\nit was good,good,3\n")
    report = export(tiny_encoder, tiny_device, data, tmp_path / "out")
    assert_exact_parity(report)
    assert report["data"]["texts"] == 6  # every text_a, then every text_b
    assert report["data"]["headline_score"] == "spearman"


# ---- the default pixel7 recipe (dynamic int8, length buckets where the profile has them) ---------------------


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_default_pixel7_recipe(task, tmp_path):
    if task == "token-classification":
        model = build(tmp_path / "m", "ForTokenClassification", **labelled(LABELS[task]))
        data = tmp_path / "eval.conll"
        data.write_text(CONLL)
    else:
        model = build(tmp_path / "m", "ForQuestionAnswering")
        data = squad(tmp_path / "dev.json")
    report = export(model, "pixel7", data, tmp_path / "out")
    for artifact in report["artifacts"]:
        assert artifact["parity"]["passed"], artifact["file"]
        assert artifact["parity"]["agreement_of"] == (
            "same predicted tag (argmax) at each real token" if task == "token-classification" else "same decoded answer span"
        )
    assert manifest(tmp_path / "out", "pixel7")["quantization"] == "dynamic-int8"
