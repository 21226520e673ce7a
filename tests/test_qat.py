"""Quantization-aware training: the fake quantizers (STE, grids that match ONNX Runtime's), wrapping and
unwrapping a BERT, the `qat` pass (fires, declines with a reason, bad input), resumable recovery
training (an interrupted run ends with the weights of an uninterrupted one), and the int8-qat recipe."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.compress._fake_quant import (
    INT8_REDUCED,
    INT8_SYMMETRIC,
    UINT8,
    ActivationQuantizer,
    QuantEmbedding,
    QuantLinear,
    fake_quantize,
    fake_quantize_weight,
    unwrap_encoder,
    wrap_encoder,
    wrapped_count,
)
from edgecompress.compress._recovery import CHECKPOINT_FILE, Recovery, recover, training_digest
from edgecompress.compress._taskdata import task_data
from edgecompress.compress.qat import Qat, calibrate_ranges, split
from edgecompress.errors import UserError
from edgecompress.intake.data import load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import PassContext, apply_pass
from edgecompress.pipeline import ExportRequest, run_export
from edgecompress.recipe import load_recipe

from conftest import SENTENCES, user_error, write_csv
from helpers import pass_context

SEQ = 16
TEXTS = [text for text, _ in SENTENCES]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Checkpoints go under <cache>/work: keep each test's apart from the user's cache."""
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint):
    return load_bundle(tiny_checkpoint)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("train") / "train.csv", SENTENCES * 2)


def context(bundle, train_csv=None, *, labelled=True) -> PassContext:
    train = None if train_csv is None else load_dataset(train_csv, require_labels=labelled)
    return pass_context(bundle, seq_len=SEQ, train_data=train)


@pytest.fixture(scope="module")
def inputs(bundle) -> tuple[torch.Tensor, ...]:
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=SEQ, input_names=bundle.input_names)
    return tuple(torch.from_numpy(feeds[name]) for name in bundle.input_names)


def outputs(module, inputs) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(*inputs)


def sqnr_db(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    noise = float(((reference - candidate) ** 2).sum())
    return 10 * math.log10(float((reference**2).sum()) / noise)


@pytest.fixture()
def module(bundle):
    """A private copy of the tiny classifier's torch module."""
    return copy.deepcopy(bundle.module)


# --- fake quantizers ------------------------------------------------------------------------------


def test_straight_through_gradient_is_one_inside_the_range_and_zero_outside():
    x = torch.tensor([-3.0, -1.0, -0.4, 0.0, 0.37, 0.99, 1.5], requires_grad=True)
    y = fake_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), INT8_SYMMETRIC)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    step = 1 / 127
    assert torch.all((y - x.clamp(-1, 1)).abs() <= step / 2 + 1e-7)  # round to nearest inside the range
    assert y[0].item() == pytest.approx(-1.0) and y[-1].item() == pytest.approx(1.0)  # clipped outside


def test_weights_take_at_most_255_values_per_row_on_multiples_of_max_over_127():
    torch.manual_seed(0)
    weight = torch.randn(16, 1000)
    quantized = fake_quantize_weight(weight, INT8_SYMMETRIC, per_row=True)
    for row, original in zip(quantized, weight):
        assert len(torch.unique(row)) <= 255
        scale = original.abs().max() / 127
        steps = row / scale
        torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)
        assert steps.abs().max().item() == pytest.approx(127)
    reduced = fake_quantize_weight(weight, INT8_REDUCED, per_row=True)
    assert max(len(torch.unique(row)) for row in reduced) <= 129
    assert sqnr_db(weight, quantized) > 35  # about 6 dB per bit; a bug in scale or rounding falls far below


def test_uint8_activation_range_holds_zero_exactly():
    x = torch.tensor([0.0, 0.5, 1.7, 3.0])  # all positive: ONNX Runtime still widens the range to include 0
    y = fake_quantize(x, x.min(), x.max(), UINT8)
    assert y[0].item() == 0.0
    assert (y - x).abs().max().item() <= 3.0 / 255 / 2 + 1e-6


