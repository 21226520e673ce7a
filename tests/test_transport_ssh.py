"""The ssh transport end to end against a real OpenSSH server on loopback (tests/sshd_server.py): `bench --on`
and `export --on` through the system ssh/scp clients, and each failure as one line, exit 2, with nothing left
in the remote's temp folder.

The server is this machine, so "the remote" is a fresh folder under /tmp made by the remote shell's mktemp; the
remote Python is this interpreter (--remote-python), or a venv without onnxruntime, or a path that is not
there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edgecompress.backends.tflite.buckets import lower_to_tflite_buckets
from edgecompress.cli import main

import sshd_server
from test_litert_runner import tiny_bert_like
from test_tflite_buckets import embedding_model

ssh_server = sshd_server.ssh_server  # the session's loopback server (a fixture)
free_port, start_sshd = sshd_server.free_port, sshd_server.start_sshd
FAST = ["--runs", "3", "--warmup", "1"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssh-model") / "model.onnx"
    onnx.save(tiny_bert_like(), str(path))
    return path


@pytest.fixture(scope="module")
def bucketed_tflite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssh-buckets") / "model.tflite"
    path.write_bytes(lower_to_tflite_buckets({n: embedding_model(n) for n in (16, 32)}))
    return path


@pytest.fixture(scope="module")
def venv_without_runtime(tmp_path_factory) -> Path:
    """A real Python with nothing installed: what a fresh board has before `pip install onnxruntime`."""
    folder = tmp_path_factory.mktemp("bare-venv")
    venv.create(folder, with_pip=False)
    return folder / "bin" / "python"


def on(server, *extra, python: str | None = sys.executable) -> list[str]:
    args = ["--on", server.target, "--ssh-config", str(server.config)]
    return args + (["--remote-python", python] if python else []) + list(extra)


def bench(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["bench", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, *parts: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for part in parts:
        assert part in lines[0], lines[0]


# ---- it works ------------------------------------------------------------------------------------------------


def test_bench_on_ssh_runs_the_runner_remotely_and_leaves_nothing(ssh_server, tiny_onnx):
    before = ssh_server.leftovers()
    code, out, err = bench(tiny_onnx, *FAST, "--json", *on(ssh_server))
    assert code == 0, err
    result = json.loads(out)
    assert result["measured_on"] == ssh_server.target
    assert result["runner"] == "ort_runner" and result["runs"] == 3
    assert result["latency_ms"]["p90"] > 0 and result["output_digest"].startswith("sha256:")
    assert "copying model.onnx" in err  # progress lines on stderr
    assert ssh_server.leftovers() == before


def test_bench_on_ssh_says_where_it_measured(ssh_server, tiny_onnx):
    code, out, err = bench(tiny_onnx, *FAST, *on(ssh_server))
    assert code == 0, err
    assert f"measured on {ssh_server.target} (onnxruntime" in out


def test_a_bucketed_tflite_runs_the_signature_asked_for_on_the_remote(ssh_server, bucketed_tflite):
    code, out, err = bench(bucketed_tflite, *FAST, "--signature", "seq_16", "--json", *on(ssh_server))
    assert code == 0, err
    result = json.loads(out)
    assert result["signature"] == "seq_16" and result["signatures"] == ["seq_32", "seq_16"]
    assert result["inputs"]["input_ids"]["shape"] == [1, 16]


def test_export_on_ssh_judges_latency_by_the_remote_measurement(
    ssh_server, tiny_checkpoint, tiny_device, tiny_data, tmp_path
):
    args = ["export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", tmp_path, "--runs", "3"]
    result = CliRunner().invoke(main, [*map(str, args), *on(ssh_server)])
    assert result.exit_code in (0, 3), result.stderr
    report = json.loads((tmp_path / "tinyphone" / "report.json").read_text())
    for artifact in report["artifacts"]:
        measured = artifact["device_measured"]
        assert measured["measured_on"] == ssh_server.target
        assert measured["method"].startswith(f"measured on {ssh_server.target} (")
        latency = next(v for v in artifact["verdicts"] if v["budget"].startswith("p90 latency"))
        assert latency["budget"] == f"p90 latency (measured on {ssh_server.target})"
        assert latency["value"] == measured["p90_ms"] and latency["how"] == "measured"
    assert f"on {ssh_server.target}:" in (tmp_path / "tinyphone" / "report.md").read_text()
    assert ssh_server.leftovers() == []


# ---- bad input: one line, exit 2, nothing left on the remote ---------------------------------------------------


def test_a_remote_without_the_runtime_names_what_to_install(ssh_server, tiny_onnx, venv_without_runtime):
    code, _, err = bench(tiny_onnx, *FAST, *on(ssh_server, python=str(venv_without_runtime)))
    assert_one_line_error(
        code, err, "the remote Python lacks the runtime", f"install them there: {venv_without_runtime} -m pip install"
    )
    assert "numpy onnxruntime" in err
    assert ssh_server.leftovers() == []


def test_a_remote_without_python(ssh_server, tiny_onnx):
    code, _, err = bench(tiny_onnx, *FAST, *on(ssh_server, python="/opt/no-such-python3"))
    assert_one_line_error(code, err, "the remote has no Python: '/opt/no-such-python3' is not found there")
    assert ssh_server.leftovers() == []


def test_authentication_refused(ssh_server, tiny_onnx):
    target = ssh_server.target.replace(f"{ssh_server.user}@", "nobody-here@")
    code, _, err = bench(tiny_onnx, "--on", target, "--ssh-config", ssh_server.config)
    assert_one_line_error(code, err, f"{target}: authentication refused", "hint:")


def test_unreachable_host(ssh_server, tiny_onnx):
    target = f"ssh://{ssh_server.user}@127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = bench(tiny_onnx, "--on", target, "--ssh-config", ssh_server.config)
    assert_one_line_error(code, err, f"{target}: host unreachable (connection refused)")


def test_a_run_that_exceeds_its_time_bound_is_stopped_and_cleaned_up(ssh_server, tiny_onnx):
    code, _, err = bench(tiny_onnx, "--runs", "100000000", "--timeout", "3", *on(ssh_server))
    assert_one_line_error(code, err, "the run exceeded its time bound of 3 s and was stopped")
    assert ssh_server.leftovers() == []


def test_a_malformed_target_is_refused_before_any_work(tiny_onnx):
    code, _, err = bench(tiny_onnx, "--on", "ssh://host:notaport")
    assert_one_line_error(code, err, "cannot read ssh target 'ssh://host:notaport'")
    code, _, err = bench(tiny_onnx, "--on", "telnet://board")
    assert_one_line_error(code, err, "unknown target 'telnet://board'", "ssh://user@host[:port]")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a real full disk for the remote's temp folder (needs root to mount)."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_remote_disk(ssh_server, tiny_onnx, tiny_disk, tmp_path):
    (tiny_disk / "filler").write_bytes(b"\0" * 200_000)
    with start_sshd(tmp_path / "sshd", extra=f"SetEnv TMPDIR={tiny_disk}\n") as server:
        code, _, err = bench(tiny_onnx, *FAST, *on(server))
        assert_one_line_error(code, err, "remote disk full", "needed")
        assert [p.name for p in tiny_disk.iterdir()] == ["filler"]


def test_ctrl_c_removes_the_remote_folder(ssh_server, tiny_onnx):
    """A real SIGINT to a real `edgecompress bench` process mid-run: exit 130, the remote folder gone."""
    import signal
    import time

    cmd = [sys.executable, "-m", "edgecompress.cli", "bench", str(tiny_onnx), "--runs", "100000000"]
    process = subprocess.Popen([*cmd, *on(ssh_server)], stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 60
    while "running ort_runner" not in (line := process.stderr.readline()) and time.monotonic() < deadline:
        assert line, "bench ended before the remote run started"
    assert ssh_server.leftovers(), "the run should be under way in its remote folder"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert ssh_server.leftovers() == []
