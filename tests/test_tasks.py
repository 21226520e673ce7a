"""Every task end to end on a tiny random model (float parity on .onnx, .ort and .tflite, the task's data
format, its scores in the report and its decoding in the manifest), and each task's scoring functions against
hand-worked values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompress.cli import main

from conftest import TINY, _write_vocab

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
    settings = {**TINY, **config}
    tokenizer = BertTokenizerFast(
        vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=settings["max_position_embeddings"]
    )
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = getattr(transformers, f"Bert{head}")(BertConfig(vocab_size=len(tokenizer), **settings))
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
    assert set(report["data"]["reference_scores"]) == {
        "entity_precision",
        "entity_recall",
        "entity_f1",
        "word_accuracy",
    }
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
    assert "standard deviations" in report["data"]["agreement_means"]


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
    positions = {"max_position_embeddings": 128}  # pixel7's seq_len
    if task == "token-classification":
        model = build(tmp_path / "m", "ForTokenClassification", **labelled(LABELS[task]), **positions)
        data = tmp_path / "eval.conll"
        data.write_text(CONLL)
    else:
        model = build(tmp_path / "m", "ForQuestionAnswering", **positions)
        data = squad(tmp_path / "dev.json")
    report = export(model, "pixel7", data, tmp_path / "out")
    for artifact in report["artifacts"]:
        assert artifact["parity"]["passed"], artifact["file"]
        assert artifact["parity"]["agreement_of"] == (
            "same predicted tag (argmax) at each real token"
            if task == "token-classification"
            else "same decoded answer span"
        )
    assert manifest(tmp_path / "out", "pixel7")["quantization"] == "dynamic-int8"


# ---- scoring functions against hand-worked values ----------------------------------------------------------


def test_squad_normalisation_exact_match_and_f1():
    from edgecompress.tasks.question_answering import exact_match, f1_score, normalize_answer

    assert normalize_answer("The  Movie, of course!") == "movie of course"
    assert exact_match("the Movie.", "movie") == 1.0
    assert exact_match("a movie", "movies") == 0.0
    # prediction "great movie actor" vs gold "the movie actor was great": common {great, movie, actor} = 3;
    # precision 3/3, recall 3/4 (gold normalised: movie actor was great) -> F1 = 2 * 1 * 0.75 / 1.75
    assert f1_score("great movie actor", "the movie actor was great") == pytest.approx(1.5 / 1.75)
    assert f1_score("plot", "story") == 0.0


def test_best_span_keeps_to_context_and_maximum_length():
    from edgecompress.tasks.question_answering import best_span

    logits = np.zeros((6, 2), np.float32)
    logits[0] = [9, 9]  # [CLS]: outside the context, never chosen
    logits[2, 0], logits[5, 1], logits[3, 1] = 5, 6, 1
    context = np.array([0, 0, 1, 1, 1, 1], bool)
    assert best_span(logits, context, max_length=30) == (2, 5)
    assert best_span(logits, context, max_length=2) == (2, 3)  # (2, 5) is 4 tokens long
    assert best_span(logits, np.zeros(6, bool), max_length=30) == (-1, -1)


def test_entity_scores_follow_seqeval():
    from edgecompress.tasks._entities import entities, entity_scores

    # seqeval's own docstring example: one of two entities found, one of two predicted right
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predicted = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert entity_scores(gold, predicted) == {"entity_precision": 0.5, "entity_recall": 0.5, "entity_f1": 0.5}
    # an I- without a B- starts an entity (seqeval's default, non-strict mode); a type change ends one
    assert entities([["I-PER", "I-PER", "I-LOC", "O", "B-PER"]]) == {("PER", 0, 1), ("LOC", 2, 2), ("PER", 4, 4)}
    # sentences do not run into each other
    assert entities([["B-PER"], ["I-PER"]]) == {("PER", 0, 0), ("PER", 2, 2)}
    # precision 1/1, recall 1/2 -> F1 2/3
    two = [["B-PER", "O", "B-LOC"]]
    assert entity_scores(two, [["B-PER", "O", "O"]])["entity_f1"] == pytest.approx(2 / 3)


def test_spearman_with_ties_and_pearson():
    from edgecompress.tasks._stats import average_ranks, pearson, spearman

    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40])) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 6])) == pytest.approx(1.0)
    assert pearson(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])) == 0.0


def test_regression_agrees_within_a_fifth_of_the_predictions_standard_deviation():
    from edgecompress.tasks.regression import Regression

    task = Regression()
    reference = np.array([[0.0], [1.0], [2.0], [3.0]])  # standard deviation sqrt(1.25): tolerance 0.2236
    moved = reference + np.array([[0.0], [0.2], [0.25], [-0.22]])
    assert task.agrees(reference, moved, {}).tolist() == [True, True, False, True]
    # The same texts ten times over: the spread (max - min) rule agreed more the more texts; this one does not move.
    many = np.tile(reference, (10, 1))
    assert task.agreement(many, np.tile(moved, (10, 1)), {}) == pytest.approx(0.75)
    # Constant predictions (no deviation): float rounding agrees, anything more does not.
    flat = np.zeros((3, 1))
    assert task.agrees(flat, flat + 5e-5, {}).all() and not task.agrees(flat, flat + 1e-3, {}).any()


def test_multi_label_f1_by_hand():
    from edgecompress.tasks.base import Encoded, Examples
    from edgecompress.tasks.multi_label import MultiLabelClassification

    task = MultiLabelClassification(["a", "b"], [0.5, 0.5])
    outputs = np.array([[3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]])  # predicted {a}, {a, b}, {}
    gold = np.array([[1, 0], [0, 1], [0, 1]], bool)  # a: TP 1, FP 1; b: TP 1, FN 1
    score = task.score(outputs, Examples(Path("x"), ["", "", ""], gold=gold), Encoded({}))
    assert score is not None
    assert score.figures["micro_f1"] == pytest.approx(4 / 6)  # 2TP / (2TP + FP + FN) = 4 / 6
    assert score.figures["macro_f1"] == pytest.approx(2 / 3)  # a: 2/3, b: 2/3
    assert score.figures["exact_match"] == pytest.approx(1 / 3)


# ---- sentence-transformers pooling -------------------------------------------------------------------------


def _sentence_transformers_folder(encoder: Path, folder: Path, pooling: dict, normalize: bool) -> Path:
    import shutil

    shutil.copytree(encoder, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    return folder


@pytest.mark.parametrize(
    "pooling, normalize",
    [
        ({"pooling_mode_cls_token": True}, True),
        ({"pooling_mode_max_tokens": True}, False),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, False),
    ],
)
def test_sentence_transformers_pooling_is_honoured(pooling, normalize, tiny_encoder, tmp_path):
    """The reference module pools as sentence-transformers' encode() does, computed here by hand."""
    import torch

    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(_sentence_transformers_folder(tiny_encoder, tmp_path / "st", pooling, normalize))
    texts = ["a very good movie", "dull"]
    feeds = tokenize(bundle.tokenizer, texts, seq_len=16, input_names=bundle.input_names)
    inputs = [torch.from_numpy(feeds[name]) for name in bundle.input_names]
    with torch.no_grad():
        embedded = bundle.module(*inputs).numpy()
        hidden = bundle.module.hf_model(*inputs).last_hidden_state.numpy()
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    parts = {
        "pooling_mode_cls_token": hidden[:, 0],
        "pooling_mode_max_tokens": np.where(mask > 0, hidden, -1e9).max(axis=1),
        "pooling_mode_mean_tokens": (hidden * mask).sum(1) / mask.sum(1),
    }
    order = ["pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_tokens"]  # the library's
    expected = np.concatenate([parts[key] for key in order if pooling.get(key)], axis=1)
    if normalize:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(embedded, expected, atol=1e-5)
    assert bundle.task.decoding()["normalized"] is normalize


