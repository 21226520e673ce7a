"""The standalone onnxruntime runner (runtimes/ort_runner.py) and its host wrapper edgecompress.measure.runner."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends import backend_for
from edgecompress.errors import InternalError, UserError
from edgecompress.measure.runner import SCHEMA, describe, run_runner
from edgecompress.paths import runtimes_dir

RUNNER = runtimes_dir() / "ort_runner.py"
FAST = ["--runs", "5", "--warmup", "1"]
RESULT_KEYS = {
    "schema",
    "runner",
    "runtime",
    "runtime_version",
    "artifact",
    "artifact_bytes",
    "threads",
    "runs",
    "warmup",
    "inputs",
    "load_ms",
    "latency_ms",
    "peak_rss_mb",
    "baseline_rss_mb",
    "outputs",
    "output_digest",
    "host",
    "python",
}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def tiny_bert_like() -> onnx.ModelProto:
    """Embedding lookup + projection + masked mean: the input/output conventions of a BERT encoder."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((2000, 8)).astype(np.float32), "word_emb"),
        numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "type_emb"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "proj"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_emb", "input_ids"], ["words"]),
        helper.make_node("Gather", ["type_emb", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["words", "types"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "proj"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["hidden", "mask_3d"], ["masked"]),
        helper.make_node("ReduceMean", ["masked"], ["pooled"], axes=[1], keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in INPUT_NAMES]
    outputs = [
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", 4]),
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4]),
    ]
    graph = helper.make_graph(nodes, "tiny_bert_like", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnxruntime 1.31 rejects the IR version onnx 1.23 writes by default
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(tiny_bert_like(), str(path))
    return path


@pytest.fixture(scope="module")
def ort_path(model_path, tmp_path_factory) -> Path:
    """The same model converted with onnxruntime's own ORT-format tool, as the mobile pipeline does."""
    out_dir = tmp_path_factory.mktemp("ort")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(model_path),
            "--output_dir",
            str(out_dir),
            "--optimization_style",
            "Fixed",
        ],
        check=True,
        capture_output=True,
    )
    return out_dir / "tiny.ort"


def feeds(seq_len: int, offset: int = 1000) -> dict[str, np.ndarray]:
    return {
        "input_ids": (np.arange(seq_len, dtype=np.int64) + offset)[None, :],
        "attention_mask": np.ones((1, seq_len), np.int64),
        "token_type_ids": np.zeros((1, seq_len), np.int64),
    }


