"""Long runs say they are alive (issue 17): progress with rate and time left reaches a log, not only a terminal."""

from __future__ import annotations

import re

from click.testing import CliRunner

from edgecompress.cli import _StderrProgress, main


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_one_line_every_few_seconds_with_rate_and_time_left(capsys):
    clock = Clock()
    progress = _StderrProgress(clock=clock)
    progress.stage_started(7, 10, "verify", "100000 texts")
    for done in range(0, 100_001, 100):  # 100 texts every 0.1 s: 1,000 texts/s for 100 s
        progress.advanced("verify model.onnx", done, 100_000)
        clock.now += 0.1
    lines = [line.strip() for line in capsys.readouterr().err.splitlines()][1:]
    assert 18 <= len(lines) <= 21, lines  # one every 5 s, not one per call
    assert re.fullmatch(r"verify model\.onnx: 5[01]00/100000 \(5%\), 1000 texts/s, 1 min 35 s left", lines[0])
    assert all(", 1000 texts/s, " in line for line in lines), lines


def test_a_step_run_again_under_the_same_name_restarts_its_rate(capsys):
    clock = Clock()
    progress = _StderrProgress(clock=clock)
    progress.stage_started(3, 10, "compress", "")
    for _run in range(2):
        for done in range(0, 1001, 10):
            progress.advanced("reference", done, 1000)
            clock.now += 0.1
    lines = capsys.readouterr().err.splitlines()[1:]
    assert all("100 texts/s" in line for line in lines), lines


def test_a_step_whose_first_report_comes_late_still_gets_a_rate(capsys):
    clock = Clock()
    progress = _StderrProgress(clock=clock)
    progress.stage_started(7, 10, "verify", "")
    clock.now = 6.0  # the first bucket of 600 texts took 6 s before the step said anything
    progress.advanced("buckets model.tflite", 600, 1200)
    assert (
        capsys.readouterr().err.splitlines()[-1].strip()
        == "buckets model.tflite: 600/1200 (50%), 100 texts/s, 6 s left"
    )


def test_an_export_into_a_log_prints_progress_lines(tiny_checkpoint, tiny_device, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(_StderrProgress, "LOG_EVERY_S", 0.0)
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
            str(tmp_path / "out"),
            "--no-measure",
        ],
    )
    assert result.exit_code == 0, result.output
    progress = [line.strip() for line in result.stderr.splitlines() if "texts/s" in line]
    assert any(line.startswith("verify model.onnx: 12/12 (100%)") for line in progress), result.stderr
