"""The parsers of LiteRT's `benchmark_model` and ONNX Runtime's `onnxruntime_perf_test` output, and the command
lines the adb transport gives them.

Which output: neither program ships in a registry package this project can install (the onnxruntime and
ai-edge-litert wheels carry the libraries, not these binaries), so the outputs below are written in the formats
the programs' sources print: LiteRT's tensorflow/lite/tools/benchmark/benchmark_model.cc (BenchmarkLoggingListener
and the `Stat` line "count= first= curr= min= max= avg= std=", with "p5= median= p95=" in newer builds) and ONNX
Runtime's onnxruntime/test/perftest/performance_runner.cc (PerformanceRunner::Run and
PerformanceResult::DumpToFile). The numbers are made up; the line formats are the programs'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecompress.backends import backend_for
from edgecompress.errors import UserError
from edgecompress.measure.runner import RunRequest

BENCHMARK_MODEL = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/data/local/tmp/edgecompress.abc/model.tflite]
INFO: Loaded model /data/local/tmp/edgecompress.abc/model.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 24.6
INFO: Initialized session in 12.5ms.
INFO: Running benchmark for at least 1 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=3 first=9100 curr=8000 min=8000 max=9100 avg=8433.3 std=500 p5=8000 median=8200 p95=9100

INFO: Running benchmark for at least 50 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=8100 curr=7900 min=7800 max=9900 avg=8050.5 std=300 p5=7850 median=8000 p95=8800

INFO: Inference timings in us: Init: 12500, First inference: 9100, Warmup (avg): 8433.3, Inference (avg): 8050.5
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the \
actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=30.2 overall=41.7
INFO: Overall peak memory footprint (MB) via periodic monitoring: 44.9
"""
# An older build: the Stat line has no percentiles and no peak-footprint line.
BENCHMARK_MODEL_OLD = """\
Initialized session in 3.33ms
count=5 first=118829 curr=105453 min=102652 max=118829 avg=107354 std=5819
count=100 first=102919 curr=102428 min=101417 max=109982 avg=104036 std=1565
Inference timings in us: Init: 3330, First inference: 118829, Warmup (avg): 107354, Inference (avg): 104036
Memory footprint delta from the start of the tool (MB): init=2.1 overall=7.5
"""
PERF_TEST = """\
Session creation time cost: 0.0412 s
First inference time cost: 9 ms
Total inference time cost: 0.41 s
Total inference requests: 50
Average inference time cost: 8.2 ms
Total inference run time: 0.42 s
Number of inferences per second: 119.0
Avg CPU usage: 96 %
Peak working set size: 73400320 bytes
Min Latency: 0.0078 s
Max Latency: 0.0101 s
P50 Latency: 0.0081 s
P90 Latency: 0.0088 s
P95 Latency: 0.0092 s
P99 Latency: 0.0101 s
P999 Latency: 0.0101 s
"""


def request(name: str, inputs=None, signature=None) -> RunRequest:
    return RunRequest(Path(name), "x", threads=2, runs=50, warmup=3, inputs=inputs, signature=signature)


def test_benchmark_model_timed_runs_are_read_and_missing_percentiles_are_derived_and_named():
    parsed = backend_for("litert").native_benchmark.parse(BENCHMARK_MODEL, request("model.tflite"))
    latency = parsed["latency_ms"]
    # the second count= line: the timed runs, not the warm-up
    assert (latency["min"], latency["p50"], latency["mean"], latency["p95"], latency["max"]) == (
        7.8,
        8.0,
        8.0505,
        8.8,
        9.9,
    )
    assert latency["p90"] == 8.8 and latency["p99"] == 9.9  # the nearest measured bound above
    assert set(parsed["latency_derived"]) == {"p90", "p99"}
    assert "p95" in parsed["latency_derived"]["p90"]
    assert parsed["runs"] == 50 and parsed["load_ms"] == 12.5 and parsed["peak_rss_mb"] == 44.9


def test_an_old_benchmark_model_without_percentiles_derives_them_from_mean_and_max_and_says_so():
    parsed = backend_for("litert").native_benchmark.parse(BENCHMARK_MODEL_OLD, request("model.tflite"))
    assert parsed["latency_ms"]["p50"] == 104.036 and parsed["latency_ms"]["p90"] == 109.982
    assert "no median" in parsed["latency_derived"]["p50"] and "max" in parsed["latency_derived"]["p90"]
    assert parsed["peak_rss_mb"] == 7.5 and parsed["runs"] == 100


def test_perf_test_percentiles_are_all_given_by_the_program():
    parsed = backend_for("onnxruntime").native_benchmark.parse(PERF_TEST, request("model.onnx"))
    assert parsed["latency_ms"] == {
        "min": 7.8,
        "max": 10.1,
        "p50": 8.1,
        "p90": 8.8,
        "p95": 9.2,
        "p99": 10.1,
        "mean": 8.2,
    }
    assert parsed["latency_derived"] == {}
    assert parsed["load_ms"] == 41.2 and parsed["peak_rss_mb"] == 70.0 and parsed["runs"] == 50


@pytest.mark.parametrize(
    ("runtime", "suffix", "output", "message"),
    [
        ("litert", ".tflite", "ERROR: Could not open 'model.tflite'.\n", "benchmark_model printed no timings"),
        ("onnxruntime", ".onnx", "Load model from x.onnx failed\n", "onnxruntime_perf_test printed no latency"),
    ],
)
def test_output_without_timings_is_a_one_line_user_error(runtime, suffix, output, message):
    with pytest.raises(UserError, match=message) as caught:
        backend_for(runtime).native_benchmark.parse(output, request("model" + suffix))
    assert "\n" not in str(caught.value)


def test_benchmark_model_gets_the_inputs_as_raw_files_and_the_signature():
    ids = np.arange(16, dtype=np.int64).reshape(1, 16)
    args, files = backend_for("litert").native_benchmark.command(
        request("model.tflite", {"input_ids": ids}, "seq_16"), "/data/local/tmp/d"
    )
    assert "--graph=/data/local/tmp/d/model.tflite" in args and "--num_threads=2" in args
    assert "--signature_to_run_for=seq_16" in args and "--num_runs=50" in args
    assert "--input_layer_value_files=input_ids:/data/local/tmp/d/input_0.bin" in args
    assert np.array_equal(np.frombuffer(files["input_0.bin"], "<i8").reshape(1, 16), ids)


def test_perf_test_gets_the_inputs_as_test_data_beside_the_model():
    mask = np.ones((1, 16), np.int64)
    args, files = backend_for("onnxruntime").native_benchmark.command(
        request("model.onnx", {"attention_mask": mask}), "/data/local/tmp/d"
    )
    assert args[-1] == "/data/local/tmp/d/model.onnx" and args[args.index("-r") + 1] == "50"
    tensor = onnx.TensorProto.FromString(files["test_data_set_0/input_0.pb"])
    assert tensor.name == "attention_mask" and np.array_equal(numpy_helper.to_array(tensor), mask)