def test_grids_match_onnxruntime_quantizer_so_snapped_weights_requantize_exactly():
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    torch.manual_seed(1)
    weight = torch.randn(4, 64)
    for grid, reduce_range in ((INT8_SYMMETRIC, False), (INT8_REDUCED, True)):
        snapped = fake_quantize_weight(weight, grid, per_row=True)
        for row in snapped.numpy():
            zero, scale, q = quantize_data(row, TensorProto.INT8, symmetric=True, reduce_range=reduce_range)
            np.testing.assert_allclose((q.astype(np.float32) - zero) * scale, row, rtol=0, atol=1e-6)
    table = fake_quantize_weight(weight, UINT8, per_row=False).numpy()
    zero, scale, q = quantize_data(table.ravel(), TensorProto.UINT8, symmetric=False)
    np.testing.assert_allclose((q.astype(np.float32) - zero) * scale, table.ravel(), rtol=0, atol=1e-6)


def test_static_activation_range_is_tracked_in_training_and_frozen_in_eval():
    quantizer = ActivationQuantizer(momentum=0.5).eval()
    assert torch.equal(quantizer(torch.tensor([5.3])), torch.tensor([5.3]))  # never observed: passes through
    quantizer.train()
    quantizer(torch.tensor([-1.0, 2.0]))
    quantizer(torch.tensor([-3.0, 4.0]))
    assert (quantizer.low.item(), quantizer.high.item()) == (-2.0, 3.0)  # 0.5 * first + 0.5 * second
    quantizer.eval()
    clipped = quantizer(torch.tensor([-10.0, 10.0]))
    assert (quantizer.low.item(), quantizer.high.item()) == (-2.0, 3.0)
    assert clipped.tolist() == pytest.approx([-2.0, 3.0], abs=5 / 255)


def test_dynamic_activation_range_is_each_texts_own():
    quantizer = ActivationQuantizer(dynamic=True)
    x = torch.stack([torch.linspace(-1, 1, 50), torch.linspace(-100, 100, 50)])[:, :, None]
    y = quantizer(x)
    assert (y[0] - x[0]).abs().max().item() <= 2 / 255  # the small text is not drowned by the large one
    assert (y[1] - x[1]).abs().max().item() <= 200 / 255


# --- wrapping a BERT ------------------------------------------------------------------------------


def test_wrap_replaces_every_linear_and_the_word_embeddings(module, inputs):
    reference = outputs(module, inputs)
    count = wrap_encoder(module.hf_model)
    linears = [m for m in module.modules() if isinstance(m, QuantLinear)]
    assert count == len(linears) + 1 == 2 * 6 + 2 + 1  # q k v, attention out, ffn in, ffn out; pooler, classifier
    assert isinstance(module.hf_model.bert.embeddings.word_embeddings, QuantEmbedding)
    query = module.hf_model.bert.encoder.layer[0].attention.self.query
    key = module.hf_model.bert.encoder.layer[0].attention.self.key
    assert query.weight_grid == INT8_REDUCED and query.input_quantizer is key.input_quantizer
    module.eval()
    fake = outputs(module, inputs)
    assert not torch.equal(fake, reference)
    assert sqnr_db(reference, fake) > 20  # int8 keeps the logits close


def test_unwrap_restores_plain_modules_with_the_fine_tuned_weights(module, bundle, train_csv, inputs):
    wrap_encoder(module.hf_model)
    module.train()
    batch = next(task_data(bundle, load_dataset(train_csv, require_labels=True), seq_len=SEQ).batches(4, seed=0))
    module(*batch.inputs).sum().backward()
    with torch.no_grad():
        for p in module.parameters():
            p -= 0.01 * p.grad  # a training step through the fake quantizers
    fake = outputs(module, inputs)
    assert unwrap_encoder(module.hf_model) == 15 and wrapped_count(module) == 0
    kinds = {type(m) for m in module.modules()}
    assert QuantLinear not in kinds and QuantEmbedding not in kinds
    assert set(module.state_dict()) == set(bundle.module.state_dict())
    plain = copy.deepcopy(bundle.module)
    plain.load_state_dict(module.state_dict())
    unwrapped = outputs(module, inputs)
    torch.testing.assert_close(unwrapped, outputs(plain, inputs), rtol=0, atol=0)
    assert not torch.equal(unwrapped, outputs(bundle.module, inputs))  # the weights were trained
    assert sqnr_db(unwrapped, fake) > 20  # the same model up to the quantization


