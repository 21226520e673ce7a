"""The calibrated estimator (issue 12 part 4): the fit recovers known prices, `calibrate` runs end to end on this
host with the tiny suite, a profile that names a calibration changes the estimate, its method and the export's
report (which states the error band), and bad input is one line with exit 2.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgecompress.cli import main
from edgecompress.devices import get_profile
from edgecompress.errors import UserError
from edgecompress.measure.calibration.model import (
    fit_prices,
    leave_one_out,
    parallel_fractions,
    predict,
    prices_at,
    work_vector,
)
from edgecompress.measure.calibration.nnls import nnls
from edgecompress.measure.calibration.store import Calibration, load_calibration, save_calibration
from edgecompress.measure.calibration.suite import suite
from edgecompress.measure.device_estimate import latency_on, uncalibrated_band
from edgecompress.measure.estimate import executed_graph
from edgecompress.measure.op_work import graph_work, node_work

from conftest import user_error

# ---- the fit ------------------------------------------------------------------------------------------------------

TRUE_PRICES = {
    "run": 8e-6,
    "matmul.nodes": 2e-6,
    "matmul.ops": 1e-11,
    "matmul.bytes": 5e-11,
    "elementwise.nodes": 1e-6,
    "elementwise.ops": 2e-10,
    "elementwise.bytes": 1e-10,
    "layernorm.nodes": 3e-6,
    "layernorm.ops": 4e-10,
}


def synthetic_works(count: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Benchmarks whose work amounts vary independently, one or two classes each, as the suite's graphs do."""
    rng = np.random.default_rng(seed)
    works = {}
    classes = {
        "matmul": ("nodes", "ops", "bytes"),
        "elementwise": ("nodes", "ops", "bytes"),
        "layernorm": ("nodes", "ops"),
    }
    names = list(classes)
    for index in range(count):
        work = {"run": 1.0}
        for op_class in (names[index % 3], names[(index + 1) % 3]) if index % 2 else (names[index % 3],):
            nodes = float(rng.integers(1, 32))
            work[f"{op_class}.nodes"] = nodes
            for feature in classes[op_class][1:]:
                work[f"{op_class}.{feature}"] = nodes * float(10 ** rng.uniform(3, 8))
        works[f"b{index}"] = work
    return works


def test_fit_recovers_known_prices_from_exact_measurements():
    works = synthetic_works(40)
    seconds = {name: predict(work, TRUE_PRICES) for name, work in works.items()}
    fit = fit_prices(works, {1: seconds})[1]
    for param, price in TRUE_PRICES.items():
        assert fit.prices[param] == pytest.approx(price, rel=1e-6), param
    assert max(abs(e) for e in fit.relative_errors.values()) < 1e-9


def test_fit_recovers_known_prices_through_measurement_noise():
    works = synthetic_works(60, seed=1)
    rng = np.random.default_rng(2)
    seconds = {name: predict(work, TRUE_PRICES) * (1 + rng.normal(0, 0.02)) for name, work in works.items()}
    fit = fit_prices(works, {1: seconds})[1]
    for param in ("run", "matmul.ops", "elementwise.nodes", "layernorm.ops"):
        assert fit.prices[param] == pytest.approx(TRUE_PRICES[param], rel=0.15), param
    errors = leave_one_out(works, {1: seconds})[1]
    assert len(errors) == len(works) and np.median(np.abs(list(errors.values()))) < 0.05


def test_fit_on_the_suites_own_graphs_reproduces_their_times():
    """The tiny suite's real graphs, counted as onnxruntime runs them, with times made from known prices."""
    works = {}
    for benchmark in suite("tiny"):
        graph = executed_graph(benchmark.model)
        works[benchmark.name] = work_vector(graph_work(graph.model, graph.shapes, graph.order))
    seconds = {name: predict(work, TRUE_PRICES) for name, work in works.items()}
    fit = fit_prices(works, {1: seconds})[1]
    for name, work in works.items():
        assert predict(work, fit.prices) == pytest.approx(seconds[name], rel=1e-6), name


