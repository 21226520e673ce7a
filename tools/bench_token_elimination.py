"""Benchmark (issue 14 part 5): progressive token elimination (`eliminate_tokens`) on the Rotten Tomatoes teacher,
float, batch 1, 1 thread, ONNX Runtime (.ort) and LiteRT (.tflite, XNNPACK).

Target: at least 1.5x lower latency than the float model at seq_len 128, at no more than 1 point of test accuracy.
Rotten Tomatoes snippets average ~26 word pieces, so at 128 most of the gain is dropping padding, which length
buckets do without any training. Every row is therefore compared with two baselines:

  float-padded-128   the default recipe, one length of 128 (every text padded to 128)
  float-bucketed     the default recipe, buckets 16/32/64/128: the .ort file runs each text at its own length
                     (timed at each text's length rounded up to 8 tokens), the .tflite at its smallest bucket
  cls-only-1.0       eliminate_tokens with retention 1.0 everywhere: nothing is eliminated, only the last layer's
                     feed-forward runs on [CLS] alone (exact: the original model's outputs)
  keep-64            retention [64]*5: cuts only texts longer than 64 tokens (the run prints the longest)
  keep-48-16         retention [48, 32, 32, 16, 16]
  keep-32-8          retention [32, 16, 16, 8, 8]
  search-99          retention "search", agreement 0.99 on 256 --train-data texts

Retention lists give the tokens each of layers 1-5 keeps between its attention and its feed-forward; layer 6's
feed-forward runs on [CLS] alone in every elimination row. Elimination rows (one length, 128; static shapes)
recover by 1 epoch of distillation on `--train-texts` texts of the train split (keep-64 and cls-only-1.0: none).
Accuracy: the export's own scoring of the .ort file on the test split (every text; `--limit N` takes the first
N); agreement: the same figure's agreement with the teacher. Latency: the standalone runners (runtimes/),
synthetic inputs of the length each file runs at, `--rounds` interleaved rounds of `--runs` runs per file and
length, so load hits all rows alike; p50 over the pooled runs, for float-bucketed weighted by the test texts'
lengths (nearest rank). The load average is printed.

    python tools/bench_token_elimination.py --work DIR [--train-texts 4000] [--rounds 5 --runs 20] [--reuse]
    python tools/bench_token_elimination.py --work DIR --limit 64 --rounds 1 --runs 3    # smoke run (~6 min)

The full run takes about 25-35 minutes on 2 quiet cores: seven exports (each verifies .ort and .tflite on every
test text), ~2 min of recovery for each of the three trained rows, ~1 min of search, then ~5 min of timing.
`--reuse` keeps finished exports in --work, so the timing can be repeated alone.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from edgecompress.measure.runner import run_runner  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402
from bench_common import RUNTIMES, export_float, first_rows, load_average, log, show_progress  # noqa: E402
from bench_timing import weighted_rank  # noqa: E402

SEQ_LEN = 128
BUCKETS = [16, 32, 64, 128]
RECOVERY = "epochs = 1.0\n"


def _eliminate(retention: str, recovery: str) -> str:
    return f'[[compress]]\npass = "eliminate_tokens"\nretention = {retention}\n{recovery}'


# name -> (compress passes or None for the default recipe, bucketed profile)
VARIANTS: dict[str, tuple[str | None, bool]] = {
    "float-padded-128": (None, False),
    "float-bucketed": (None, True),
    "cls-only-1.0": (_eliminate("[1.0, 1.0, 1.0, 1.0, 1.0]", "epochs = 0\n"), False),
    "keep-64": (_eliminate("[64, 64, 64, 64, 64]", "epochs = 0\n"), False),
    "keep-48-16": (_eliminate("[48, 32, 32, 16, 16]", RECOVERY), False),
    "keep-32-8": (_eliminate("[32, 16, 16, 8, 8]", RECOVERY), False),
    "search-99": (_eliminate('"search"\nagreement = 0.99', RECOVERY), False),
}


def main() -> None:
    args = parse_args()
    show_progress(compress_steps=True)
    args.work.mkdir(parents=True, exist_ok=True)
    splits = example_assets.rotten_tomatoes_dir()
    test = first_rows(splits / "test.csv", args.limit, args.work, "test")
    train = first_rows(splits / "train.csv", args.limit or args.train_texts, args.work, "train")
    lengths = text_lengths(test)
    log(f"test texts: {len(lengths)}, tokens mean {np.mean(lengths):.1f}, longest {max(lengths)}")
    rows = {name: export(name, spec, test, train, args) for name, spec in VARIANTS.items()}
    load_before = load_average()
    p50 = measure_interleaved(rows, lengths, args)
    print(f"\nload average before timing: {load_before}; after: {load_average()}; {os.cpu_count()} CPUs")
    print(f"test texts: {len(lengths)} (tokens: mean {np.mean(lengths):.1f}, longest {max(lengths)})\n")
    print_table(rows, p50)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="exports go here (kept for --reuse)")
    parser.add_argument("--train-texts", type=int, default=4000, help="train-split texts for search and recovery")
    parser.add_argument("--limit", type=int, default=0, help="smoke run: N test texts and N train texts (0: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per file, length and round")
    parser.add_argument("--reuse", action="store_true", help="keep exports already in --work")
    return parser.parse_args()


def text_lengths(test: Path) -> list[int]:
    """Word pieces per test text as the app feeds them ([CLS] and [SEP] included, cut at SEQ_LEN)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(train_teacher.teacher_dir()), local_files_only=True)
    texts = [row[0] for row in example_assets.read_csv(test)]
    return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=SEQ_LEN)["input_ids"]]