def run_script(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def run_json(*args) -> dict:
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, "stdout must be exactly one JSON line"
    return json.loads(proc.stdout)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def load_runner_module():
    """The runner as a module, to unit-test its pure helpers without a subprocess."""
    spec = importlib.util.spec_from_file_location("ort_runner_under_test", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_percentiles_use_nearest_rank():
    runner = load_runner_module()
    hundred = [float(v) for v in range(1, 101)]
    assert [runner.nearest_rank(hundred, p) for p in (50, 90, 99)] == [50.0, 90.0, 99.0]
    assert [runner.nearest_rank([3.0, 7.0, 9.0], p) for p in (50, 90, 99)] == [7.0, 9.0, 9.0]
    assert runner.nearest_rank([4.0], 50) == 4.0


def test_result_has_the_contract_keys_and_sane_values(model_path):
    result = run_json(model_path, *FAST, "--threads", "2", "--seq-len", "16")
    assert RESULT_KEYS <= set(result)
    assert result["schema"] == SCHEMA and result["runner"] == "ort_runner" and result["runtime"] == "onnxruntime"
    assert result["runtime_version"] == ort.__version__
    assert result["artifact"] == "tiny.onnx" and result["artifact_bytes"] == model_path.stat().st_size
    assert (result["threads"], result["runs"], result["warmup"]) == (2, 5, 1)
    assert result["inputs"] == {
        name: {"shape": [1, 16], "dtype": "int64", "source": "synthetic"} for name in INPUT_NAMES
    }
    assert result["outputs"] == {
        "hidden": {"shape": [1, 16, 4], "dtype": "float32"},
        "pooled": {"shape": [1, 4], "dtype": "float32"},
    }
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert result["load_ms"] > 0 and result["peak_rss_mb"] > 1
    assert result["output_digest"].startswith("sha256:") and len(result["output_digest"]) == len("sha256:") + 64
    assert set(result["host"]) == {"machine", "system", "cpu_count", "load_1m_before", "load_1m_after"}
    assert "latency_samples_ms" not in result


def test_peak_memory_is_the_runners_own_not_its_parents(model_path):
    """Linux carries ru_maxrss across exec: a runner started by a parent that had grown large (an export holding
    its models) must not report the parent's peak as its own. The runner reads VmHWM, which starts afresh."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc: the runner falls back to ru_maxrss there")
    ballast = np.ones(400 * 2**20, np.uint8)  # 400 MiB resident in this process, then fork + exec the runner
    result = run_runner(model_path, threads=1, runs=2, warmup=1)
    assert ballast.sum() > 0
    assert result["peak_rss_mb"] < 350, result["peak_rss_mb"]
    assert 0 <= result["peak_rss_mb"] - result["baseline_rss_mb"] < 100


def test_keep_samples_reports_every_timed_run(model_path):
    result = run_json(model_path, *FAST, "--keep-samples")
    samples = result["latency_samples_ms"]
    assert len(samples) == result["runs"] == 5
    assert min(samples) == result["latency_ms"]["min"] and max(samples) == result["latency_ms"]["max"]


def test_digest_is_stable_and_tracks_the_inputs(model_path, tmp_path):
    first = run_json(model_path, *FAST, "--seq-len", "16")["output_digest"]
    assert run_json(model_path, *FAST, "--seq-len", "16")["output_digest"] == first
    assert run_json(model_path, *FAST, "--seq-len", "16", "--seed", "1")["output_digest"] != first
    a = run_json(model_path, *FAST, "--inputs", save_npz(tmp_path / "a.npz", feeds(16)))["output_digest"]
    b = run_json(model_path, *FAST, "--inputs", save_npz(tmp_path / "b.npz", feeds(16, offset=1500)))["output_digest"]
    assert a != b


def test_npz_inputs_round_trip_and_saved_outputs_match_in_process(model_path, tmp_path):
    given = feeds(12)
    saved = tmp_path / "out.npz"
    result = run_json(model_path, *FAST, "--inputs", save_npz(tmp_path / "in.npz", given), "--save-outputs", saved)
    assert result["inputs"]["input_ids"] == {"shape": [1, 12], "dtype": "int64", "source": "file"}
    expected = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, given)
    with np.load(saved) as got:
        assert sorted(got.files) == ["hidden", "pooled"]
        np.testing.assert_allclose(got["hidden"], expected[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["pooled"], expected[1], rtol=1e-6, atol=1e-6)


def test_runs_an_ort_format_model(model_path, ort_path, tmp_path):
    inputs = save_npz(tmp_path / "in.npz", feeds(8))
    result = run_json(ort_path, *FAST, "--inputs", inputs, "--save-outputs", tmp_path / "ort.npz")
    run_json(model_path, *FAST, "--inputs", inputs, "--save-outputs", tmp_path / "onnx.npz")
    assert result["artifact"] == "tiny.ort" and result["outputs"]["pooled"]["shape"] == [1, 4]
    with np.load(tmp_path / "ort.npz") as got, np.load(tmp_path / "onnx.npz") as want:
        for name in ("hidden", "pooled"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["missing", "not_a_model", "bad_keys", "bad_dtype", "bad_arg"])
def test_expected_errors_are_one_stderr_line_and_exit_2(case, model_path, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    args = {
        "missing": [tmp_path / "absent.onnx"],
        "not_a_model": [junk],
        "bad_keys": [model_path, "--inputs", save_npz(tmp_path / "k.npz", {"ids": np.ones((1, 4), np.int64)})],
        "bad_dtype": [
            model_path,
            "--inputs",
            save_npz(tmp_path / "d.npz", {k: v.astype(np.int32) for k, v in feeds(4).items()}),
        ],
        "bad_arg": [model_path, "--runs", "0"],
    }[case]
    proc = run_script(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ort_runner: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_runner_is_standalone(model_path, tmp_path):
    """It is pushed to devices alone: stdlib + numpy + onnxruntime, Python 3.8 syntax, no edgecompress."""
    source = RUNNER.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    assert imported - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}
    # Run a lone copy from an unrelated cwd with edgecompress made unimportable.
    copy = tmp_path / "device" / "ort_runner.py"
    copy.parent.mkdir()
    copy.write_text(source)
    block = (
        "import runpy, sys; sys.modules['edgecompress'] = None; "
        f"sys.argv = [{str(copy)!r}] + sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", block, str(model_path), *FAST],
        capture_output=True,
        text=True,
        cwd=copy.parent,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema"] == SCHEMA


def test_measure_run_runner_round_trip(model_path):
    result = run_runner(
        model_path, runner=backend_for("onnxruntime").runner, threads=1, runs=5, warmup=1, inputs=feeds(10)
    )
    assert result["schema"] == SCHEMA and result["runs"] == 5
    assert result["inputs"]["input_ids"] == {"shape": [1, 10], "dtype": "int64", "source": "file"}
    synthetic = run_runner(model_path, threads=2, runs=5, warmup=0, seq_len=6)
    assert synthetic["inputs"]["attention_mask"]["shape"] == [1, 6]
    assert describe(synthetic) == (
        f"measured on host (onnxruntime {ort.__version__}, 2 threads, 5 runs, median of runs)"
    )
    assert "1 thread," in describe(result)


def test_measure_maps_the_runners_input_errors_to_user_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(UserError) as err:
        run_runner(junk, threads=1, runs=5, warmup=0)
    assert str(err.value).startswith(f"{junk}: cannot load")


def test_measure_raises_internal_error_when_the_runner_crashes(tmp_path, monkeypatch):
    monkeypatch.setattr("edgecompress.measure.runner.runner_script", lambda runner: tmp_path / "crash.py")
    (tmp_path / "crash.py").write_text("import sys; sys.stderr.write('boom\\n'); sys.exit(1)\n")
    with pytest.raises(InternalError, match="exited with 1: boom"):
        run_runner(tmp_path / "m.onnx", threads=1, runs=5, warmup=0)
