"""export --search (issue 13): the ladder, the winner rule, skipped branches, candidates.json, the shipped folder,
students' loyalty to the original model, and exit 3 with the table when no candidate meets every budget.

Two real searches on the tiny BERT (module fixtures, --no-measure: the latency budget is judged on the device
estimate), and the rules themselves on rows built by hand.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.distill.held_out import checkpoint_digest
from edgecompress.search.candidates import CHEAP, TRAINING, Candidate
from edgecompress.search.loop import _skip_reason, shapes_cannot_meet
from edgecompress.search.table import RAN, SKIPPED, Row, choose_winner, explain_losses

from conftest import SENTENCES, build_tiny_checkpoint, write_csv
from test_report_html import assert_renders

QUANTIZATION_RUNGS = ["float", "dynamic-int8", "int8", "int8-int4-mixed", "int4"]


def _student(root: Path, teacher: Path) -> Path:
    """A tiny BERT of another seed whose training.json names the teacher, as distill writes it."""
    folder = build_tiny_checkpoint(root / "student", seed=1)  # predicts the other class: agreement 0
    record = {"kind": "transformer", "teacher": {"path": str(teacher), "digest": checkpoint_digest(teacher)}}
    (folder / "training.json").write_text(json.dumps(record))
    return folder


def _search(model: Path, device: Path, data: Path, out: Path, *extra: str):
    argv = ["export", str(model), "--device", str(device), "--data", str(data), "-o", str(out), "--no-measure"]
    return CliRunner().invoke(main, argv + ["--search", *extra])


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_checkpoint, tiny_device, tiny_data):
    root = tmp_path_factory.mktemp("search")
    student = _student(root, tiny_checkpoint)
    result = _search(tiny_checkpoint, tiny_device, tiny_data, root / "dist", "--student", str(student))
    return result, root / "dist" / "tinyphone", student


def _candidates(folder: Path) -> dict:
    return json.loads((folder / "candidates.json").read_text())


def test_the_winner_is_the_most_accurate_candidate_meeting_every_budget(searched):
    result, folder, _ = searched
    assert result.exit_code == 0, result.output
    document = _candidates(folder)
    passing = [c for c in document["candidates"] if c["status"] == RAN and c["passed"]]
    assert passing
    best = min(passing, key=lambda c: (-c["accuracy"]["value"], c["size_mb"], c["latency_ms"]["value"]))
    assert document["winner"] == best["name"]
    report = json.loads((folder / "report.json").read_text())
    assert report["search"]["winner"] == best["name"] and report["passed"]
    assert f"wrote {folder}/ ({best['name']};" in result.stdout


def test_the_shipped_folder_is_a_complete_export_of_the_winner(searched):
    _, folder, _ = searched
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:  # every file the manifest lists, as the winner's export wrote it
        assert hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not list(folder.parent.glob(".*partial*")), "no work or staging folder is left behind"


def test_every_candidate_is_listed_with_its_figures_and_why(searched):
    result, folder, student = searched
    rows = {c["name"]: c for c in _candidates(folder)["candidates"]}
    # tinyphone quantizes "none": a student is tried as it is (under pixel7 also quantized as pixel7 says)
    assert list(rows) == QUANTIZATION_RUNGS + [f"student-{student.name}", "pruned"]
    assert rows["pruned"]["status"] == SKIPPED and "--train-data" in rows["pruned"]["reason"]
    for row in rows.values():
        assert row["reason"], row["name"]  # the winner says it won; the others why they lost or were skipped
        if row["status"] == RAN:
            assert row["accuracy"]["how"] == "measured" and row["latency_ms"]["how"] == "estimated"
            assert set(row["budgets"]) == {"accuracy drop", "p90 latency", "peak memory", "artifact size"}
            assert row["name"] in result.stdout  # the table


def test_a_students_agreement_is_with_the_original_model(searched, tiny_checkpoint, tiny_data):
    from edgecompress.intake.data import load_dataset, tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.verify.evaluate import reference_outputs

    _, folder, student = searched
    row = {c["name"]: c for c in _candidates(folder)["candidates"]}[f"student-{student.name}"]
    texts = load_dataset(tiny_data, require_labels=True).texts
    predicted = {}
    for name, path in (("teacher", tiny_checkpoint), ("student", student)):
        bundle = load_bundle(path)
        feeds = tokenize(bundle.tokenizer, texts, seq_len=16, input_names=bundle.input_names)
        predicted[name] = reference_outputs(bundle, feeds).argmax(-1)
    expected = float(np.mean(predicted["teacher"] == predicted["student"]))
    assert row["agreement"]["value"] == pytest.approx(expected)
    assert "the original model" in row["agreement"]["method"]
    assert expected < 1.0, "the two seeds should disagree somewhere, or this test proves nothing"


def test_the_search_report_html_has_every_candidate_and_renders(searched):
    _, folder, _ = searched
    ran = [c["name"] for c in _candidates(folder)["candidates"] if c["status"] == RAN]
    svg = (folder / "pareto.svg").read_text()
    assert all(name in svg for name in ran)
    page = (folder / "report.html").read_text()
    assert "<h2>Candidates</h2>" in page and all(name in page for name in ran)
    assert_renders(folder / "report.html")


@pytest.fixture(scope="module")
def impossible(tmp_path_factory, tiny_checkpoint, tiny_data):
    """A profile no candidate can meet (p90 budget of a nanosecond), with --train-data: pruning gets its turn."""
    from edgecompress.devices import derived_profile_text

    root = tmp_path_factory.mktemp("impossible")
    text = derived_profile_text("pixel7", name="nophone", seq_len=16)
    device = root / "nophone.toml"
    device.write_text(text.replace("latency_p90_ms = 40.0", "latency_p90_ms = 0.000001"))
    train = write_csv(root / "train.csv", SENTENCES * 3)
    previous = root / "dist" / "nophone"
    result = _search(tiny_checkpoint, device, tiny_data, root / "dist", "--train-data", str(train))
    return result, previous


def test_no_candidate_meeting_the_budgets_exits_3_with_the_table(impossible):
    result, folder = impossible
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stderr
    assert "no candidate meets every budget of" in result.stderr
    document = _candidates(folder)
    assert document["winner"] is None and document["passed"] is False
    for row in document["candidates"]:
        assert row["name"] in result.stdout
        if row["status"] == RAN:
            assert "p90 latency" in row["reason"] and not row["passed"]
    report = json.loads((folder / "report.json").read_text())
    assert report["search"]["winner"] is None and "NO candidate" in report["search"]["verdict"]


def test_pruning_gets_its_turn_but_no_training_that_cannot_meet_the_budgets(impossible):
    """No cheap candidate meets the budgets, so each sparsity is tried: its untrained twin misses the latency
    budget (estimated from shapes), so no training is spent; the heaviest cannot even take the tiny BERT's 2 heads."""
    _, folder = impossible
    rows = {c["name"]: c for c in _candidates(folder)["candidates"] if c["tier"] == TRAINING}
    assert list(rows) == [f"{name}+dynamic-int8" for name in ("pruned-h25-f50", "pruned-h50-f75", "pruned-h75-f88")]
    for name in list(rows)[:2]:
        assert rows[name]["status"] == SKIPPED
        assert "without recovery training" in rows[name]["reason"] and "p90 latency" in rows[name]["reason"]
    heaviest = rows["pruned-h75-f88+dynamic-int8"]
    assert heaviest["status"] == "failed" and "before training" in heaviest["reason"]


