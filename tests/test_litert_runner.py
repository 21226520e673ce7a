"""The standalone LiteRT runner (runtimes/litert_runner.py): the same options and JSON contract as ort_runner."""

from __future__ import annotations

import ast
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
from edgecompress.backends.tflite.lowering import lower_to_tflite
from edgecompress.measure.runner import SCHEMA, describe, run_runner, runner_for
from edgecompress.paths import runtimes_dir

pytest.importorskip("ai_edge_litert")

RUNNER = runtimes_dir() / "litert_runner.py"
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
SEQ_LEN = 16


def tiny_bert_like() -> onnx.ModelProto:
    """Embedding lookup + projection + masked mean over fixed [1, 16] inputs (TFLite needs fixed shapes)."""
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
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, [1, SEQ_LEN]) for name in INPUT_NAMES]
    outputs = [
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, SEQ_LEN, 4]),
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny_bert_like", inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def onnx_model() -> onnx.ModelProto:
    return tiny_bert_like()


@pytest.fixture(scope="module")
def model_path(onnx_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.tflite"
    path.write_bytes(lower_to_tflite(onnx_model))
    return path


def feeds(offset: int = 1000) -> dict[str, np.ndarray]:
    return {
        "input_ids": (np.arange(SEQ_LEN, dtype=np.int64) + offset)[None, :],
        "attention_mask": np.ones((1, SEQ_LEN), np.int64),
        "token_type_ids": np.zeros((1, SEQ_LEN), np.int64),
    }


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=120)


def run_json(*args) -> dict:
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, "stdout must be exactly one JSON line"
    return json.loads(proc.stdout)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def test_result_has_the_contract_keys_and_sane_values(model_path):
    from importlib.metadata import version

    result = run_json(model_path, *FAST, "--threads", "2")
    assert RESULT_KEYS <= set(result)
    assert (result["schema"], result["runner"], result["runtime"]) == (SCHEMA, "litert_runner", "litert")
    assert result["runtime_version"] == version("ai-edge-litert")
    assert result["artifact"] == "tiny.tflite" and result["artifact_bytes"] == model_path.stat().st_size
    assert (result["threads"], result["runs"], result["warmup"], result["delegate"]) == (2, 5, 1, "xnnpack")
    assert result["inputs"] == {
        name: {"shape": [1, SEQ_LEN], "dtype": "int64", "source": "synthetic"} for name in INPUT_NAMES
    }
    assert result["outputs"] == {
        "hidden": {"shape": [1, SEQ_LEN, 4], "dtype": "float32"},
        "pooled": {"shape": [1, 4], "dtype": "float32"},
    }
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["load_ms"] > 0 and result["peak_rss_mb"] > 1
    assert result["output_digest"].startswith("sha256:") and len(result["output_digest"]) == len("sha256:") + 64
    assert "latency_samples_ms" not in result


def test_keep_samples_and_builtin_kernels(model_path):
    result = run_json(model_path, *FAST, "--keep-samples", "--delegate", "none")
    assert len(result["latency_samples_ms"]) == 5 and result["delegate"] == "none"


def test_digest_is_stable_and_tracks_the_inputs(model_path, tmp_path):
    first = run_json(model_path, *FAST)["output_digest"]
    assert run_json(model_path, *FAST)["output_digest"] == first
    assert run_json(model_path, *FAST, "--seed", "1")["output_digest"] != first
    a = run_json(model_path, *FAST, "--inputs", save_npz(tmp_path / "a.npz", feeds()))["output_digest"]
    b = run_json(model_path, *FAST, "--inputs", save_npz(tmp_path / "b.npz", feeds(offset=1500)))["output_digest"]
    assert a != b


def test_saved_outputs_match_onnxruntime_on_the_source_model(model_path, onnx_model, tmp_path):
    given = feeds()
    saved = tmp_path / "out.npz"
    result = run_json(model_path, *FAST, "--inputs", save_npz(tmp_path / "in.npz", given), "--save-outputs", saved)
    assert result["inputs"]["input_ids"] == {"shape": [1, SEQ_LEN], "dtype": "int64", "source": "file"}
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip(["hidden", "pooled"], session.run(["hidden", "pooled"], given)))
    with np.load(saved) as got:
        assert sorted(got.files) == ["hidden", "pooled"]
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["missing", "not_a_model", "bad_keys", "bad_dtype", "bad_shape", "bad_arg"])
def test_expected_errors_are_one_stderr_line_and_exit_2(case, model_path, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_text("not a model")
    args = {
        "missing": [tmp_path / "absent.tflite"],
        "not_a_model": [junk],
        "bad_keys": [model_path, "--inputs", save_npz(tmp_path / "k.npz", {"ids": np.ones((1, 4), np.int64)})],
        "bad_dtype": [
            model_path,
            "--inputs",
            save_npz(tmp_path / "d.npz", {k: v.astype(np.int32) for k, v in feeds().items()}),
        ],
        "bad_shape": [model_path, "--inputs", save_npz(tmp_path / "s.npz", {k: v[:, :8] for k, v in feeds().items()})],
        "bad_arg": [model_path, "--runs", "0"],
    }[case]
    proc = run_script(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("litert_runner: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_shape_names_the_expected_shape(model_path, tmp_path):
    proc = run_script(model_path, "--inputs", save_npz(tmp_path / "s.npz", {k: v[:, :8] for k, v in feeds().items()}))
    assert "'input_ids' has shape [1, 8], model expects [1, 16]" in proc.stderr


def test_runner_is_standalone(model_path, tmp_path):
    """It is pushed to devices alone: stdlib + numpy + one LiteRT package, Python 3.8 syntax, no edgecompress."""
    source = RUNNER.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    assert imported - set(sys.stdlib_module_names) == {"numpy", "ai_edge_litert", "tflite_runtime"}
    copy = tmp_path / "device" / "litert_runner.py"
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


def test_measure_knows_the_runner_and_round_trips(model_path):
    assert runner_for(model_path) == backend_for("litert").runner == "litert_runner"
    result = run_runner(model_path, runner="litert_runner", threads=1, runs=5, warmup=1, inputs=feeds())
    assert result["schema"] == SCHEMA and result["inputs"]["input_ids"]["source"] == "file"
    assert describe(result).startswith("measured on host (litert ")