def test_prices_never_go_negative():
    """Correlated features must not cancel out with a negative price (more work taking less time)."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, (30, 6))
    a[:, 5] = a[:, 4] * 1.001  # nearly collinear pair
    b = a @ np.array([1, 0, 2, 0, 1, 0]) + rng.normal(0, 0.01, 30)
    x = nnls(a, b)
    assert (x >= 0).all()
    assert np.linalg.norm(a @ x - b) <= np.linalg.norm(a @ np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0, None) - b)


# Each price's serial and parallel part (price(n) = serial + parallel / n), and the per-node hand-off to the thread
# pool that every node pays once threads > 1.
SERIAL_PARTS = {"run": 6e-6, "matmul.ops": 1e-12, "elementwise.nodes": 1e-6, "elementwise.ops": 1e-10}
PARALLEL_PARTS = {"run": 2e-6, "matmul.ops": 9e-12, "matmul.nodes": 2e-6, "elementwise.bytes": 1e-10}
HANDOFF_PER_NODE = 3e-7


def amdahl_prices(threads: int) -> dict[str, float]:
    prices = {p: SERIAL_PARTS.get(p, 0.0) + PARALLEL_PARTS.get(p, 0.0) / threads for p in TRUE_PRICES}
    for param in prices:
        if param.endswith(".nodes"):
            prices[param] += (threads - 1) * HANDOFF_PER_NODE
    return prices


def test_joint_fit_recovers_prices_that_scale_by_amdahl_and_the_per_node_hand_off():
    works = synthetic_works(60, seed=4)
    seconds = {n: {name: predict(work, amdahl_prices(n)) for name, work in works.items()} for n in (1, 2)}
    fits = fit_prices(works, seconds)
    for n in (1, 2):
        for param, price in amdahl_prices(n).items():
            assert fits[n].prices[param] == pytest.approx(price, rel=1e-5, abs=1e-15), (n, param)


def test_a_price_at_two_threads_lies_between_half_and_all_of_its_one_thread_price():
    """Fitted per thread count on their own, noisy measurements let the fit move cost between features that few
    benchmarks tell apart (a per-node price of 0 at one thread and 305 us at two); the joint fit cannot."""
    works = synthetic_works(40, seed=5)
    rng = np.random.default_rng(6)
    seconds = {
        n: {name: predict(work, amdahl_prices(n)) * (1 + rng.normal(0, 0.15)) for name, work in works.items()}
        for n in (1, 2)
    }
    fits = fit_prices(works, seconds)
    handoff = max(fits[2].prices[p] - fits[1].prices[p] for p in TRUE_PRICES if p.endswith(".nodes"))
    for param, one in fits[1].prices.items():
        two = fits[2].prices[param]
        grows = handoff if param.endswith(".nodes") else fits[2].prices["run"] - fits[1].prices["run"]
        assert one / 2 - 1e-18 <= two <= one + max(grows, 0.0) + 1e-18, param
    errors = leave_one_out(works, seconds)
    assert set(errors) == {1, 2} and all(len(by_name) == len(works) for by_name in errors.values())


def test_elementwise_ops_that_onnxruntime_threads_are_their_own_feature():
    """Binary broadcast kernels over more than 65,536 elements run on all threads (measured); Where does not."""

    def work_of(op: str, elements: int, inputs: int = 2) -> dict[str, float]:
        names = [f"x{i}" for i in range(inputs)]
        node = helper.make_node(op, names, ["y"])
        shapes = {name: ((1, elements), TensorProto.FLOAT) for name in [*names, "y"]}
        return node_work(node, 0, shapes).work

    assert "wide_ops" in work_of("Add", 131_072) and "ops" not in work_of("Add", 131_072)
    assert "ops" in work_of("Add", 32_768) and "wide_ops" not in work_of("Add", 32_768)
    assert "ops" in work_of("Where", 131_072, inputs=3)


def test_thread_scaling_follows_amdahl_with_each_prices_own_fraction():
    one = {"matmul.ops": 1e-11, "run": 8e-6, "copy.bytes": 1e-10}
    fractions = {"matmul.ops": 0.9, "run": 0.0, "copy.bytes": 0.5}
    two = {k: v * ((1 - fractions[k]) + fractions[k] / 2) for k, v in one.items()}
    fitted = parallel_fractions({1: one, 2: two})
    assert fitted == pytest.approx(fractions)
    four = prices_at({1: one, 2: two}, fitted, 4)
    assert four["matmul.ops"] == pytest.approx(1e-11 * (0.1 + 0.9 / 4))
    assert four["run"] == pytest.approx(8e-6)
    assert prices_at({1: one, 2: two}, fitted, 2) == two  # a calibrated count is used as measured


# ---- a calibration built from known prices, and a profile that names it ----------------------------------------


def known_calibration(prices: dict[str, float], validation: dict | None = None) -> Calibration:
    return Calibration(
        created="2026-01-01T00:00:00+00:00",
        target="host",
        machine={"machine": "x86_64", "system": "Linux", "cpu_count": 2},
        runtime="onnxruntime",
        runtime_version="1.31.1",
        graph="work counted on the graph onnxruntime runs",
        threads=[1],
        method="synthetic, for tests",
        load_1m=[0.1, 0.1],
        prices={1: prices},
        parallel_fractions={},
        benchmarks=[],
        cross_validation={1: {"median_abs_error": 0.1, "worst_abs_error": 0.2, "benchmarks": 5, "how": "test"}},
        validation=validation,
    )


def calibrated_profile(folder: Path, calibration_name: str, base: Path, name: str = "calphone") -> Path:
    text = base.read_text().replace('name = "tinyphone"', f'name = "{name}"')
    text = text.replace('recipe = "default"', f'recipe = "default"\ncalibration = "{calibration_name}"', 1)
    text = re.sub(r"^artifacts = \[.*\]$", 'artifacts = ["onnx"]', text, count=1, flags=re.M)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def matmul_model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32])],
        [numpy_helper.from_array(np.ones((16, 32), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_a_profile_naming_a_calibration_is_priced_by_it(tmp_path, tiny_device):
    prices = {"run": 1e-5, "matmul.nodes": 2e-6, "matmul.ops": 1e-9, "elementwise.nodes": 1e-6}
    save_calibration(known_calibration(prices), tmp_path / "cal.json")
    profile = get_profile(calibrated_profile(tmp_path, "cal.json", tiny_device))
    model = matmul_model()

    calibrated = latency_on(profile, model)
    by_hand = 1e3 * (1e-5 + 2e-6 + 1e-9 * 2 * 8 * 16 * 32 + 1e-6)
    assert calibrated.total_ms == pytest.approx(by_hand)
    assert calibrated.method.startswith("calibrated per-op-class prices on the graph onnxruntime")
    assert "error band: median 10%, worst 20% (leave-one-out" in calibrated.method

    peak_based = latency_on(get_profile(tiny_device), model)
    assert peak_based.method.startswith("roofline per node") and "error band" in peak_based.method
    assert peak_based.total_ms != pytest.approx(calibrated.total_ms)


def test_whole_model_validation_is_the_band_a_calibrated_profile_states(tmp_path, tiny_device):
    validation = {"median_abs_error": 0.08, "worst_abs_error": 0.21, "artifacts": 24, "how": "bench", "date": "x"}
    save_calibration(known_calibration({"run": 1e-5, "matmul.ops": 1e-9}, validation), tmp_path / "cal.json")
    profile = get_profile(calibrated_profile(tmp_path, "cal.json", tiny_device))
    assert "error band: median 8%, worst 21% (bench, x)" in latency_on(profile, matmul_model()).method


def test_the_uncalibrated_band_comes_from_calibrated_targets_rows(tmp_path):
    rows = [
        {"artifact": "a", "threads": 1, "estimated_ms": 10.0, "measured_ms": 5.0, "error": 1.0},
        {"artifact": "b", "threads": 1, "estimated_ms": 10.0, "measured_ms": 8.0, "error": 0.25},
        {"artifact": "c", "threads": 2, "estimated_ms": 10.0, "measured_ms": 20.0, "error": -0.5},
    ]
    path = tmp_path / "band.json"
    path.write_text(json.dumps({"targets": [{"target": "host", "runtime": "ort", "date": "d", "rows": rows}]}))
    band = uncalibrated_band(path)
    assert (band.median_abs_error, band.worst_abs_error, band.count) == (0.5, 1.0, 3)
    assert "measured 0.50x to 2.00x the estimate" in band.text()
    unknown = uncalibrated_band(tmp_path / "missing.json")
    assert unknown.count == 0 and math.isnan(unknown.median_abs_error) and "unknown" in unknown.text()


# ---- end to end on this host -------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def host_calibration(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("calibration") / "host.json"
    result = invoke(
        "calibrate", "--on", "host", "--suite", "tiny", "--rounds", "1", "--runs", "3", "--warmup", "1", "-o", path
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return path, result


def test_calibrate_runs_end_to_end_on_this_host(host_calibration):
    path, result = host_calibration
    calibration = load_calibration(path)
    assert calibration.threads == [1, 2] and calibration.target == "host"
    assert calibration.runtime == "onnxruntime" and re.fullmatch(r"\d+\.\d+\.\d+.*", calibration.runtime_version)
    assert "through ort_runner on host" in calibration.method and "p50 of up to 3 runs" in calibration.method
    assert len(calibration.benchmarks) == len(suite("tiny"))
    for benchmark in calibration.benchmarks:
        assert set(benchmark["measured_ms"]) == {"1", "2"} and all(v > 0 for v in benchmark["measured_ms"].values())
    for count in (1, 2):  # every parameter the tiny suite exercises is fitted (a price may come out 0)
        assert {"run", "matmul.nodes", "matmul.ops", "matmul.weight_bytes", "layernorm.ops"} <= set(
            calibration.prices[count]
        )
        for benchmark in calibration.benchmarks:
            assert benchmark["fitted_ms"][str(count)] > 0, benchmark
    assert calibration.memory is not None and calibration.memory["session_overhead_mb"] >= 0
    assert "[16/16]" in result.stderr  # progress, one line per measurement
    assert f"wrote {path}" in result.stdout and 'calibration = "host.json"' in result.stdout


def test_an_export_on_a_calibrated_profile_states_its_error_band(
    host_calibration, tmp_path, tiny_checkpoint, tiny_device, tiny_data
):
    path, _ = host_calibration
    (tmp_path / "host.json").write_bytes(path.read_bytes())
    profile = calibrated_profile(tmp_path, "host.json", tiny_device)
    out = tmp_path / "out"
    result = invoke("export", tiny_checkpoint, "--device", profile, "--data", tiny_data, "-o", out, "--no-measure")
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "calphone" / "report.json").read_text())
    latency = report["artifacts"][0]["device_latency"]
    assert latency["how"] == "estimated" and latency["method"].startswith("calibrated per-op-class prices")
    assert "error band: median" in latency["method"] and str(tmp_path / "host.json") in latency["method"]
    assert latency["band"]["checks"] > 0 and latency["band"]["median_abs_error"] is not None
    assert "peak minus baseline resident memory" in report["artifacts"][0]["memory"]["method"]
    assert re.search(r"ms \(est\., error \d+% median / \d+% worst\)", (out / "calphone" / "report.md").read_text())


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_an_unknown_target_is_one_line_and_exit_2(tmp_path):
    line = user_error(invoke("calibrate", "--on", "bluetooth://phone", "-o", tmp_path / "c.json"))
    assert (
        line == "error: --on: unknown target 'bluetooth://phone'; expected host, ssh://user@host[:port] or adb[:SERIAL]"
    )
    assert not (tmp_path / "c.json").exists()


def test_bad_thread_counts_are_a_usage_error(tmp_path):
    result = invoke("calibrate", "--threads", "0,2", "-o", tmp_path / "c.json")
    assert result.exit_code == 2 and "Invalid value for '--threads'" in result.output


@pytest.mark.parametrize(
    "content, expected",
    [
        ("not json", "the calibration file is not JSON"),
        ('{"schema": "other/1"}', "schema is 'other/1'"),
        (None, "no such calibration file"),
        ("negative", "field 'prices.1.matmul.ops' must be a finite number >= 0, got -1.0"),
    ],
)
def test_a_bad_calibration_file_is_one_line_and_exit_2(tmp_path, tiny_device, content, expected):
    cal = tmp_path / "cal.json"
    if content == "negative":
        save_calibration(known_calibration({"run": 1e-5, "matmul.ops": 1.0}), cal)
        cal.write_text(cal.read_text().replace('"matmul.ops": 1.0', '"matmul.ops": -1.0'))
    elif content is not None:
        cal.write_text(content)
    profile = calibrated_profile(tmp_path, "cal.json", tiny_device)
    with pytest.raises(UserError, match=re.escape(expected)):
        get_profile(profile)
    line = user_error(invoke("devices", "show", profile))
    assert line.startswith(f"error: {profile}: field 'calibration' = \"cal.json\": ") and expected in line
    assert f"({cal})" in line


def test_calibrate_refuses_a_folder_as_output(tmp_path):
    line = user_error(invoke("calibrate", "--suite", "tiny", "-o", tmp_path))
    assert line == f"error: {tmp_path}: output is a folder; expected a .json file path"


def test_every_graph_of_the_full_suite_builds():
    # The integer-only kernels' emitter sizes its integers by the intervals declared for the inputs: with
    # none, a LayerNorm row sum overflowed int64 while the suite was being built (found on the merged tree).
    from edgecompress.measure.calibration.suite import suite

    benchmarks = suite("full")
    assert len(benchmarks) > 100
    assert all(benchmark.model.graph.node for benchmark in benchmarks)
    integer = [b for b in benchmarks if any(n.op_type == "BitShift" for n in b.model.graph.node)]
    assert integer, "no integer-only kernel graph in the suite"