def test_unwrap_with_snap_leaves_weights_on_their_grid(module):
    wrap_encoder(module.hf_model)
    unwrap_encoder(module.hf_model, snap=True)
    layer = module.hf_model.bert.encoder.layer[0]
    for linear, grid in ((layer.attention.self.query, INT8_REDUCED), (layer.output.dense, INT8_SYMMETRIC)):
        torch.testing.assert_close(
            fake_quantize_weight(linear.weight, grid, per_row=True), linear.weight, rtol=0, atol=1e-7
        )


# --- the qat pass ---------------------------------------------------------------------------------


def test_qat_fires_trains_under_fake_int8_and_ships_plain_float_modules(bundle, train_csv, private_cache, caplog):
    ctx = context(bundle, train_csv)
    with caplog.at_level(logging.INFO, logger="edgecompress"):
        result, record = apply_pass(Qat(epochs=2.0, batch_size=4, holdout=0.25), bundle, ctx)
    assert record.fired and record.lossy
    stats = record.stats
    assert (stats["training_texts"], stats["held_out_texts"], stats["steps"]) == (18, 6, 10)
    assert stats["wrapped_modules"] == 13 and stats["resumed_from_step"] == 0  # not the pooler and classifier
    assert set(stats["held_out_agreement"]) == {"fake_int8_before", "fake_int8_after", "float_after"}
    assert all(0.0 <= v <= 1.0 for v in stats["held_out_agreement"].values())
    assert record.notes[0].startswith("fine-tuned 13 fake-int8 modules (weights int8 per channel, Q/K/V 7-bit")
    assert "qat: step 10/10" in caplog.text
    assert wrapped_count(result.module) == 0
    assert {type(m) for m in result.module.modules()} == {type(m) for m in bundle.module.modules()}
    assert result.config == bundle.config and result.tokenizer is bundle.tokenizer
    new_weight = result.module.hf_model.bert.encoder.layer[1].output.dense.weight
    assert not torch.equal(new_weight, bundle.module.hf_model.bert.encoder.layer[1].output.dense.weight)
    torch.testing.assert_close(
        fake_quantize_weight(new_weight, INT8_SYMMETRIC, per_row=True), new_weight, rtol=0, atol=1e-7
    )  # snapped: quantize_static will find it on the grid
    classifier = result.module.hf_model.classifier.weight  # trained in float, as the graph runs it
    assert not torch.equal(fake_quantize_weight(classifier, INT8_SYMMETRIC, per_row=True), classifier)
    assert not (private_cache / "work").exists() or not any((private_cache / "work").iterdir())  # checkpoint gone


def test_qat_on_a_sentence_encoder_distils_the_embedding(tiny_encoder, train_csv):
    encoder = load_bundle(tiny_encoder)
    _, record = apply_pass(Qat(batch_size=8, holdout=0.25), encoder, context(encoder, train_csv, labelled=False))
    assert record.fired
    assert -1.0 <= record.stats["held_out_mean_cosine"]["fake_int8_after"] <= 1.0
    assert "mean_cosine with the float model on 6 held-out training texts" in record.notes[1]


@pytest.mark.parametrize(
    "module, reason",
    [
        (None, "the model came in as ONNX: there is no torch module to fine-tune"),
        (
            nn.Sequential(),
            "Sequential is not a transformer encoder: fake quantization wraps a transformers encoder's Linear layers",
        ),
    ],
)
def test_qat_skips_a_model_without_a_bert_module_and_says_why(bundle, train_csv, module, reason):
    other = dataclasses.replace(bundle, module=module)
    result, record = apply_pass(Qat(), other, context(bundle, train_csv))
    assert result is other and not record.fired
    assert record.notes == [f"skipped: {reason}"]


def test_qat_without_train_data_names_the_option(bundle):
    with pytest.raises(
        UserError,
        match=r"pass 'qat' fine-tunes the model under simulated int8 on training "
        r"texts, but none were given; expected --train-data",
    ):
        apply_pass(Qat(), bundle, context(bundle))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("holdout", 1.0, r"option 'holdout' of pass 'qat' must be in \[0, 1\), got 1.0"),
        ("batch_size", 0, r"option 'batch_size' of pass 'qat' must be positive, got 0"),
        ("momentum", -0.1, r"option 'momentum' of pass 'qat' must be in \[0, 1\)"),
    ],
)
def test_qat_rejects_bad_options(bundle, train_csv, option, value, message):
    with pytest.raises(UserError, match=message):
        apply_pass(Qat(**{option: value}), bundle, context(bundle, train_csv))


