"""Benchmark: `export --search` on the Rotten Tomatoes teacher for three profiles (issue 13's targets).

Per profile, one search (`--train-data` the train split, `--data` the validation split: the search selects on it;
the test split only scores the winner once at the end), then the checks the issue asks for:

  - the search finishes in at most 30 minutes (wall clock, this machine);
  - its winner meets every budget;
  - no candidate it skipped or rejected would have met every budget with higher accuracy: every skipped
    candidate is exported once here, by hand, with the settings the search would have used.

Profiles: pixel7 and rpi4 as shipped; a55-lowend with a 10 ms p90 budget (the issue's hard case, where the
winner must be found without a user choosing anything).

    python tools/bench_search.py [--profiles pixel7 a55-lowend-10ms rpi4] [--limit-train N] [--out result.json]
    python tools/bench_search.py --tiny     # end-to-end check of this script on a tiny BERT built in code

Do not read timings from a loaded machine: the lead runs this on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgecompress.devices import derived_profile_text, get_profile  # noqa: E402
from edgecompress.errors import EdgecompressError  # noqa: E402
from edgecompress.logs import show_progress_on_stderr  # noqa: E402
from edgecompress.pipeline import ExportRequest, Progress, StageCache, run_export  # noqa: E402
from edgecompress.search.candidates import plan  # noqa: E402
from edgecompress.search.loop import SearchProgress, SearchRequest, row_summary, run_search  # noqa: E402
from edgecompress.search.table import RAN, SKIPPED, rank_key, row_from_report  # noqa: E402

TIME_LIMIT_S = 30 * 60
PROFILES = ("pixel7", "a55-lowend-10ms", "rpi4")
# The by-hand exports of every profile share one cache: a pruned model trained to check pixel7 is the same model
# rpi4's check needs (same seq_len). Each search keeps its own cold cache, so its time is what a user waits.
BY_HAND = StageCache()


class Lines(SearchProgress):
    def line(self, text: str) -> None:
        log(text)


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    show_progress_on_stderr()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        scratch = Path(tmp)
        model, data, train, test, seq_len = tiny_assets(scratch) if args.tiny else teacher_assets(args, scratch)
        results = []
        for name in args.profiles:
            device = profile_file(name, scratch, seq_len)
            base = ExportRequest(
                model, str(device), scratch / "dist" / name, data=data, train_data=train, runs=args.runs
            )
            results.append(bench_profile(name, base, test, scratch))
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), help="shipped names, or a55-lowend-10ms")
    parser.add_argument("--limit-train", type=int, help="training texts (a smoke run; default: all)")
    parser.add_argument("--runs", type=int, default=50, help="timed host runs per artifact")
    parser.add_argument("--tiny", action="store_true", help="a tiny BERT built in code: checks this script runs")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args()


def teacher_assets(args, scratch: Path):
    import example_assets
    import train_teacher

    teacher = train_teacher.teacher_dir()
    splits = example_assets.rotten_tomatoes_dir()
    train = splits / "train.csv"
    if args.limit_train:
        train = scratch / "train.csv"
        example_assets.write_csv(train, example_assets.read_csv(splits / "train.csv")[: args.limit_train])
    return teacher, splits / "validation.csv", train, splits / "test.csv", None


def tiny_assets(scratch: Path):
    """The tests' tiny BERT and sentences, at seq_len 16 (its positions stop at 64)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import SENTENCES, build_tiny_checkpoint, write_csv

    model = build_tiny_checkpoint(scratch / "tiny")
    data = write_csv(scratch / "eval.csv", SENTENCES)
    train = write_csv(scratch / "train.csv", SENTENCES * 3)
    return model, data, train, data, 16


def profile_file(name: str, scratch: Path, seq_len: int | None) -> Path:
    """The profile as a file: a55-lowend-10ms is a55-lowend with a 10 ms p90 budget; --tiny shortens seq_len."""
    base = "a55-lowend" if name == "a55-lowend-10ms" else name
    text = derived_profile_text(base, name=name, seq_len=seq_len)
    if name == "a55-lowend-10ms":
        text = text.replace("latency_p90_ms = 120.0", "latency_p90_ms = 10.0")
        assert "latency_p90_ms = 10.0" in text, "a55-lowend's p90 budget is no longer 120 ms: update this script"
    path = scratch / f"{name}.toml"
    path.write_text(text)
    return path