# ---- the rules, on rows built by hand ------------------------------------------------------------------------


def _row(name: str, accuracy: float, size: float, latency: float, passed: bool, tier: str = CHEAP, **missed) -> Row:
    budgets = {
        "accuracy drop": {"value": missed.get("drop", 0.1), "limit": 1.0, "passed": "drop" not in missed},
    }
    return Row(
        name,
        name,
        tier,
        RAN,
        accuracy={"value": accuracy, "how": "measured", "method": ""},
        size_mb=size,
        latency_ms={"value": latency, "how": "estimated", "method": ""},
        budgets={k: {**v, "budget": k, "unit": "points", "how": "measured"} for k, v in budgets.items()},
        passed=passed,
    )


def test_ties_go_to_the_smaller_then_the_faster():
    rows = [_row("a", 0.9, 5.0, 3.0, True), _row("b", 0.9, 4.0, 9.0, True), _row("c", 0.9, 4.0, 2.0, True)]
    rows.append(_row("more-accurate-but-over-budget", 0.95, 1.0, 1.0, False))
    winner = choose_winner(rows)
    assert winner is not None and winner.name == "c"
    explain_losses(rows, winner)
    assert "larger" in rows[0].reason and "slower" in rows[1].reason
    assert rows[3].reason.startswith("misses")


