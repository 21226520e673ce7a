"""The CLI contract end to end on the tiny BERT: what `export` writes, exit codes 0/2/3/130, output safety
(a failed or interrupted run never touches the previous good output and leaves no staging folder),
`devices`, `check` and `bench`.

One classifier export is shared by the module; the tests that need their own run use `--no-measure`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.backends import artifact_suffixes
from edgecompress.cli import main
from edgecompress.paths import device_profiles_dir

from conftest import user_error

SHIPPED = sorted(p.stem for p in device_profiles_dir().glob("*.toml"))
SUFFIXES = ", ".join(artifact_suffixes())  # .onnx, .ort (and .tflite where LiteRT is wired in)
EXPORT_FILES = {
    "model.onnx",
    "model.ort",
    "required_operators.config",
    "manifest.json",
    "report.json",
    "report.md",
    "report.html",  # and its plots (issue 13)
    "pareto.png",
    "pareto.svg",
    "ops.png",
    "ops.svg",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "labels.txt",
}


# ---- helpers ------------------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """Staging (`.<device>.partial-<pid>`) or backup (`.<device>.old-<pid>`) folders an export left behind."""
    return sorted(p.name for p in root.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def device_variant(folder: Path, name: str, tiny_device: Path, **replace: str) -> Path:
    """A copy of the tiny device profile named `name` (the file stem must equal the name), with edits."""
    text = tiny_device.read_text().replace('name = "tinyphone"', f'name = "{name}"')
    for pattern, new in replace.items():
        text, count = re.subn(pattern, new, text)
        assert count == 1, pattern
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint, tiny_device, tiny_data):
    """One real export of the tiny classifier, with --json: (CliRunner result, OUT/tinyphone)."""
    root = tmp_path_factory.mktemp("export")
    result = invoke(
        "export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--runs", 3, "--json"
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return result, root / "tinyphone"


@pytest.fixture
def previous(exported, tmp_path) -> tuple[Path, dict[str, str]]:
    """A fresh output root holding a copy of a good export: (root, digests of root/tinyphone)."""
    root = tmp_path / "out"
    shutil.copytree(exported[1], root / "tinyphone")
    return root, digests(root / "tinyphone")


# ---- export: what it writes ------------------------------------------------------------------------------------


def artifact_files(folder: Path) -> set[str]:
    return {a["file"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]}


def test_export_writes_every_artifact(exported, tiny_device):
    from edgecompress.devices import get_profile

    _, folder = exported
    names = {p.name for p in folder.iterdir()}
    assert names >= EXPORT_FILES
    # Anything beyond the ORT set is another artifact the profile asks for (e.g. model.tflite).
    assert names - EXPORT_FILES <= artifact_files(folder)
    kinds = [a["kind"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]]
    assert kinds == list(get_profile(tiny_device).artifacts)
    assert leftovers(folder.parent) == []
    assert (folder / "labels.txt").read_text() == "negative\npositive\n"
    assert (folder / "report.md").read_text().strip()
    operators = (folder / "required_operators.config").read_text()
    assert "ai.onnx;" in operators


def test_tflite_is_checked_against_the_onnxruntime_artifact(exported):
    report = json.loads(exported[0].stdout)
    [tflite] = [a for a in report["artifacts"] if a["file"] == "model.tflite"]
    cross = tflite["parity_vs_onnxruntime"]
    assert cross["against"] == "the ONNX Runtime artifact" and cross["passed"]
    assert cross["max_abs_diff"] <= 1e-4 and cross["prediction_agreement"] == 1.0
    assert all(a["parity_vs_onnxruntime"] is None for a in report["artifacts"] if a["file"] != "model.tflite")


def test_export_ships_the_checkpoint_tokenizer_unchanged(exported, tiny_checkpoint):
    _, folder = exported
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        assert (folder / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name


def test_manifest_hashes_match_the_files(exported):
    _, folder = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {entry["path"]: entry for entry in manifest["files"]}
    # Everything shipped is listed except the manifest itself and the reports (and their plots) written after it.
    reports = {"report.json", "report.md", "report.html", "pareto.png", "pareto.svg", "ops.png", "ops.svg"}
    assert set(listed) == {p.name for p in folder.iterdir()} - {"manifest.json", *reports}
    for name, entry in listed.items():
        data = (folder / name).read_bytes()
        assert entry["bytes"] == len(data), name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert manifest["device"] == "tinyphone"
    assert manifest["model"]["task"] == "sequence-classification"
    assert manifest["model"]["labels"] == ["negative", "positive"]
    assert [o["name"] for o in manifest["outputs"]] == ["logits"]
    assert [i["shape"] for i in manifest["inputs"]] == [[1, 16]] * 3
    assert manifest["tokenizer"]["max_length"] == 16
    assert artifact_files(folder) >= {"model.onnx", "model.ort"}
    assert manifest["passed"] is True


def test_json_prints_the_report(exported):
    result, folder = exported
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report == json.loads((folder / "report.json").read_text())
    assert {a["file"] for a in report["artifacts"]} == artifact_files(folder)
    assert all(a["host_latency"] for a in report["artifacts"])
    # Progress goes to stderr, never into the JSON on stdout.
    assert "[ 1/10] intake" in result.stderr and "[10/10] package" in result.stderr
    assert "Budget exceeded" not in result.stderr


def test_embedding_model_exports_without_data(tmp_path, tiny_encoder, tiny_device):
    result = invoke("export", tiny_encoder, "--device", tiny_device, "-o", tmp_path, "--no-measure")
    assert result.exit_code == 0, (result.output, result.exception)
    folder = tmp_path / "tinyphone"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["output"] == "sentence_embedding"
    assert manifest["model"]["task"] == "sentence-embedding"
    assert [o["name"] for o in manifest["outputs"]] == ["sentence_embedding"]
    assert not (folder / "labels.txt").exists()
    assert result.stdout.splitlines()[0] == f"wrote {folder}/"
    assert result.stdout.splitlines()[-1] == "all budgets met"


def test_an_exported_onnx_file_exports_again(exported, tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    """ONNX intake: the graph enters at the rewrite stage, with the tokenizer from --tokenizer."""
    model = tmp_path / "in" / "model.onnx"
    model.parent.mkdir()
    shutil.copyfile(exported[1] / "model.onnx", model)
    out = tmp_path / "out"
    result = invoke(
        "export",
        model,
        "--device",
        tiny_device,
        "--data",
        tiny_data,
        "--tokenizer",
        tiny_checkpoint,
        "--task",
        "sequence-classification",  # 2-D logits alone do not say single-label, multi-label or regression
        "-o",
        out,
        "--no-measure",
        "--json",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert all(a["parity"]["passed"] for a in report["artifacts"])
    assert (out / "tinyphone" / "model.ort").is_file()


# ---- budgets ---------------------------------------------------------------------------------------------------


def test_budget_miss_exits_3_with_the_report_written(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    device = device_variant(
        tmp_path / "devices", "tinybudget", tiny_device, **{r"artifact_size_mb = [0-9.]+": "artifact_size_mb = 0.001"}
    )
    out = tmp_path / "out"
    result = invoke("export", tiny_checkpoint, "--device", device, "--data", tiny_data, "-o", out, "--no-measure")
    assert result.exit_code == 3, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    folder = out / "tinybudget"
    for name in ("report.json", "report.md", "manifest.json", "model.onnx", "model.ort"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "report.json").read_text())["passed"] is False
    assert json.loads((folder / "manifest.json").read_text())["passed"] is False
    assert "BUDGET EXCEEDED" in (folder / "report.md").read_text()
    misses = [line for line in result.stderr.splitlines() if line.startswith("Budget exceeded:")]
    files = [a["file"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]]
    assert len(misses) == len(files) >= 2, result.stderr
    for line, file in zip(misses, files):
        assert re.fullmatch(
            rf"Budget exceeded: artifact size on tinybudget for {re.escape(file)}: "
            rf"[0-9.]+ MB > 0\.001 MB \(static\)",
            line,
        ), line
    assert result.stdout.splitlines()[-1] == "BUDGET EXCEEDED (see report.md)"
    assert leftovers(out) == []


# ---- output safety -----------------------------------------------------------------------------------------


def test_failed_export_keeps_the_previous_output(previous, tmp_path, tiny_checkpoint, tiny_device):
    root, before = previous
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfun,happy\n")
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", bad, "-o", root, "--no-measure")
    assert user_error(result).startswith(f"error: {bad}: labels ['happy'] are not known to the model")
    assert digests(root / "tinyphone") == before
    assert sorted(p.name for p in root.iterdir()) == ["tinyphone"]


def test_export_failing_after_staging_keeps_the_previous_output(
    previous, monkeypatch, tiny_checkpoint, tiny_device, tiny_data
):
    """A verification failure happens with the staging folder half written: it must vanish, the old stays."""
    import numpy as np

    import edgecompress.verify.artifacts

    root, before = previous
    monkeypatch.setattr(
        edgecompress.verify.artifacts,
        "artifact_outputs",
        lambda artifact, feeds, **_: np.full((len(feeds["input_ids"]), 2), 9.0, np.float32),
    )
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--no-measure")
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "does not match the reference model" in errors[0]
    assert digests(root / "tinyphone") == before
    assert leftovers(root) == []


@pytest.mark.parametrize("with_previous", [True, False], ids=["over-previous", "first-export"])
def test_interrupted_export_exits_130_and_leaves_no_trace(
    with_previous, previous, tmp_path, monkeypatch, tiny_checkpoint, tiny_device, tiny_data
):
    import edgecompress.measure.host

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgecompress.measure.host, "measure_on_host", interrupted)
    root, before = previous
    if not with_previous:
        shutil.rmtree(root / "tinyphone")
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--runs", 3)
    assert result.exit_code == 130, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines()[-1] == "interrupted: nothing was written; any previous output is intact"
    assert "[ 8/10] measure" in result.stderr  # the interrupt came after the staging folder was filled
    assert leftovers(root) == []
    if with_previous:
        assert digests(root / "tinyphone") == before
    else:
        assert list(root.iterdir()) == []


def test_output_root_that_is_a_file(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    root = tmp_path / "out"
    root.write_text("not a folder")
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--no-measure")
    assert user_error(result) == f"error: {root}: cannot create the output folder (File exists)"
    assert root.read_text() == "not a folder"


# ---- devices -------------------------------------------------------------------------------------------------


def test_unknown_device(tmp_path, tiny_checkpoint, tiny_data):
    result = invoke("export", tiny_checkpoint, "--device", "pixel77", "--data", tiny_data, "-o", tmp_path / "out")
    line = user_error(result)
    assert line.startswith(f"error: Unknown device 'pixel77'. Known: {', '.join(SHIPPED)}; hint: ")
    assert not (tmp_path / "out").exists()


def test_dynamic_shape_profile_exports_and_audits(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    device = device_variant(
        tmp_path / "devices",
        "tinyboard",
        tiny_device,
        **{
            r"dynamic_shapes = false": "dynamic_shapes = true",
            r'artifacts = \["onnx", "ort", "tflite"\]': 'artifacts = ["onnx", "ort"]',
        },
    )
    result = invoke(
        "export",
        tiny_checkpoint,
        "--device",
        device,
        "--data",
        tiny_data,
        "-o",
        tmp_path / "out",
        "--no-measure",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert all(a["op_histogram"] and a["float_ops_inside"] == [] for a in report["artifacts"])


def test_unknown_quantize_mode(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    result = invoke(
        "export",
        tiny_checkpoint,
        "--device",
        tiny_device,
        "--data",
        tiny_data,
        "-o",
        tmp_path / "out",
        "--quantize",
        "int3",
    )
    line = user_error(result)
    assert line.startswith("error: unknown quantization mode 'int3'; hint: Known: none, dynamic-int8, int8, ")
    assert not (tmp_path / "out").exists()


def test_quantize_option_quantizes_the_profile_recipe(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    result = invoke(
        "export",
        tiny_checkpoint,
        "--device",
        tiny_device,
        "--data",
        tiny_data,
        "-o",
        tmp_path / "out",
        "--quantize",
        "dynamic-int8",
        "--no-measure",
        "--json",
    )
    assert result.exit_code in (0, 3), result.output
    report = json.loads(result.stdout)
    assert report["recipe"]["name"] == "dynamic-int8"
    quantize = next(p for p in report["passes"] if p["name"] == "quantize_dynamic")
    assert quantize["fired"] and quantize["lossy"]


def test_profile_quantize_field_is_checked(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    device = device_variant(
        tmp_path / "devices", "tinyphone", tiny_device, **{r'quantize = "none"': 'quantize = "int3"'}
    )
    result = invoke("export", tiny_checkpoint, "--device", device, "--data", tiny_data, "-o", tmp_path / "out")
    assert user_error(result).startswith(f"error: {device}: field 'quantize' must be one of none, dynamic-int8, ")


def test_device_profile_with_a_bad_field_names_file_and_field(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    device = device_variant(tmp_path / "devices", "tinyphone", tiny_device, **{r"threads = 2": 'threads = "two"'})
    result = invoke("export", tiny_checkpoint, "--device", device, "--data", tiny_data, "-o", tmp_path / "out")
    assert user_error(result) == f"error: {device}: field 'runtime.threads' must be a positive integer, got \"two\""
    assert not (tmp_path / "out").exists()


def test_devices_table_lists_every_shipped_profile():
    result = invoke("devices")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["name", "device", "soc", "thr", "seq"]
    assert [line.split()[0] for line in lines[1:]] == SHIPPED
    pixel7 = next(line for line in lines if line.startswith("pixel7 "))
    from edgecompress.devices import get_profile

    assert "Google Pixel 7" in pixel7 and pixel7.endswith(",".join(get_profile("pixel7").artifacts))


def test_devices_json():
    result = invoke("devices", "--json")
    assert result.exit_code == 0
    assert [p["name"] for p in json.loads(result.stdout)] == SHIPPED


def test_devices_show_prints_json():
    result = invoke("devices", "show", "pixel7")
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)
    assert profile["name"] == "pixel7"
    assert profile["runtime"]["seq_len"] == 128
    assert set(profile["budgets"]) >= {"latency_p90_ms", "peak_memory_mb", "artifact_size_mb"}


def test_devices_show_unknown():
    line = user_error(invoke("devices", "show", "nope"))
    assert line.startswith(f"error: Unknown device 'nope'. Known: {', '.join(SHIPPED)}; hint: ")


# ---- check ------------------------------------------------------------------------------------------------------


def test_check_against_a_device_with_another_seq_len(exported, tmp_path, tiny_device):
    _, folder = exported
    device = device_variant(
        tmp_path, "tinyphone32", tiny_device, **{r"seq_len = 16": "seq_len = 32", r"buckets = \[16\]": "buckets = [32]"}
    )
    result = invoke("check", folder, "--device", device)
    assert result.exit_code == 3, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("EXCEEDED: fixed seq_len on tinyphone32 for inputs:")
    assert (
        "note: artifacts are fixed to seq_len [16], tinyphone32 wants 32: re-export with --device tinyphone32" in lines
    )
    assert lines[-1] == "BUDGET EXCEEDED"


def test_check_against_the_same_device_passes(exported, tiny_device):
    _, folder = exported
    result = invoke("check", folder, "--device", tiny_device, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    verdicts = json.loads(result.stdout)
    assert verdicts["passed"] is True and verdicts["device"] == "tinyphone"
    assert set(verdicts["verdicts"]) == artifact_files(folder)


def test_check_a_folder_that_is_not_an_export(tmp_path):
    line = user_error(invoke("check", tmp_path, "--device", "pixel7"))
    assert line == (
        f"error: {tmp_path}: not an edgecompress export: manifest.json, report.json, model.onnx missing; "
        f"hint: pass the folder `edgecompress export` wrote, e.g. dist/pixel7"
    )


def test_check_unknown_device(exported):
    line = user_error(invoke("check", exported[1], "--device", "pixel77"))
    assert line.startswith("error: Unknown device 'pixel77'. Known: ")


# ---- bench --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_onnx(tmp_path_factory) -> Path:
    """A minimal text model: input_ids -> 4096-row embedding table -> mean over tokens."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4096, 8)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["hidden"]),
            helper.make_node("ReduceMean", ["hidden", "axes"], ["sentence_embedding"], keepdims=0),
        ],
        "embed",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 16])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, [1, 8])],
        initializer=[table, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path_factory.mktemp("bench") / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_bench_json(embedding_onnx):
    result = invoke("bench", embedding_onnx, "--runs", 5, "--warmup", 1, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    measured = json.loads(result.stdout)
    assert measured["runs"] == 5 and measured["threads"] == 1
    assert measured["inputs"]["input_ids"]["shape"] == [1, 16]
    assert 0 < measured["latency_ms"]["p50"] <= measured["latency_ms"]["p99"]


def test_bench_text(embedding_onnx):
    result = invoke("bench", embedding_onnx, "--runs", 5, "--warmup", 1)
    assert result.exit_code == 0, (result.output, result.exception)
    first, second = result.stdout.splitlines()
    assert first.startswith("model.onnx: p50 ") and "peak RSS" in first
    assert second.startswith("measured on host (onnxruntime ")


def test_bench_an_exported_tiny_model(exported):
    result = invoke("bench", exported[1] / "model.onnx", "--runs", 5, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["runs"] == 5


def test_bench_missing_file(tmp_path):
    path = tmp_path / "missing.onnx"
    assert user_error(invoke("bench", path)) == (
        f"error: {path}: artifact does not exist; expected an artifact file ({SUFFIXES})"
    )


def test_bench_a_text_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("hello\n")
    assert user_error(invoke("bench", path)) == f"error: {path}: no runner for '.txt' files; expected one of {SUFFIXES}"


def test_bench_a_folder(exported):
    folder = exported[1]
    assert user_error(invoke("bench", folder)) == (
        f"error: {folder}: artifact is a folder, not a file; expected an artifact file ({SUFFIXES}); "
        f"hint: pass a file inside it, e.g. {folder / 'model.onnx'}"
    )


def test_bench_a_corrupt_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("not a model\n")
    line = user_error(invoke("bench", path))
    assert "cannot load" in line and "bug" not in line


# ---- issue 17: faults, reproducibility, small contracts ------------------------------------------------------


def test_full_disk_is_one_line_naming_the_folder_and_keeps_the_previous_output(
    previous, monkeypatch, tiny_checkpoint, tiny_device, tiny_data
):
    """ENOSPC as the writer meets it: part of the file lands on disk, then the write fails."""
    import errno
    import os

    import onnx

    root, before = previous

    def full_disk(model, path, *args, **kwargs):
        Path(path).write_bytes(model.SerializeToString()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx, "save_model", full_disk)
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--no-measure")
    line = user_error(result)
    assert line.startswith(f"error: {root}: no space left while writing the export (No space left on device)")
    assert digests(root / "tinyphone") == before
    assert leftovers(root) == []


def test_late_failure_removes_the_output_root_it_created(
    tmp_path, monkeypatch, tiny_checkpoint, tiny_device, tiny_data
):
    import edgecompress.verify.artifacts
    from edgecompress.errors import VerificationError

    def fails(*args, **kwargs):
        raise VerificationError("made to fail late")

    monkeypatch.setattr(edgecompress.verify.artifacts, "artifact_outputs", fails)
    root = tmp_path / "new" / "out"
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--no-measure")
    assert result.exit_code == 1 and "made to fail late" in result.stderr
    assert not (tmp_path / "new").exists()


def test_unforeseen_exception_is_one_please_report_line(tmp_path, monkeypatch, tiny_checkpoint, tiny_device, tiny_data):
    import edgecompress.intake.data

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(edgecompress.intake.data, "prepare_eval_data", broken)
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", tmp_path / "o")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: internal error: ZeroDivisionError: division by zero (this is a bug in edgecompress; please report "
        "it with the output of -v)"
    )


def test_stale_staging_of_a_dead_process_is_removed_by_the_next_export(
    previous, tiny_checkpoint, tiny_device, tiny_data
):
    import subprocess
    import sys

    root, _ = previous
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f".tinyphone.partial-{dead.pid}"
    (stale / "model.onnx").parent.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    alive = root / ".tinyphone.partial-1"  # pid 1 is alive: another export's staging stays
    alive.mkdir()
    result = invoke("export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", root, "--no-measure")
    assert result.exit_code == 0, result.output
    assert leftovers(root) == [alive.name]


def test_sigterm_exits_143_removes_staging_and_keeps_the_previous_output(
    previous, tiny_checkpoint, tiny_device, tiny_data
):
    """A real process and a real signal, sent while the staging folder exists (during measure)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, before = previous
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecompress.cli",
            "export",
            str(tiny_checkpoint),
            "--device",
            str(tiny_device),
            "--data",
            str(tiny_data),
            "-o",
            str(root),
            "--runs",
            "100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any((root / p).is_dir() and ".partial-" in p for p in os.listdir(root)):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "terminated (SIGTERM): nothing was written; any previous output is intact"
    assert leftovers(root) == []
    assert digests(root / "tinyphone") == before


def test_two_identical_exports_are_byte_identical(exported, tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    result = invoke(
        "export", tiny_checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", tmp_path, "--no-measure"
    )
    assert result.exit_code == 0, result.output
    first, second = digests(exported[1]), digests(tmp_path / "tinyphone")
    shipped = sorted(artifact_files(exported[1]) | {"required_operators.config"})
    assert "model.ort" in shipped
    assert {name: first[name] for name in shipped} == {name: second[name] for name in shipped}


def test_manifest_names_the_quantization(exported, tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    assert json.loads((exported[1] / "manifest.json").read_text())["quantization"] == "none"
    result = invoke(
        "export",
        tiny_checkpoint,
        "--device",
        tiny_device,
        "--data",
        tiny_data,
        "-o",
        tmp_path,
        "--quantize",
        "dynamic-int8",
        "--no-measure",
    )
    assert result.exit_code in (0, 3), result.output
    assert json.loads((tmp_path / "tinyphone" / "manifest.json").read_text())["quantization"] == "dynamic-int8"


def test_verbose_after_the_subcommand():
    result = invoke("devices", "show", "pixel7", "-v")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "pixel7"


def test_bench_a_small_vocabulary_tflite(exported):
    result = invoke("bench", exported[1] / "model.tflite", "--runs", 3, "--warmup", 1, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["runs"] == 3