def test_sentence_transformers_encode_matches_when_installed(tiny_encoder, tmp_path):
    """The library itself, when installed (it is not a dependency): CLS pooling and Normalize as encode() does."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import torch

    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle

    folder = _sentence_transformers_folder(tiny_encoder, tmp_path / "st", {"pooling_mode_cls_token": True}, True)
    bundle = load_bundle(folder)
    texts = ["a very good movie", "dull"]
    feeds = tokenize(bundle.tokenizer, texts, seq_len=16, input_names=bundle.input_names)
    with torch.no_grad():
        ours = bundle.module(*[torch.from_numpy(feeds[n]) for n in bundle.input_names]).numpy()
    theirs = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# ---- .onnx intake: the task from config.json, else --task, else refused -------------------------------------


def _lowered_onnx(checkpoint: Path, folder: Path, with_config: bool) -> Path:
    import shutil

    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.lower import export_onnx

    bundle = load_bundle(checkpoint)
    feeds = tokenize(bundle.tokenizer, ["a movie"], seq_len=16, input_names=bundle.input_names)
    folder.mkdir()
    (folder / "model.onnx").write_bytes(export_onnx(bundle, feeds).SerializeToString())
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, folder / name)
    if with_config:
        shutil.copyfile(checkpoint / "config.json", folder / "config.json")
    return folder / "model.onnx"


def test_onnx_intake_reads_task_and_labels_from_config_json(tiny_checkpoint, tmp_path):
    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(_lowered_onnx(tiny_checkpoint, tmp_path / "in", with_config=True))
    assert bundle.kind == "sequence-classification" and bundle.labels == ["negative", "positive"]


def test_onnx_intake_takes_task_option_and_refuses_ambiguous_file(tiny_checkpoint, tmp_path, tiny_device):
    from edgecompress.errors import UserError
    from edgecompress.intake.model import load_bundle

    path = _lowered_onnx(tiny_checkpoint, tmp_path / "in", with_config=False)
    with pytest.raises(UserError, match="cannot tell the task from the outputs .* give --task"):
        load_bundle(path)
    assert load_bundle(path, task_name="regression").kind == "regression"