def test_a_branch_that_missed_accuracy_is_not_tried_heavier():
    lighter = _row("dynamic-int8", 0.8, 1.0, 1.0, False, drop=3.0)
    heavier = Candidate("int4", Path("m"), "int4", CHEAP, "int4", after="dynamic-int8")
    reason = _skip_reason(heavier, {"dynamic-int8": lighter})
    assert reason is not None and "misses the accuracy budget" in reason
    lighter_ok = _row("dynamic-int8", 0.9, 1.0, 1.0, False)  # missed another budget: the heavier one may fix it
    assert _skip_reason(heavier, {"dynamic-int8": lighter_ok}) is None


def test_only_budgets_fixed_by_shapes_stop_training():
    probe = _row("pruned", 0.5, 1.0, 1.0, False, TRAINING, drop=5.0)  # accuracy: training may recover it
    assert shapes_cannot_meet(probe) is None
    probe.budgets["p90 latency"] = {"budget": "p90 latency", "value": 9.0, "limit": 5.0, "unit": "ms", "passed": False}
    probe.budgets["p90 latency"]["how"] = "measured"  # a measurement on the device might differ after training
    assert shapes_cannot_meet(probe) is None
    probe.budgets["p90 latency"]["how"] = "estimated"
    reason = shapes_cannot_meet(probe)
    assert reason is not None and "p90 latency 9 ms > 5 ms (estimated)" in reason


def test_training_is_skipped_once_a_cheap_candidate_meets_every_budget():
    pruned = Candidate("pruned-a", Path("m"), "dynamic-int8", TRAINING, "pruned", recipe=Path("r.toml"))
    assert _skip_reason(pruned, {"float": _row("float", 0.9, 9.0, 9.0, False)}) is None
    reason = _skip_reason(pruned, {"int8": _row("int8", 0.9, 1.0, 1.0, True)})
    assert reason is not None and "int8" in reason


def test_a_failed_search_leaves_the_previous_output_untouched(searched, tmp_path, tiny_device, tiny_data):
    """A search that stops on bad input after a good one: the good folder is byte-identical."""
    _, folder, _ = searched
    out = Path(shutil.copytree(folder.parent, tmp_path / "dist"))
    before = {p.name: p.read_bytes() for p in (out / "tinyphone").iterdir()}
    result = _search(tmp_path / "no-such-model", tiny_device, tiny_data, out)
    assert result.exit_code == 2
    assert "model path does not exist" in result.stderr  # the first rung's own line, not a summary
    assert {p.name: p.read_bytes() for p in (out / "tinyphone").iterdir()} == before
    fresh = tmp_path / "new" / "dist"
    assert _search(tmp_path / "no-such-model", tiny_device, tiny_data, fresh).exit_code == 2
    assert not (tmp_path / "new").exists(), "the folders made for the output are removed again"