def test_holdout_split_is_seeded_and_disjoint(bundle, train_csv):
    data = task_data(bundle, load_dataset(train_csv, require_labels=True), seq_len=SEQ)
    training, held = split(data, 0.25, seed=3)
    assert (len(training), len(held)) == (18, 6)
    again, _ = split(data, 0.25, seed=3)
    assert again.ids == training.ids
    assert sorted(map(tuple, training.ids + held.ids)) == sorted(map(tuple, data.ids))


# --- resumable recovery -------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _qat_student(bundle):
    student = copy.deepcopy(bundle.module)
    wrap_encoder(student.hf_model)  # fake-quant buffers (EMA ranges) must be saved and restored too
    return student


def _train(bundle, data, options, checkpoint_dir, *, stop_after=None):
    torch.manual_seed(7)  # dropout draws: a resumed run must continue the same sequence
    student = _qat_student(bundle)

    def interrupt(step):
        if step == stop_after:
            raise Interrupted

    try:
        result = recover(
            student,
            bundle.module,
            data,
            options,
            seed=0,
            label="test",
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=2,
            on_step=interrupt,
        )
    except Interrupted:
        return student, None
    return student, result


def test_an_interrupted_training_resumes_and_ends_with_the_uninterrupted_weights(bundle, train_csv, tmp_path):
    data = task_data(bundle, load_dataset(train_csv, require_labels=True), seq_len=SEQ)
    options = Recovery(epochs=1.0, lr=1e-3, batch_size=4, temperature=2.0, hidden_weight=1.0)  # 6 steps
    straight, expected = _train(bundle, data, options, None)

    folder = tmp_path / "checkpoint"
    _, interrupted = _train(bundle, data, options, folder, stop_after=5)
    assert interrupted is None and (folder / CHECKPOINT_FILE).is_file()  # saved after step 4
    resumed, result = _train(bundle, data, options, folder)

    assert result["resumed_from_step"] == 4 and result["steps"] == 6
    assert (result["loss_first"], result["loss_last"]) == (expected["loss_first"], expected["loss_last"])
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not folder.exists()  # deleted once training completed


def test_a_checkpoint_of_another_run_is_ignored(bundle, train_csv, tmp_path, caplog):
    data = task_data(bundle, load_dataset(train_csv, require_labels=True), seq_len=SEQ)
    options = Recovery(epochs=1.0, lr=1e-3, batch_size=4, temperature=2.0, hidden_weight=1.0)
    folder = tmp_path / "checkpoint"
    _train(bundle, data, options, folder, stop_after=3)
    other = dataclasses.replace(options, lr=5e-4)
    with caplog.at_level(logging.WARNING, logger="edgecompress.compress"):
        _, result = _train(bundle, data, other, folder)
    assert result["resumed_from_step"] == 0
    assert "saved by a run with other weights, data or options" in caplog.text


def test_training_digest_changes_with_data_options_and_weights(bundle, train_csv):
    data = task_data(bundle, load_dataset(train_csv, require_labels=True), seq_len=SEQ)
    options = Recovery(epochs=1.0, lr=1e-3, batch_size=4, temperature=2.0, hidden_weight=1.0)
    student = copy.deepcopy(bundle.module)
    base = training_digest(student, bundle.module, data, options, 0)
    assert training_digest(copy.deepcopy(bundle.module), bundle.module, data, options, 0) == base
    assert training_digest(student, bundle.module, data, options, 1) != base
    assert training_digest(student, bundle.module, dataclasses.replace(data, ids=data.ids[1:]), options, 0) != base
    with torch.no_grad():
        student.hf_model.classifier.bias += 1
    assert training_digest(student, bundle.module, data, options, 0) != base


# --- recipe and end to end ----------------------------------------------------------------------


def test_int8_qat_recipe_is_qat_then_the_int8_graph_passes():
    qat, int8 = load_recipe("int8-qat"), load_recipe("int8")
    assert [p.name for p in qat.compress] == ["qat"]
    assert qat.graph == int8.graph