def bench_profile(name: str, base: ExportRequest, test: Path, scratch: Path) -> dict:
    log(f"== {name}: search")
    start = time.monotonic()
    result = run_search(SearchRequest(base), Lines(), Progress())
    seconds = time.monotonic() - start
    document = json.loads((result.out_dir / "candidates.json").read_text())
    winner = result.winner
    checks = {
        "within 30 min": seconds <= TIME_LIMIT_S,
        "winner meets every budget": winner is not None
        and json.loads((result.out_dir / "report.json").read_text())["passed"],
    }
    profile = get_profile(base.device)
    ladder = plan(base.model, [], profile.quantize, base.train_data is not None, scratch / "recipes" / name)
    candidates = {c.name: c for c in ladder}
    beaten_by = better_than_winner(document, winner, base, candidates, scratch / "by-hand" / name)
    checks["no skipped or rejected candidate would have won"] = not beaten_by
    return {
        "profile": name,
        "seconds": round(seconds, 1),
        "winner": winner.name if winner else None,
        "accuracy": winner.accuracy["value"] if winner and winner.accuracy else None,
        "test_accuracy": test_accuracy(candidates[winner.name], base, test, scratch / "test" / name)
        if winner
        else None,
        "latency_ms": winner.latency_ms if winner else None,
        "size_mb": winner.size_mb if winner else None,
        "ran": sum(c["status"] == RAN for c in document["candidates"]),
        "skipped": sum(c["status"] == SKIPPED for c in document["candidates"]),
        "beaten_by": beaten_by,
        "checks": checks,
        "ok": all(checks.values()),
    }


def export_as(candidate, base: ExportRequest, out_root: Path, **changes) -> Path:
    """One normal export with the settings the search gives `candidate`."""
    request = replace(
        base,
        model=candidate.model,
        out_root=out_root,
        recipe=str(candidate.recipe) if candidate.recipe else None,
        quantize=candidate.quantize,
        stage_cache=BY_HAND,
        **changes,
    )
    return run_export(request, Progress()).out_dir


def better_than_winner(document: dict, winner, base: ExportRequest, candidates: dict, scratch: Path) -> list[str]:
    """Candidates that meet every budget and are more accurate than the winner (it must be none): rejected ones
    from their rows, skipped ones exported here once with the settings the search would have given them."""
    best = rank_key(winner)[0] if winner else 0.0
    beaten = [
        c["name"]
        for c in document["candidates"]
        if c["status"] == RAN and c["passed"] and -round(c["accuracy"]["value"], 9) < best
    ]
    for row in document["candidates"]:
        if row["status"] != SKIPPED or row["name"] not in candidates:
            continue
        candidate = candidates[row["name"]]
        log(f"== by hand: {candidate.name} (skipped: {row['reason']})")
        started = time.monotonic()
        try:
            out = export_as(candidate, base, scratch / candidate.name)
        except EdgecompressError as exc:  # e.g. a sparsity this model cannot take: it cannot have won either
            log(f"   {candidate.name} cannot be exported: {exc}")
            continue
        report = json.loads((out / "report.json").read_text())
        by_hand = row_from_report(
            report, candidate.name, candidate.what, candidate.tier, time.monotonic() - started, out
        )
        log(f"   {candidate.name} by hand: {row_summary(by_hand)}")
        if by_hand.passed and rank_key(by_hand)[0] < best:
            beaten.append(f"{candidate.name} (skipped)")
    return beaten


def test_accuracy(candidate, base: ExportRequest, test: Path, out_root: Path) -> float:
    """The winner's settings exported once more with --data the test split (the number to quote; the search
    selected on the validation split). The worst artifact's accuracy, as the search's rows take it."""
    out = export_as(candidate, base, out_root, data=test, measure=False)
    report = json.loads((out / "report.json").read_text())
    return min(a["accuracy"]["value"] for a in report["artifacts"])


def print_table(results: list[dict]) -> None:
    header = ["profile", "search time", "winner", "accuracy validation / test", "p90 ms (how)", "size MB"]
    header += ["ran / skipped", "checks"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        cells = [r["profile"], f"{r['seconds'] / 60:.1f} min", r["winner"] or "none"]
        cells.append(f"{_pct(r['accuracy'])} / {_pct(r['test_accuracy'])}")
        latency = r["latency_ms"]
        cells.append(f"{latency['value']:.3g} ({latency['how']})" if latency else "-")
        cells.append("-" if r["size_mb"] is None else f"{r['size_mb']:.1f}")
        cells.append(f"{r['ran']} / {r['skipped']}")
        cells.append(", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["checks"].items()))
        if r["beaten_by"]:
            cells[-1] += f" (beaten by {', '.join(r['beaten_by'])})"
        print("| " + " | ".join(cells) + " |")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
