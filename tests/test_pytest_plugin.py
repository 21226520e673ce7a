"""The pytest plugin for app teams' latency tests, run by pytester in a real pytest subprocess: on the host, and
on the loopback ssh server (tests/sshd_server.py) with --edgecompress-target."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import onnx
import pytest

import edgecompress

import sshd_server
from test_litert_runner import tiny_bert_like

pytest_plugins = ["pytester"]
ssh_server = sshd_server.ssh_server  # the session's loopback server (a fixture)
REPO = Path(edgecompress.__file__).resolve().parents[1]
TEAM_TEST = """
from edgecompress.testing import assert_latency

def test_fast_enough():
    result = assert_latency({model!r}, p90_ms=10000, runs=3, warmup=1)
    assert result["measured_on"] == {where!r}

def test_too_slow():
    assert_latency({model!r}, p90_ms=0.000001, runs=3, warmup=1)
"""


def plugin_args() -> list[str]:
    """`-p` the plugin unless its entry point is installed (then pytest loads it by itself)."""
    installed = any(e.value == "edgecompress.testing.pytest_plugin" for e in entry_points(group="pytest11"))
    return [] if installed else ["-p", "edgecompress.testing.pytest_plugin"]


@pytest.fixture
def team_project(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # this checkout's edgecompress in the subprocess
    model = tmp_path / "model.onnx"
    onnx.save(tiny_bert_like(), str(model))
    return pytester, model


def run_team_tests(pytester, model: Path, where: str, *args: str):
    pytester.makepyfile(test_latency=TEAM_TEST.format(model=str(model), where=where))
    return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", *args)


def test_on_the_host_a_bound_passes_and_a_miss_fails_with_the_figures(team_project):
    pytester, model = team_project
    result = run_team_tests(pytester, model, "host")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "edgecompress: assert_latency measures on host",
            "*AssertionError: model.onnx on host: p90 * ms > 1e-06 ms [[]measured on host (onnxruntime *",
        ]
    )


def test_on_an_ssh_board_the_same_test_measures_there(team_project, ssh_server):
    pytester, model = team_project
    options = [
        f"--edgecompress-target={ssh_server.target}",
        f"--edgecompress-ssh-config={ssh_server.config}",
        f"--edgecompress-remote-python={sys.executable}",
    ]
    result = run_team_tests(pytester, model, ssh_server.target, *options)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*model.onnx on {ssh_server.target}: p90 * ms > 1e-06 ms*"])
    assert ssh_server.leftovers() == []


def test_a_malformed_target_stops_the_session_with_one_line(team_project):
    pytester, model = team_project
    result = run_team_tests(pytester, model, "host", "--edgecompress-target=telnet://board")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--edgecompress-target: --on: unknown target 'telnet://board'*"])
