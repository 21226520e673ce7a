"""Distillation: students, losses, augmentation, the DDP trainer, student checkpoints through export, the CLI.

The teacher is the tiny 2-layer BERT fitted in a second to the twelve conftest sentences, so that it has
predictions worth imitating. The three students are distilled once per module and shared.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.distill import trainer
from edgecompress.distill.augment import (
    AugmentOptions,
    augment,
    build_transfer_set,
    near_neighbours,
    perturb,
    whole_word,
)
from edgecompress.distill.embeddings import contextual_token_vectors, teacher_word_embeddings
from edgecompress.distill.losses import (
    LossOptions,
    attention_loss,
    even_layer_map,
    hard_loss,
    hidden_loss,
    logit_loss,
    prediction_loss,
)
from edgecompress.distill.run import DistillRequest, distill, plan_distillation, prepare, work_dir
from edgecompress.distill.students import build_student, student_config
from edgecompress.errors import UserError
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.pipeline import ExportRequest, run_export
from edgecompress.verify.evaluate import reference_outputs

from conftest import SENTENCES, user_error, write_csv

TEXTS = [text for text, _ in SENTENCES]
STUDENT_INPUTS = ("input_ids", "attention_mask")


# ---- fixtures and helpers -----------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module scope: one thread for the whole file


@pytest.fixture(scope="module")
def teacher(fitted_teacher) -> Path:
    return fitted_teacher


@pytest.fixture(scope="module")
def teacher_bundle(teacher):
    return load_bundle(teacher)


def request(teacher: Path, data: Path, out: Path, kind: str, *, epochs: int = 6, **extra) -> DistillRequest:
    return DistillRequest(
        teacher=teacher,
        student=kind,
        train_data=data,
        out_dir=out,
        augment=3,
        seq_len=16,
        training={"epochs": epochs, "batch_size": 8},
        **extra,
    )


@pytest.fixture(scope="module")
def students(teacher, tiny_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("students")
    return {kind: distill(request(teacher, tiny_data, root / kind, kind)) for kind in ("bilstm", "cnn", "transformer")}


@pytest.fixture(scope="module")
def student_device(tiny_device, tmp_path_factory) -> Path:
    """The tiny device (onnx, ort and tflite artifacts) under another name."""
    path = tmp_path_factory.mktemp("student-device") / "tinystudent.toml"
    path.write_text(tiny_device.read_text().replace('name = "tinyphone"', 'name = "tinystudent"'))
    return path


def predictions(bundle, texts: list[str]) -> np.ndarray:
    feeds = tokenize(bundle.tokenizer, texts, seq_len=16, input_names=bundle.input_names)
    return reference_outputs(bundle, feeds).argmax(-1)


def distill_cli(*args):
    return CliRunner().invoke(main, ["distill", *map(str, args)])


# ---- students -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, overrides", [("bilstm", {}), ("bilstm", {"pooling": "final"}), ("cnn", {})])
def test_student_logits_do_not_depend_on_padding(teacher_bundle, kind, overrides):
    config = student_config(
        kind,
        overrides,
        tokenizer=teacher_bundle.tokenizer,
        labels=["negative", "positive"],
        max_positions=64,
        where="test",
    )
    torch.manual_seed(0)
    model = build_student(config).eval()
    feeds = tokenize(teacher_bundle.tokenizer, TEXTS, seq_len=16, input_names=STUDENT_INPUTS)
    ids, mask = (torch.from_numpy(feeds[name]) for name in STUDENT_INPUTS)
    with torch.no_grad():
        logits = model(ids, mask)
        assert logits.shape == (len(TEXTS), 2)
        other_padding = ids.masked_fill(mask == 0, 7)  # other token ids under the mask change nothing
        torch.testing.assert_close(model(other_padding, mask), logits, rtol=0, atol=1e-6)
        for row in range(len(TEXTS)):  # nor does trimming the padding away
            width = int(mask[row].sum())
            torch.testing.assert_close(
                model(ids[row : row + 1, :width], mask[row : row + 1, :width])[0], logits[row], rtol=0, atol=1e-6
            )


def test_student_config_must_fit_the_tokenizer(teacher_bundle):
    with pytest.raises(UserError, match="student vocab_size 99 does not match the tokenizer's 110 tokens"):
        student_config(
            "cnn",
            {"vocab_size": 99},
            tokenizer=teacher_bundle.tokenizer,
            labels=["a", "b"],
            max_positions=64,
            where="test",
        )
    with pytest.raises(UserError, match="unknown bilstm student setting 'kernel_sizes'; hint: Known: "):
        student_config(
            "bilstm",
            {"kernel_sizes": [2]},
            tokenizer=teacher_bundle.tokenizer,
            labels=["a", "b"],
            max_positions=64,
            where="test",
        )


def test_a_transformer_student_from_scratch_takes_nothing_from_the_teacher(teacher_bundle):
    """ "init": "random" (the from-scratch baseline of tools/bench_squeeze.py): a fresh BERT, nothing copied."""
    from edgecompress.distill.small_bert import init_from_teacher, new_transformer_student, transformer_config

    def student(init: str):
        config = transformer_config(
            teacher_bundle.config, {"init": init}, tokenizer=teacher_bundle.tokenizer, where="test"
        )
        torch.manual_seed(0)
        model = new_transformer_student(config)
        init_from_teacher(model, config, teacher_bundle.module.hf_model)
        return model.bert.embeddings.word_embeddings.weight

    teacher_table = teacher_bundle.module.hf_model.bert.embeddings.word_embeddings.weight
    assert torch.equal(student("teacher"), teacher_table)
    assert not torch.equal(student("random"), teacher_table)
    with pytest.raises(UserError, match="unknown init 'glove'; expected one of teacher, random"):
        student("glove")


def test_student_config_rejects_an_unknown_embedding_init(teacher_bundle):
    with pytest.raises(UserError, match="'embedding_init' must be one of contextual, word, got 'glove'"):
        student_config(
            "cnn",
            {"embedding_init": "glove"},
            tokenizer=teacher_bundle.tokenizer,
            labels=["a", "b"],
            max_positions=64,
            where="test",
        )


def test_contextual_vectors_average_each_tokens_last_hidden_states(teacher_bundle):
    hf_model = teacher_bundle.module.hf_model.eval()
    feeds = tokenize(teacher_bundle.tokenizer, TEXTS, seq_len=16, input_names=("input_ids", "attention_mask"))
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    vectors = contextual_token_vectors(hf_model, ids, mask, batch_size=2)  # batches must not change the sums
    with torch.no_grad():
        hidden = hf_model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    token = int(ids[0, 1])  # the first word of the first text
    occurrences = hidden[(ids == token) & real]
    torch.testing.assert_close(vectors[token], occurrences.mean(dim=0), rtol=0, atol=1e-5)
    seen = torch.zeros(len(vectors), dtype=torch.bool)
    seen[ids[real]] = True
    assert not seen.all()
    # a token the texts never show gets the mean of the seen ones: the origin once PCA centres the table
    torch.testing.assert_close(
        vectors[~seen], vectors[seen].mean(dim=0).expand(int((~seen).sum()), -1), rtol=0, atol=1e-5
    )
    assert not torch.allclose(vectors[token], teacher_word_embeddings(hf_model)[token])


# ---- losses -------------------------------------------------------------------------------------------------


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


STUDENT = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
TEACHER = torch.tensor([[0.0, 1.0], [0.5, 0.0]], dtype=torch.float64)


def test_mse_logit_loss_by_hand():
    # squared differences 1, 4, 0, 4: mean 2.25
    assert logit_loss(STUDENT, TEACHER, kind="mse", temperature=1.0).item() == pytest.approx(2.25)


def test_kl_logit_loss_by_hand():
    t = 2.0
    p_teacher, p_student = softmax(TEACHER.numpy() / t), softmax(STUDENT.numpy() / t)
    expected = np.mean(np.sum(p_teacher * np.log(p_teacher / p_student), axis=-1)) * t * t
    assert logit_loss(STUDENT, TEACHER, kind="kl", temperature=t).item() == pytest.approx(expected, rel=1e-12)


def test_hard_labels_count_only_labelled_rows_and_mix_by_weight():
    labels = torch.tensor([1, -1])
    cross_entropy = -np.log(softmax(STUDENT.numpy()[0])[1])
    assert hard_loss(STUDENT, labels).item() == pytest.approx(cross_entropy)
    mixed = prediction_loss(STUDENT, TEACHER, labels, LossOptions(hard_weight=0.25))
    assert mixed.item() == pytest.approx(0.75 * 2.25 + 0.25 * cross_entropy)
    none = hard_loss(STUDENT.clone().requires_grad_(), torch.tensor([-1, -1]))
    assert none.item() == 0.0 and none.requires_grad  # every DDP rank still reduces the same gradients


def test_hidden_state_loss_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    student = [torch.arange(6.0).reshape(1, 3, 2), torch.ones(1, 3, 2)]  # embeddings, layer 1
    teacher = [torch.zeros(1, 3, 2), torch.full((1, 3, 2), 9.0), torch.full((1, 3, 2), 2.0)]
    # (0, 0): real tokens [0, 1], [2, 3] vs 0 -> (0 + 1 + 4 + 9) / 4 = 3.5; (1, 2): (1 - 2)^2 = 1
    assert hidden_loss(student, teacher, mask, [2]).item() == pytest.approx((3.5 + 1.0) / 2)
    double = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.eye_(double.weight)
    double.weight.data *= 2  # (0, 0): (0 + 4 + 16 + 36) / 4 = 14; (1, 2): (2 - 2)^2 = 0
    assert hidden_loss(student, teacher, mask, [2], projection=double).item() == pytest.approx(7.0)


def test_attention_loss_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    teacher_rows = np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.3, 0.3, 0.4]])
    student_rows = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]])  # third row is padding
    kl = [sum(p * np.log(p / q) for p, q in zip(t, s) if p > 0) for t, s in zip(teacher_rows[:2], student_rows[:2])]
    teacher_map = torch.tensor(teacher_rows)[None, None]
    student_map = torch.tensor(student_rows)[None, None]
    assert attention_loss([student_map], [teacher_map, teacher_map], mask, [2]).item() == pytest.approx(np.mean(kl))
    two_heads = torch.cat([teacher_map, teacher_map], dim=1)  # head counts differ: head means are compared
    assert attention_loss([student_map], [two_heads], mask, [1]).item() == pytest.approx(np.mean(kl))


def test_layer_map_is_evenly_spaced_and_checked():
    assert even_layer_map(3, 6) == [2, 4, 6]
    assert even_layer_map(4, 6) == [1, 3, 4, 6]
    assert even_layer_map(1, 6) == [6]
    assert LossOptions().resolved(student_layers=3, teacher_layers=6, where="x").layer_map == (2, 4, 6)
    with pytest.raises(UserError, match=r"layer map \[1, 7\] does not fit 2 student layers"):
        LossOptions(layer_map=(1, 7)).resolved(student_layers=2, teacher_layers=6, where="x")
    with pytest.raises(UserError, match="hidden-state and attention losses need a transformer student"):
        LossOptions(hidden_weight=1.0).resolved(student_layers=None, teacher_layers=6, where="x")


# ---- augmentation and the transfer set ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_and_embeddings(teacher_bundle):
    return teacher_bundle.tokenizer.get_vocab(), teacher_word_embeddings(teacher_bundle.module.hf_model)


def test_augmentation_is_seeded_and_deduplicated(vocab_and_embeddings):
    vocab, embeddings = vocab_and_embeddings
    first = augment(TEXTS, vocab, embeddings, "[MASK]", AugmentOptions(copies=3, seed=1))
    assert first == augment(TEXTS, vocab, embeddings, "[MASK]", AugmentOptions(copies=3, seed=1))
    assert first != augment(TEXTS, vocab, embeddings, "[MASK]", AugmentOptions(copies=3, seed=2))
    for index in range(len(TEXTS)):
        copies = [text for source, text in first if source == index]
        assert 0 < len(copies) <= 3 and len(set(copies)) == len(copies)
    assert any("[MASK]" in text for _, text in first)


def test_neighbours_are_the_nearest_other_whole_words(vocab_and_embeddings):
    vocab, embeddings = vocab_and_embeddings
    found = near_neighbours({"good", "Movie", "##s", "zzz"}, vocab, embeddings, k=3)
    assert sorted(found) == ["good", "movie"]  # "##s" is a word piece, "zzz" is not in the vocabulary
    words = sorted(token for token in vocab if whole_word(token))
    table = embeddings[[vocab[w] for w in words]].numpy()
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    similarity = unit @ unit[words.index("good")]
    similarity[words.index("good")] = -2
    assert found["good"] == [words[i] for i in np.argsort(-similarity, kind="stable")[:3]]


def test_replacement_and_ngram_sampling():
    import random

    neighbours = {"good": ["great"], "movie": ["film"]}
    words = ["a", "good", "movie", "!"]
    replaced = perturb(
        words, random.Random(0), neighbours, "[MASK]", AugmentOptions(p_mask=0.0, p_replace=1.0, p_ngram=0.0)
    )
    assert replaced == "a great film !"
    for seed in range(20):
        window = perturb(
            words,
            random.Random(seed),
            {},
            "[MASK]",
            AugmentOptions(p_mask=0.0, p_replace=0.0, p_ngram=1.0, max_ngram=2),
        ).split()
        assert 1 <= len(window) <= 2 and " ".join(window) in " ".join(words)


def test_teacher_labels_the_transfer_set(teacher_bundle):
    labels = np.arange(len(TEXTS)) % 2
    transfer = build_transfer_set(teacher_bundle, TEXTS, labels, AugmentOptions(copies=2), seq_len=16)
    assert len(transfer) > len(TEXTS) and transfer.texts[: len(TEXTS)] == TEXTS
    assert (transfer.labels[: len(TEXTS)] == labels).all() and (transfer.labels[len(TEXTS) :] == -1).all()
    ids, mask = torch.from_numpy(transfer.input_ids), torch.from_numpy(transfer.attention_mask)
    with torch.no_grad():
        expected = teacher_bundle.module(ids, mask, torch.zeros_like(ids)).numpy()
    np.testing.assert_allclose(transfer.teacher_logits, expected, rtol=0, atol=1e-5)


# ---- distillation -------------------------------------------------------------------------------------------


def test_distillation_improves_agreement_with_the_teacher(teacher, teacher_bundle, students, tiny_data, tmp_path):
    out = tmp_path / "bilstm"
    work = work_dir(out)
    prepare(plan_distillation(request(teacher, tiny_data, out, "bilstm")), work)  # the students' starting point
    initial = torch.load(work / trainer.INIT, weights_only=True)
    before = build_student(initial["config"]).eval()
    before.load_state_dict(initial["state"])
    wanted = predictions(teacher_bundle, TEXTS)
    feeds = tokenize(teacher_bundle.tokenizer, TEXTS, seq_len=16, input_names=STUDENT_INPUTS)
    with torch.no_grad():
        agreement_before = np.mean(before(*map(torch.from_numpy, feeds.values())).argmax(-1).numpy() == wanted)
    agreement_after = np.mean(predictions(load_bundle(students["bilstm"]), TEXTS) == wanted)
    assert agreement_after >= 0.9 and agreement_after > agreement_before


def test_interrupted_training_resumes_to_the_same_weights(teacher, tiny_data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    straight = distill(request(teacher, tiny_data, tmp_path / "straight", "cnn", epochs=2))
    save = trainer._save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    out = tmp_path / "resumed"
    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        distill(request(teacher, tiny_data, out, "cnn", epochs=2))
    assert (work_dir(out) / trainer.CHECKPOINT).is_file() and not out.exists()
    monkeypatch.undo()
    distill(request(teacher, tiny_data, out, "cnn", epochs=2))
    expected, resumed = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert not work_dir(out).exists()


def test_transfer_set_is_saved_once_and_reused(teacher, tiny_data, tmp_path, monkeypatch):
    from edgecompress.distill import augment as augment_module

    saved = tmp_path / "transfer.npz"
    distill(request(teacher, tiny_data, tmp_path / "cnn", "cnn", epochs=1, transfer_set=saved))
    assert saved.is_file()

    def no_labelling(*args, **kwargs):
        raise AssertionError("the teacher labelled the texts again")

    monkeypatch.setattr(augment_module, "build_transfer_set", no_labelling)
    distill(request(teacher, tiny_data, tmp_path / "bilstm", "bilstm", epochs=1, transfer_set=saved))
    other = dataclasses.replace(
        request(teacher, tiny_data, tmp_path / "other", "bilstm", transfer_set=saved), augment=1
    )
    with pytest.raises(
        UserError, match="transfer set was labelled for another teacher, training file, seq_len or augmentation"
    ):
        distill(other)
    assert not (tmp_path / "other").exists() and not work_dir(tmp_path / "other").exists()


def test_two_gloo_processes_end_with_identical_weights(teacher, tiny_data, tmp_path):
    from safetensors.torch import load_file

    out = distill(request(teacher, tiny_data, tmp_path / "ddp", "bilstm", epochs=2, processes=2))
    record = json.loads((out / "training.json").read_text())
    assert record["processes"] == 2
    first, second = record["rank_weight_digests"]
    assert first == second == trainer.state_digest(load_file(out / "model.safetensors"))


def test_narrow_transformer_student_learns_through_a_projection(teacher, tiny_data, tmp_path, monkeypatch):
    from edgecompress.distill import losses

    config = tmp_path / "narrow.json"
    config.write_text(json.dumps({"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}))
    built, real = [], losses.objective

    def spy(student, options, **kwargs):
        built.append(kwargs["projection"])
        return real(student, options, **kwargs)

    monkeypatch.setattr(losses, "objective", spy)
    out = distill(request(teacher, tiny_data, tmp_path / "narrow", "transformer", epochs=1, student_config=config))
    assert isinstance(built[0], torch.nn.Linear) and tuple(built[0].weight.shape) == (32, 16)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 16


# ---- student checkpoints through export ---------------------------------------------------------------------


def test_student_checkpoint_keeps_the_teachers_tokenizer(students, teacher):
    config = json.loads((students["bilstm"] / "config.json").read_text())
    assert config["architectures"] == ["EdgecompressBiLSTMClassifier"]
    assert config["model_type"] == "edgecompress-student"
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["embedding_rows"] < config["vocab_size"] == 110  # the corpus vocabulary only
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (students["bilstm"] / name).read_bytes() == (teacher / name).read_bytes()
    transformer = json.loads((students["transformer"] / "config.json").read_text())
    assert transformer["architectures"] == ["BertForSequenceClassification"]
    assert transformer["num_hidden_layers"] == 1


@pytest.mark.parametrize("kind, ops", [("bilstm", {"LSTM"}), ("cnn", {"Conv", "ReduceMax"})])
def test_student_exports_with_verified_parity(students, student_device, tiny_data, tmp_path, kind, ops):
    import onnx

    result = run_export(
        ExportRequest(
            model=students[kind], device=str(student_device), out_root=tmp_path, data=tiny_data, measure=False
        )
    )
    graph = onnx.load(result.out_dir / "model.onnx").graph
    assert ops <= {node.op_type for node in graph.node}
    if kind == "bilstm":  # per-text lengths reach the LSTM: padding is skipped, not computed
        lstm = next(node for node in graph.node if node.op_type == "LSTM")
        assert len(lstm.input) > 4 and lstm.input[4]
    assert [value.name for value in graph.input] == list(STUDENT_INPUTS)
    assert [a.file for a in result.report.artifacts] == ["model.onnx", "model.ort", "model.tflite"]
    for artifact in result.report.artifacts:
        assert artifact.parity["passed"] and artifact.parity["max_abs_diff"] <= 1e-4
    fuse = next(p for p in result.report.passes if p["name"] == "fuse_transformer")
    assert not fuse["fired"] and fuse["notes"] == [
        "skipped: no Softmax in the graph: nothing that looks like attention to fuse"
    ]


@pytest.mark.parametrize("kind", ["bilstm", "cnn"])
def test_student_exports_in_int8_to_every_runtime(students, student_device, tiny_data, tmp_path, kind):
    result = run_export(
        ExportRequest(
            model=students[kind],
            device=str(student_device),
            out_root=tmp_path,
            data=tiny_data,
            quantize="dynamic-int8",
            measure=False,
        )
    )
    quantize = next(p for p in result.report.passes if p["name"] == "quantize_dynamic")
    assert quantize["fired"] and quantize["lossy"]
    [onnx_artifact, _, tflite] = result.report.artifacts
    integer_op = "DynamicQuantizeLSTM" if kind == "bilstm" else "MatMulInteger"  # conv1d_as_matmul
    assert any(op.endswith(integer_op) for op in onnx_artifact.op_histogram), onnx_artifact.op_histogram
    assert tflite.parity_vs_onnxruntime["passed"]


def test_student_intake_is_strict(students, student_device, tiny_data, tmp_path):
    import shutil

    folder = Path(shutil.copytree(students["cnn"], tmp_path / "cnn"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "embedding_dim": 8}))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(folder),
            "--device",
            str(student_device),
            "--data",
            str(tiny_data),
            "-o",
            str(out),
            "--no-measure",
        ],
    )
    line = user_error(result, out)
    assert line.startswith(f"error: {folder}: weights do not match the config: 'embedding.weight' has shape ")


def test_transformer_student_exports_as_a_fused_bert(students, student_device, tiny_data, tmp_path):
    result = run_export(
        ExportRequest(
            model=students["transformer"], device=str(student_device), out_root=tmp_path, data=tiny_data, measure=False
        )
    )
    fuse = next(p for p in result.report.passes if p["name"] == "fuse_transformer")
    assert fuse["fired"] and fuse["stats"]["fused"].get("Attention") == 1
    assert all(artifact.parity["passed"] for artifact in result.report.artifacts)


# ---- the CLI ------------------------------------------------------------------------------------------------


def test_cli_distills_a_student(teacher, tiny_data, tmp_path):
    out = tmp_path / "cnn"
    result = distill_cli(
        teacher, "--student", "cnn", "--train-data", tiny_data, "--epochs", 1, "--seq-len", 16, "-o", out
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.splitlines() == [
        f"wrote {out}/",
        "held-out accuracy: not measured (give --eval-data FILE, "
        "labelled texts not in --train-data; `export` then judges the student "
        "against the teacher on its own --data when the teacher is there)",
    ]
    assert {"config.json", "model.safetensors", "vocab.txt", "training.json"} <= {p.name for p in out.iterdir()}


def test_cli_prints_and_records_held_out_accuracy_of_teacher_and_student(teacher, teacher_bundle, tiny_data, tmp_path):
    """Issue 17 item 11: the student records its teacher, and distill ends with both held-out accuracies."""
    from edgecompress.distill.held_out import checkpoint_digest

    held_out = write_csv(tmp_path / "held_out.csv", HELD_OUT)
    out = tmp_path / "cnn"
    result = distill_cli(
        teacher,
        "--student",
        "cnn",
        "--train-data",
        tiny_data,
        "--epochs",
        1,
        "--seq-len",
        16,
        "--eval-data",
        held_out,
        "-o",
        out,
    )
    assert result.exit_code == 0, (result.output, result.exception)
    record = json.loads((out / "training.json").read_text())
    assert record["teacher"]["path"] == str(teacher.resolve())
    assert record["teacher"]["digest"] == checkpoint_digest(teacher)
    teacher_accuracy = float(
        np.mean(
            predictions(teacher_bundle, [t for t, _ in HELD_OUT])
            == [teacher_bundle.labels.index(label) for _, label in HELD_OUT]
        )
    )
    assert record["teacher"]["held_out"]["accuracy"] == teacher_accuracy
    student = record["student_held_out"]["accuracy"]
    assert result.stdout.splitlines()[-1] == (
        f"held-out accuracy on held_out.csv (4 texts, 16 tokens): teacher {100 * teacher_accuracy:.2f}%, student "
        f"{100 * student:.2f}% ({100 * (teacher_accuracy - student):+.2f} points below the teacher)"
    )


HELD_OUT = [
    ("a great film", "positive"),
    ("dull and awful", "negative"),
    ("i hated this movie", "negative"),
    ("fun story", "positive"),
]


def test_distill_warns_when_seq_len_is_shorter_than_most_training_texts(teacher, tiny_data, tmp_path, caplog):
    """Issue 17 item 13."""
    long_rows = [
        (" ".join(["the very good movie"] * 4), "positive"),
        (" ".join(["an awful plot"] * 5), "negative"),
        ("fun", "positive"),
    ]
    data = write_csv(tmp_path / "long.csv", long_rows)
    with caplog.at_level("WARNING", logger="edgecompress.distill"):
        plan_distillation(request(teacher, data, tmp_path / "out", "cnn"))  # seq_len 16
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        w.startswith("--seq-len 16 is shorter than most training texts: 2 of 3 (67%) are longer") for w in warnings
    ), warnings
    assert any(
        w.startswith("--seq-len 16 is shorter than the 128 tokens the student will be exported at (") for w in warnings
    ), warnings


def assert_nothing_written(result, out: Path) -> str:
    line = user_error(result, out)
    assert not out.exists() and not work_dir(out).exists()
    return line


def test_cli_rejects_a_student_config_that_does_not_fit_the_tokenizer(teacher, tiny_data, tmp_path):
    config = tmp_path / "student.json"
    config.write_text(json.dumps({"vocab_size": 30522}))
    out = tmp_path / "out"
    line = assert_nothing_written(
        distill_cli(teacher, "--student", "bilstm", "--train-data", tiny_data, "--student-config", config, "-o", out),
        out,
    )
    assert line == (
        f"error: {config}: student vocab_size 30522 does not match the tokenizer's 110 tokens; "
        f"hint: the student reads the teacher tokenizer's ids; drop vocab_size from the config"
    )


def test_cli_rejects_a_teacher_without_a_classification_head(tiny_encoder, tiny_data, tmp_path):
    out = tmp_path / "out"
    line = assert_nothing_written(
        distill_cli(tiny_encoder, "--student", "cnn", "--train-data", tiny_data, "-o", out), out
    )
    assert line.startswith(
        f"error: {tiny_encoder / 'config.json'}: the teacher has no classification head, "
        f"so there are no logits to distill; expected architectures"
    )


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([], ("text", "label"), "data file has no rows"),
        ([("a good movie",)], ("text",), "no label column among ['text']"),
    ],
)
def test_cli_rejects_empty_or_unlabelled_training_data(teacher, tmp_path, rows, header, message):
    data = write_csv(tmp_path / "train.csv", rows, header=header)
    out = tmp_path / "out"
    line = assert_nothing_written(distill_cli(teacher, "--student", "cnn", "--train-data", data, "-o", out), out)
    assert line.startswith(f"error: {data}: {message}")


def test_cli_rejects_transformer_losses_for_a_bilstm(teacher, tiny_data, tmp_path):
    out = tmp_path / "out"
    line = assert_nothing_written(
        distill_cli(teacher, "--student", "bilstm", "--train-data", tiny_data, "--hidden-weight", 1, "-o", out), out
    )
    assert line.startswith("error: distillation losses: hidden-state and attention losses need a transformer student")


# ---- import cost --------------------------------------------------------------------------------------------


def test_importing_the_distill_modules_imports_no_torch():
    """The pass registry imports every module under edgecompress.compress; torch costs seconds to import."""
    code = (
        "import importlib, pkgutil, sys, edgecompress.distill as d\n"
        "for m in pkgutil.walk_packages(d.__path__, d.__name__ + '.'): importlib.import_module(m.name)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
