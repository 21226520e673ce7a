"""The contract runtimes/ort_runner.py and runtimes/litert_runner.py share: it fails when one of them drifts.

The two runners stay separate standalone files (each is pushed to a device on its own), so nothing but this
test keeps their command lines, JSON results, digests and error exits the same. Each runner's own behaviour is
tested in test_ort_runner.py and test_litert_runner.py; this file only compares the two.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from edgecompress.backends.tflite.lowering import lower_to_tflite
from edgecompress.measure.runner import RUNNER_USER_ERROR, SCHEMA
from edgecompress.paths import runtimes_dir

from test_litert_runner import tiny_bert_like

pytest.importorskip("ai_edge_litert")

RUNNERS = ("ort_runner", "litert_runner")
# The flags edgecompress.measure.runner passes to either runner, plus the ones a person uses on a device.
SHARED_FLAGS = {
    "--threads",
    "--runs",
    "--warmup",
    "--seq-len",
    "--inputs",
    "--keep-samples",
    "--seed",
    "--save-outputs",
}
# The runtime-specific options each runner has, and the result keys that echo them. Only LiteRT has
# `--signature`: a signature (one per length bucket in a bucketed .tflite) is a LiteRT concept. An ONNX
# Runtime artifact has no signatures: its buckets are a dynamic sequence axis (`--seq-len`) or separate
# model files, so the choice is already the model argument; a mirror flag there would select nothing.
OWN_FLAGS = {"ort_runner": {"--optimization"}, "litert_runner": {"--delegate", "--signature"}}
OWN_KEYS = {"ort_runner": {"optimization"}, "litert_runner": {"delegate", "signature", "signatures"}}
SEQ_LEN = 16
FAST = ["--runs", "3", "--warmup", "1", "--seq-len", str(SEQ_LEN)]


def load_runner(name: str) -> ModuleType:
    """The runner as a module, without running main() (it only runs under __name__ == '__main__')."""
    spec = importlib.util.spec_from_file_location(f"{name}_contract_under_test", runtimes_dir() / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runners() -> dict[str, ModuleType]:
    return {name: load_runner(name) for name in RUNNERS}


def parser_of(module: ModuleType) -> argparse.ArgumentParser:
    """The parser `module.parse_args` builds, caught just before it parses (on this module's copy only)."""
    module._Parser.parse_args = lambda self, argv=None: self
    return module.parse_args([])


def options(module: ModuleType) -> dict[str, argparse.Action]:
    return {
        flag: action
        for action in parser_of(module)._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }


def type_behaviour(action: argparse.Action) -> list:
    """What the option's type makes of a few probe strings: the value, or the error it raises."""
    if action.type is None:
        return [None]
    probes = []
    for text in ("-1", "0", "1", "7", "x"):
        try:
            probes.append(action.type(text))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            probes.append(f"{type(exc).__name__}: {exc}")
    return probes


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same tiny model as each runner's artifact: .onnx for onnxruntime, lowered to .tflite for LiteRT."""
    folder = tmp_path_factory.mktemp("contract")
    model = tiny_bert_like()  # the LiteRT runner's tests' model: fixed [1, 16] inputs both runtimes run
    onnx.save(model, str(folder / "tiny.onnx"))
    (folder / "tiny.tflite").write_bytes(lower_to_tflite(model))
    return {"ort_runner": folder / "tiny.onnx", "litert_runner": folder / "tiny.tflite"}


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(runtimes_dir() / f"{name}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def results(models, tmp_path_factory) -> dict[str, dict]:
    """One real run of each runner on the same inputs, with its outputs saved."""
    folder = tmp_path_factory.mktemp("runs")
    inputs = folder / "inputs.npz"
    np.savez(
        inputs,
        input_ids=(np.arange(SEQ_LEN, dtype=np.int64) + 1000)[None, :],
        attention_mask=np.ones((1, SEQ_LEN), np.int64),
        token_type_ids=np.zeros((1, SEQ_LEN), np.int64),
    )
    results = {}
    for name in RUNNERS:
        proc = run_script(
            name, models[name], *FAST, "--keep-samples", "--inputs", inputs, "--save-outputs", folder / f"{name}.npz"
        )
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.strip().splitlines()) == 1, "stdout must be exactly one JSON line"
        results[name] = {"json": json.loads(proc.stdout), "outputs": folder / f"{name}.npz"}
    return results


# ---- command line ----------------------------------------------------------------------------------------------


def test_both_runners_take_the_same_shared_options_and_their_own_runtime_options(runners):
    flags = {name: set(options(module)) for name, module in runners.items()}
    for name in RUNNERS:
        assert flags[name] == SHARED_FLAGS | OWN_FLAGS[name], (name, sorted(flags[name]))


@pytest.mark.parametrize("flag", sorted(SHARED_FLAGS))
def test_a_shared_option_parses_the_same_way_in_both(runners, flag):
    ort_action, litert_action = (options(runners[name])[flag] for name in RUNNERS)
    for attribute in ("dest", "default", "nargs", "const", "choices", "required", "option_strings"):
        assert getattr(ort_action, attribute) == getattr(litert_action, attribute), (flag, attribute)
    assert type(ort_action) is type(litert_action), flag  # store vs store_true
    assert type_behaviour(ort_action) == type_behaviour(litert_action), flag


def test_both_take_the_model_as_their_one_positional_argument(runners):
    for module in runners.values():
        positionals = [action.dest for action in parser_of(module)._actions if not action.option_strings]
        assert positionals == ["model"]


def test_a_usage_error_is_one_stderr_line_and_the_user_error_exit_in_both(models):
    lines = {}
    for name in RUNNERS:
        proc = run_script(name, models[name], "--runs", "0")
        assert proc.returncode == RUNNER_USER_ERROR and proc.stdout == "", (name, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        lines[name] = proc.stderr.strip().replace(name, "RUNNER")
    assert lines["ort_runner"] == lines["litert_runner"]


# ---- shared constants and helpers -------------------------------------------------------------------------------


def test_both_declare_the_schema_the_host_expects_and_name_themselves(runners):
    for name, module in runners.items():
        assert module.SCHEMA == SCHEMA == "edgecompress.runner/1"
        assert module.PROG == name


def test_a_missing_model_exits_with_the_user_error_code_in_both(tmp_path):
    for name in RUNNERS:
        proc = run_script(name, tmp_path / "missing.bin")
        assert proc.returncode == RUNNER_USER_ERROR == 2, (name, proc.stderr)
        assert proc.stderr == f"{name}: error: no such model file: {tmp_path / 'missing.bin'}\n"
        assert proc.stdout == ""


def test_the_digest_of_the_same_arrays_is_the_same_in_both(runners):
    rng = np.random.default_rng(3)
    outputs = {
        "logits": rng.standard_normal((1, 2)).astype(np.float32),
        "ids": rng.integers(0, 9, (1, 5)).astype(np.int64),
        "big_endian": rng.standard_normal(3).astype(">f4"),
    }
    digests = {name: module.output_digest(outputs) for name, module in runners.items()}
    assert digests["ort_runner"] == digests["litert_runner"]
    assert digests["ort_runner"].startswith("sha256:") and len(digests["ort_runner"]) == len("sha256:") + 64
    changed = dict(outputs, logits=outputs["logits"] + 1)
    assert runners["ort_runner"].output_digest(changed) != digests["ort_runner"]


def test_latency_figures_are_computed_the_same_way_in_both(runners):
    samples = [float(v) for v in np.random.default_rng(4).uniform(1, 9, 37)]
    summaries = [runners[name].latency_summary(samples) for name in RUNNERS]
    assert summaries[0] == summaries[1]
    assert set(summaries[0]) == {"p10", "p25", "p50", "p75", "p90", "p99", "mean", "min", "max", "iqr", "mad"}
    ranks = [[runners[name].nearest_rank(sorted(samples), p) for p in (1, 50, 90, 99, 100)] for name in RUNNERS]
    assert ranks[0] == ranks[1]
    arrays = {"a": np.zeros((1, 3), np.int64)}
    assert runners["ort_runner"].describe_arrays(arrays, "file") == runners["litert_runner"].describe_arrays(
        arrays, "file"
    )


# ---- results of a real run --------------------------------------------------------------------------------------


def test_both_give_the_spread_as_iqr_and_median_absolute_deviation(runners):
    """Issue 17 item 15: one p50 says nothing of how much the runs moved; both runners report it the same way."""
    samples = [10.0, 10.0, 11.0, 11.0, 12.0, 12.0, 13.0, 30.0]  # one slow outlier: iqr and mad ignore it
    for name in RUNNERS:
        summary = runners[name].latency_summary(samples)
        assert (summary["p10"], summary["p25"], summary["p75"]) == (10.0, 10.0, 12.0), name
        assert summary["iqr"] == 2.0 and summary["mad"] == 1.0, name


def test_both_report_the_load_average_around_the_timed_runs(results):
    for name in RUNNERS:
        host = results[name]["json"]["host"]
        assert isinstance(host["load_1m_before"], float) and isinstance(host["load_1m_after"], float), name


def test_a_real_run_of_each_reports_the_same_keys(results):
    keys = {name: set(results[name]["json"]) - OWN_KEYS[name] for name in RUNNERS}
    assert keys["ort_runner"] == keys["litert_runner"]
    for name in RUNNERS:
        assert OWN_KEYS[name] <= set(results[name]["json"])


def test_a_real_run_of_each_reports_the_same_shapes_of_values(results):
    ort_result, litert_result = (results[name]["json"] for name in RUNNERS)
    for key in set(ort_result) & set(litert_result):
        assert type(ort_result[key]) is type(litert_result[key]), key
    for block in ("latency_ms", "host"):
        assert set(ort_result[block]) == set(litert_result[block]), block
    assert ort_result["inputs"] == litert_result["inputs"]  # names, shapes, dtypes and source "file"
    assert ort_result["outputs"] == litert_result["outputs"]
    assert (ort_result["schema"], ort_result["runs"], ort_result["warmup"], ort_result["threads"]) == (
        litert_result["schema"],
        litert_result["runs"],
        litert_result["warmup"],
        litert_result["threads"],
    )
    for result in (ort_result, litert_result):
        assert len(result["latency_samples_ms"]) == result["runs"] == 3
        assert isinstance(result["peak_rss_mb"], float) and result["peak_rss_mb"] > 1
        # the baseline is taken before the model loads, so peak - baseline is what the model added
        assert isinstance(result["baseline_rss_mb"], float) and 1 < result["baseline_rss_mb"] <= result["peak_rss_mb"]


def test_each_runs_digest_is_the_other_runners_digest_of_its_saved_outputs(results, runners):
    """Both digest what they produced the same way, so equal digests across hosts mean equal outputs."""
    for name, other in (("ort_runner", "litert_runner"), ("litert_runner", "ort_runner")):
        with np.load(results[name]["outputs"]) as saved:
            outputs = {key: saved[key] for key in saved.files}
        assert runners[other].output_digest(outputs) == results[name]["json"]["output_digest"], name
