"""A student's accuracy drop is judged against its teacher (issue 17, item 11).

A "student" here is any checkpoint whose training.json names a teacher, as distill writes it: the export
reads that record, whatever the architecture, so tiny BERTs stand in for both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.distill.held_out import checkpoint_digest
from edgecompress.intake.data import label_ids, load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.verify.evaluate import reference_outputs

from conftest import build_tiny_checkpoint


def _student(tmp_path: Path, source: Path, teacher: Path, held_out: dict | None = None) -> Path:
    folder = Path(shutil.copytree(source, tmp_path / "student"))
    record = {
        "kind": "transformer",
        "teacher": {"path": str(teacher), "digest": checkpoint_digest(teacher), "held_out": held_out},
    }
    (folder / "training.json").write_text(json.dumps(record))
    return folder


def _export(student, device, data, out):
    result = CliRunner().invoke(
        main, ["export", str(student), "--device", str(device), "--data", str(data), "-o", str(out), "--no-measure"]
    )
    return result, json.loads((out / "tinyphone" / "report.json").read_text()) if result.exit_code in (0, 3) else None


def _accuracy(folder: Path, data: Path) -> float:
    bundle = load_bundle(folder)
    dataset = load_dataset(data, require_labels=True)
    feeds = tokenize(bundle.tokenizer, dataset.texts, seq_len=16, input_names=bundle.input_names)
    return float(np.mean(reference_outputs(bundle, feeds).argmax(-1) == label_ids(dataset, bundle.labels)))


def _accuracy_verdict(report: dict) -> dict:
    return next(v for v in report["artifacts"][0]["verdicts"] if v["budget"].startswith("accuracy drop"))


def test_a_reachable_teacher_is_measured_on_the_same_data(tiny_checkpoint, tiny_device, tiny_data, tmp_path):
    teacher = build_tiny_checkpoint(tmp_path / "teacher", seed=5)
    result, report = _export(_student(tmp_path, tiny_checkpoint, teacher), tiny_device, tiny_data, tmp_path / "out")
    assert result.exit_code in (0, 3), result.output
    expected = _accuracy(teacher, tiny_data)
    assert report["data"]["teacher"]["accuracy"] == expected and report["data"]["teacher"]["how"] == "measured"
    verdict = _accuracy_verdict(report)
    assert f"({100 * expected:.2f}% teacher -> " in verdict["budget"]
    assert verdict["value"] == 100 * (expected - report["artifacts"][0]["accuracy"]["value"])


def test_an_unreachable_teacher_falls_back_to_the_recorded_figure_and_says_so(
    tiny_checkpoint, tiny_device, tiny_data, tmp_path
):
    teacher = build_tiny_checkpoint(tmp_path / "teacher", seed=5)
    held_out = {
        "accuracy": 1.0,
        "texts": 200,
        "data": str(tmp_path / "held_out.csv"),
        "seq_len": 64,
        "method": "torch eager on 200 labelled texts of held_out.csv, cut to 64 tokens",
    }
    student = _student(tmp_path, tiny_checkpoint, teacher, held_out)
    shutil.rmtree(teacher)
    result, report = _export(student, tiny_device, tiny_data, tmp_path / "out")
    assert result.exit_code == 3, result.output  # the student is far below the teacher's 100%
    verdict = _accuracy_verdict(report)
    assert "(100.00% teacher (recorded) -> " in verdict["budget"] and verdict["how"] == "recorded"
    assert any(
        note.startswith(
            f"the teacher is not at {teacher}: the accuracy drop is judged against the teacher's "
            f"accuracy that distill recorded on held_out.csv (200 texts)"
        )
        for note in report["notes"]
    ), report["notes"]


def test_a_changed_teacher_is_not_trusted(tiny_checkpoint, tiny_device, tiny_data, tmp_path):
    teacher = Path(shutil.copytree(tiny_checkpoint, tmp_path / "teacher"))
    student = _student(tmp_path, tiny_checkpoint, teacher)
    (teacher / "model.safetensors").write_bytes((teacher / "model.safetensors").read_bytes() + b"")
    config = json.loads((teacher / "config.json").read_text())
    config["_note"] = "edited"
    (teacher / "config.json").write_text(json.dumps(config))
    result, report = _export(student, tiny_device, tiny_data, tmp_path / "out")
    assert result.exit_code in (0, 3), result.output
    assert _accuracy_verdict(report)["budget"].count("uncompressed") == 1  # the student's own float model
    assert any(note.startswith(f"the teacher at {teacher} has changed since distillation") for note in report["notes"])