def export(name: str, spec: tuple[str | None, bool], test: Path, train: Path, args) -> dict:
    compress, bucketed = spec

    def extra(report) -> dict:
        elimination = next((p for p in report.passes if p["name"] == "eliminate_tokens"), None)
        return {
            "bucketed": bucketed,
            "keep": elimination["stats"]["keep"] if elimination else None,
            "training_s": elimination["stats"]["training_seconds"] if elimination else 0.0,
            "pass_s": round(elimination["seconds"], 1) if elimination else 0.0,
        }

    return export_float(
        args.work,
        name,
        compress,
        reuse=args.reuse,
        seq_len=SEQ_LEN,
        buckets=BUCKETS if bucketed else None,
        data=test,
        train_data=train,
        extra=extra,
    )


def timed_lengths(row: dict, file: str, lengths: list[int]) -> dict[int, int]:
    """{length the file runs at: how many test texts run at it}. Static files: every text at SEQ_LEN."""
    if not row["bucketed"]:
        return {SEQ_LEN: len(lengths)}
    counts: dict[int, int] = {}
    for n in lengths:
        at = 8 * math.ceil(n / 8) if file == "model.ort" else next(b for b in BUCKETS if b >= n)
        counts[at] = counts.get(at, 0) + 1
    return counts


def measure_interleaved(rows: dict, lengths: list[int], args) -> dict:
    """p50 ms per (variant, file): runs pooled over rounds; per length weighted by its share of the texts."""
    samples: dict = {}
    for round_index in range(args.rounds):
        log(f"timing round {round_index + 1}/{args.rounds}")
        for name, row in rows.items():
            for file, runner in RUNTIMES.items():
                for length in timed_lengths(row, file, lengths):
                    signature = f"seq_{length}" if row["bucketed"] and file == "model.tflite" else None
                    result = run_runner(
                        Path(row["dir"]) / file,
                        runner=runner,
                        threads=1,
                        runs=args.runs,
                        warmup=3,
                        seq_len=length,
                        keep_samples=True,
                        signature=signature,
                    )
                    samples.setdefault((name, file, length), []).extend(result["latency_samples_ms"])
    p50 = {}
    for name, row in rows.items():
        for file in RUNTIMES:
            values, weights = [], []
            for length, texts in timed_lengths(row, file, lengths).items():
                runs = samples[(name, file, length)]
                values += runs
                weights += [texts / len(runs)] * len(runs)
            p50[(name, file)] = weighted_rank(values, weights, 50)
    return p50


def print_table(rows: dict, p50: dict) -> None:
    print(
        "| variant | tokens kept in layers 1-5 (6: [CLS]) | .ort MB | ORT p50 ms | LiteRT p50 ms "
        "| speed-up vs padded ORT / LiteRT | speed-up vs bucketed ORT / LiteRT | test accuracy "
        "| agreement with teacher | training s (pass s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    padded = [p50[("float-padded-128", f)] for f in RUNTIMES]
    bucketed = [p50[("float-bucketed", f)] for f in RUNTIMES]
    for name, row in rows.items():
        ort, lite = (p50[(name, f)] for f in RUNTIMES)
        keep = row["keep"] if row["keep"] is not None else ("own length" if row["bucketed"] else "all 128")
        agreement = f"{100 * row['agreement']:.2f}%" if row["agreement"] is not None else "-"
        print(
            f"| {name} | {keep} | {row['sizes_mb']['model.ort']:.1f} | {ort:.2f} | {lite:.2f} "
            f"| {padded[0] / ort:.2f}x / {padded[1] / lite:.2f}x "
            f"| {bucketed[0] / ort:.2f}x / {bucketed[1] / lite:.2f}x "
            f"| {100 * row['accuracy']:.2f}% | {agreement} | {row['training_s']:.0f} ({row['pass_s']:.0f}) |"
        )


if __name__ == "__main__":
    main()
