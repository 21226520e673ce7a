"""Verification batches a batch-1 .onnx where no op mixes rows, and only there (issue 17, long runs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompress.backends.ort import batched
from edgecompress.backends.ort.artifact import run_ort_artifact
from edgecompress.cli import main
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.verify import evaluate

from conftest import WORDS


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tiny_device, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batched")
    folders = {}
    for mode in ("none", "dynamic-int8"):
        out = root / mode
        result = CliRunner().invoke(
            main,
            [
                "export",
                str(tiny_checkpoint),
                "--device",
                str(tiny_device),
                "-o",
                str(out),
                "--quantize",
                mode,
                "--no-measure",
            ],
        )
        assert result.exit_code == 0, result.output
        folders[mode] = out / "tinyphone"
    return folders


@pytest.fixture(scope="module")
def feeds(tiny_checkpoint):
    bundle = load_bundle(tiny_checkpoint)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(1, 14))) for _ in range(100)]
    return tokenize(bundle.tokenizer, texts, seq_len=16, input_names=bundle.input_names)


def _calls(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = evaluate.run_session

    def counting(session, feeds, *, batch_size, **kwargs):
        sizes.append(batch_size)
        return real(session, feeds, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(evaluate, "run_session", counting)
    return sizes


def test_a_float_onnx_runs_in_batches_with_the_same_outputs_and_the_file_untouched(exports, feeds, monkeypatch):
    path = exports["none"] / "model.onnx"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    one_at_a_time = evaluate.run_session(
        evaluate.ort_session(str(path), threads=2, optimize=True), feeds, output_name="logits", batch_size=1
    )
    sizes = _calls(monkeypatch)
    outputs = run_ort_artifact(path, feeds, output_name="logits")
    assert sizes[-1] == batched.BATCH  # the whole run, after the proof on the first batch
    np.testing.assert_allclose(outputs, one_at_a_time, rtol=0, atol=batched.PROOF_ATOL)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_dynamic_int8_is_verified_one_text_at_a_time_because_its_ranges_mix_rows(exports, feeds, monkeypatch):
    path = exports["dynamic-int8"] / "model.onnx"
    assert batched.batched_copy(path) is None
    sizes = _calls(monkeypatch)
    run_ort_artifact(path, feeds, output_name="logits")
    assert sizes == [1]


def test_an_ort_file_is_run_as_it_is(exports, feeds, monkeypatch):
    sizes = _calls(monkeypatch)
    run_ort_artifact(exports["none"] / "model.ort", feeds, output_name="logits")
    assert sizes == [1]


def test_a_copy_that_differs_on_the_first_batch_is_not_used(exports, feeds, monkeypatch):
    monkeypatch.setattr(batched, "PROOF_ATOL", -1.0)  # nothing passes the proof
    sizes = _calls(monkeypatch)
    run_ort_artifact(exports["none"] / "model.onnx", feeds, output_name="logits")
    assert sizes == [batched.BATCH, 1, 1]  # the proof (both ways), then the file one text at a time