def test_an_interrupted_search_leaves_the_previous_output_and_no_work_folder(
    searched, tmp_path, tiny_checkpoint, tiny_device, tiny_data
):
    """Ctrl-C during the second candidate: the work folder goes, the previous good output stays as it was."""
    from edgecompress.pipeline import ExportRequest
    from edgecompress.search.loop import SearchProgress, SearchRequest, run_search

    class CtrlC(SearchProgress):
        def line(self, text: str) -> None:
            if text.startswith("[search 2/"):
                raise KeyboardInterrupt

    _, folder, _ = searched
    out = Path(shutil.copytree(folder.parent, tmp_path / "dist"))
    before = {p.name: p.read_bytes() for p in (out / "tinyphone").iterdir()}
    request = ExportRequest(tiny_checkpoint, str(tiny_device), out, data=tiny_data, measure=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(SearchRequest(request), CtrlC())
    assert sorted(p.name for p in out.iterdir()) == ["tinyphone"]
    assert {p.name: p.read_bytes() for p in (out / "tinyphone").iterdir()} == before


def test_a_cached_lowering_gives_the_same_artifacts_and_is_not_edited_by_a_quantizing_export(
    tmp_path, tiny_checkpoint, tiny_device, tiny_data
):
    """Float after int8 with one StageCache: the float file is the one an uncached export writes (graph passes
    edit their input in place, so a cache handing out its own graph would ship int8 leftovers)."""
    from edgecompress.pipeline import ExportRequest, Progress, StageCache, run_export

    class Stages(Progress):
        summaries: list[str] = []  # shared by the three exports, in order

        def stage_finished(self, name: str, seconds: float, summary: str) -> None:
            self.summaries.append(f"{name}: {summary}")

    def export(out: str, quantize: str, cache: StageCache | None) -> bytes:
        request = ExportRequest(
            tiny_checkpoint, str(tiny_device), tmp_path / out, data=tiny_data, quantize=quantize, measure=False
        )
        request.stage_cache = cache
        return (run_export(request, Stages()).out_dir / "model.onnx").read_bytes()

    cache = StageCache()
    export("int8", "dynamic-int8", cache)
    cached_float = export("cached", "none", cache)
    assert cached_float == export("fresh", "none", None)
    reused = [s for s in Stages.summaries if s.startswith("lower:") and "reused from an earlier export" in s]
    assert len(reused) == 1  # the second export of the cache, not the first and not the uncached one


def test_a_torch_pass_is_reused_by_another_profile_of_the_same_length_and_not_by_other_options(
    tmp_path, tiny_checkpoint, tiny_device, tiny_data
):
    """A model compressed for one profile is the same model for another of its seq_len (a pruned candidate checked
    for pixel7 and for rpi4 trains once); different pass options compress again."""
    from edgecompress.devices import derived_profile_text
    from edgecompress.pipeline import ExportRequest, Progress, StageCache, run_export

    other_phone = tmp_path / "otherphone.toml"  # as rpi4 beside pixel7: another name, fewer artifacts
    text = derived_profile_text("pixel7", name="otherphone", seq_len=16, artifacts=["onnx"])
    other_phone.write_text(text.replace('quantize = "dynamic-int8"', 'quantize = "none"'))
    summaries: list[str] = []

    class Stages(Progress):
        def stage_finished(self, name: str, seconds: float, summary: str) -> None:
            summaries.append(f"{name}: {summary}")

    def recipe(ratio: float) -> Path:
        path = tmp_path / f"drop-{ratio}.toml"
        path.write_text(f'extends = "default"\n\n[[compress]]\npass = "drop_layers"\nratio = {ratio}\n')
        return path

    def export(device: Path, ratio: float, cache: StageCache | None, out: str) -> bytes:
        request = ExportRequest(
            tiny_checkpoint, str(device), tmp_path / out, data=tiny_data, recipe=str(recipe(ratio)), measure=False
        )
        request.stage_cache = cache
        return (run_export(request, Stages()).out_dir / "model.onnx").read_bytes()

    cache = StageCache()
    export(tiny_device, 0.5, cache, "first")
    reused = export(other_phone, 0.5, cache, "second")
    export(other_phone, 0.25, cache, "third")
    compress = [s for s in summaries if s.startswith("compress:")]
    assert ["reused from an earlier export" in s for s in compress] == [False, True, False]
    assert reused == export(other_phone, 0.5, None, "fresh")


def test_a_torch_pass_is_reused_on_other_eval_texts_and_scored_on_them(
    tmp_path, tiny_checkpoint, tiny_device, tiny_data
):
    """Passes never read --data: a winner re-exported on the test split keeps its trained model and is scored on
    the new texts (the report's accuracy is theirs), its file the same as a fresh export's."""
    import json as json_module

    from edgecompress.pipeline import ExportRequest, Progress, StageCache, run_export

    lines = Path(tiny_data).read_text().splitlines()
    other_data = tmp_path / "other.csv"
    other_data.write_text("\n".join([lines[0], *lines[1:][::-1][: max(4, len(lines) // 2)]]) + "\n")
    recipe = tmp_path / "drop.toml"
    recipe.write_text('extends = "default"\n\n[[compress]]\npass = "drop_layers"\nratio = 0.5\n')
    summaries: list[str] = []

    class Stages(Progress):
        def stage_finished(self, name: str, seconds: float, summary: str) -> None:
            summaries.append(f"{name}: {summary}")

    def export(data, cache: StageCache | None, out: str):
        request = ExportRequest(
            tiny_checkpoint, str(tiny_device), tmp_path / out, data=data, recipe=str(recipe), measure=False
        )
        request.stage_cache = cache
        return run_export(request, Stages()).out_dir

    cache = StageCache()
    export(tiny_data, cache, "validation")
    reused = export(other_data, cache, "test")
    compress = [s for s in summaries if s.startswith("compress:")]
    assert "their model reused from an earlier export (scored on these texts)" in compress[1]
    fresh = export(other_data, None, "fresh")
    assert (reused / "model.onnx").read_bytes() == (fresh / "model.onnx").read_bytes()
    reports = [json_module.loads((d / "report.json").read_text())["artifacts"][0] for d in (reused, fresh)]
    assert reports[0]["accuracy"]["value"] == reports[1]["accuracy"]["value"]
    assert reports[0]["parity"]["examples"] == len(other_data.read_text().splitlines()) - 1  # the new texts


def test_pruning_is_not_planned_for_an_onnx_file_or_without_train_data(tmp_path):
    from edgecompress.pipeline import ExportRequest
    from edgecompress.search.loop import _why_no_pruning

    train = tmp_path / "train.csv"
    onnx_input = ExportRequest(tmp_path / "model.onnx", "pixel7", tmp_path, train_data=train)
    assert "is an ONNX file" in (_why_no_pruning(onnx_input) or "")
    assert "--train-data" in (_why_no_pruning(ExportRequest(tmp_path / "ckpt", "pixel7", tmp_path)) or "")
    assert _why_no_pruning(ExportRequest(tmp_path / "ckpt", "pixel7", tmp_path, train_data=train)) is None


def test_an_untrained_twin_failing_verification_leaves_the_verdict_to_training(tmp_path, monkeypatch):
    """Verification judges weights, which training changes: the candidate is trained. An export error of its
    shapes (a sparsity the model cannot take) fails it before training."""
    from edgecompress.errors import UserError, VerificationError
    from edgecompress.pipeline import ExportRequest
    from edgecompress.search import loop

    probe = tmp_path / "probe.toml"
    candidate = Candidate("pruned", tmp_path, "dynamic-int8", TRAINING, "pruned", shapes_probe=probe)
    base = ExportRequest(tmp_path / "ckpt", "pixel7", tmp_path)

    def fails_with(error):
        def run_export(request, progress):
            assert request.recipe == str(probe)
            raise error

        monkeypatch.setattr(loop, "run_export", run_export)
        return loop._probe_shapes(candidate, base, tmp_path, None)

    assert fails_with(VerificationError("its own-length run strays from its padded run")) is None
    row = fails_with(UserError("cannot remove 3 of 2 heads"))
    assert row is not None and row.status == "failed" and "before training" in row.reason