def test_int8_qat_recipe_exports_and_verifies(tiny_checkpoint, tiny_device, train_csv, tmp_path):
    data = write_csv(tmp_path / "eval.csv", SENTENCES)
    result = run_export(
        ExportRequest(
            model=tiny_checkpoint,
            device=str(tiny_device),
            out_root=tmp_path / "dist",
            data=data,
            train_data=train_csv,
            recipe="int8-qat",
            measure=False,
        )
    )
    records = {r["name"]: r for r in result.report.passes}
    assert records["qat"]["fired"] and records["quantize_static"]["fired"]
    onnx_artifact = next(a for a in result.report.artifacts if a.kind == "onnx")
    assert onnx_artifact.parity["prediction_agreement"] >= 0.95


def test_export_with_int8_qat_but_no_train_data_is_a_one_line_user_error(
    tiny_checkpoint, tiny_device, tiny_data, tmp_path
):
    from click.testing import CliRunner

    from edgecompress.cli import main

    out = tmp_path / "dist"
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(tiny_device),
            "--data",
            str(tiny_data),
            "-o",
            str(out),
            "--recipe",
            "int8-qat",
            "--no-measure",
        ],
    )
    assert user_error(result, out) == (
        "error: pass 'qat' fine-tunes the model under simulated int8 on training "
        "texts, but none were given; expected --train-data (a labelled CSV, TSV "
        "or JSONL file)"
    )


def test_export_shows_training_progress_without_verbose(
    tiny_checkpoint, tiny_device, tiny_data, train_csv, private_cache, tmp_path
):
    from click.testing import CliRunner

    from edgecompress.cli import main

    runner = CliRunner()
    for out in (tmp_path / "first", tmp_path / "second"):  # the second run must not write to a stale stream
        result = runner.invoke(
            main,
            [
                "export",
                str(tiny_checkpoint),
                "--device",
                str(tiny_device),
                "--data",
                str(tiny_data),
                "--train-data",
                str(train_csv),
                "-o",
                str(out),
                "--recipe",
                "int8-qat",
                "--no-measure",
            ],
        )
        assert result.exit_code in (0, 3), result.output
        progress = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("qat: step")]
        assert progress and progress[-1].startswith("qat: step ") and " left" in progress[-1]
        assert "Logging error" not in result.stderr


@pytest.mark.slow
def test_fake_int8_minilm_stays_close_to_float_and_qat_fires(minilm_dir, train_csv):
    """The real MiniLM encoder under the simulated int8 of quantize_static, then a few steps of the pass."""
    minilm = load_bundle(minilm_dir)
    feeds = tokenize(minilm.tokenizer, TEXTS, seq_len=SEQ, input_names=minilm.input_names)
    real_inputs = tuple(torch.from_numpy(feeds[name]) for name in minilm.input_names)
    fake = copy.deepcopy(minilm.module)
    wrap_encoder(fake.hf_model)
    calibrate_ranges(fake, task_data(minilm, load_dataset(train_csv, require_labels=False), seq_len=SEQ), 8, 0)
    # measured 15.5 dB (embeddings), mostly from per-tensor uint8 activations; a wrong scale is far below
    assert sqnr_db(outputs(minilm.module, real_inputs), outputs(fake, real_inputs)) > 12
    _, record = apply_pass(Qat(batch_size=6, holdout=0.25), minilm, context(minilm, train_csv, labelled=False))
    assert record.fired and record.stats["steps"] == 3
    assert record.stats["held_out_mean_cosine"]["float_after"] > 0.9


def test_quantized_embedding_lookup_equals_a_lookup_in_the_quantized_table(bundle):
    embedding = copy.deepcopy(bundle.module.hf_model.bert.embeddings.word_embeddings)
    ids = torch.tensor([[2, 7, 30, 0], [2, 50, 3, 0]])
    table = fake_quantize_weight(embedding.weight.detach(), UINT8, per_row=False)
    torch.testing.assert_close(QuantEmbedding(embedding)(ids), table[ids], rtol=0, atol=1e-7)


def test_wrap_leaves_the_named_linears_float(module):
    count = wrap_encoder(module.hf_model, keep_float=("bert.pooler.dense", "classifier"))
    assert count == 13
    assert type(module.hf_model.classifier) is nn.Linear and type(module.hf_model.bert.pooler.dense) is nn.Linear
