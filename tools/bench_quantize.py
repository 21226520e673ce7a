"""Benchmark the quantization recipes on the Rotten Tomatoes teacher against float and a hand-made peer.

Run `python tools/bench_quantize.py` (flags: --recipes, --ablations, --seq-lens, --threads, --rounds,
--runs, --out). For each sequence length it builds, from the fine-tuned MiniLM teacher
(tools/train_teacher.py):

  float      the default recipe (fused float graph)
  peer       what a user gets by hand: plain `torch.onnx.export` + `quantize_dynamic(per_channel=True)`
  recipes    each name given to --recipes (default: dynamic-int8, int8, int4, int8-int4-mixed), built
             exactly as `edgecompress export --recipe NAME` does, calibrated on the validation split
             (what `--calibration validation.csv` gives the passes). A recipe with torch passes (e.g.
             int8-qat, integer-only) goes through the whole export, with --train-data the train split.
  ablations  with --ablations: static int8 with ORT's default attention mask value (-10000), with
             int8 (s8s8) activations; dynamic int8 quantized before fusion; int4 mixed with 4-bit
             embedding tables

and reports size, host latency (batch 1, p50/p90 through runtimes/ort_runner.py, the runner the pipeline
uses), accuracy on the test split, and agreement with float. Host load from other processes is shared
fairly: every round times each model once, in turn (interleaved), and the table shows the median over
rounds. Built models are cached in --out, so a rerun only measures (delete a file to rebuild it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edgecompress.devices import derived_profile_text
from edgecompress.intake.data import label_ids, load_dataset, tokenize  # noqa: E402
from edgecompress.measure.runner import run_runner  # noqa: E402
from edgecompress.paths import cache_dir  # noqa: E402
from edgecompress.verify.evaluate import (  # noqa: E402
    LOSSY_MIN_AGREEMENT as MIN_AGREEMENT,  # the pipeline's gate
    ort_session,
    run_session,
)

import example_assets  # noqa: E402
import train_teacher  # noqa: E402

DEFAULT_RECIPES = ("dynamic-int8", "int8", "int4", "int8-int4-mixed")
# Row names of the packaged recipes in the table; any other recipe is shown under its own name.
LABELS = {
    "default": "float",
    "dynamic-int8": "dynamic int8",
    "int8": "static int8",
    "int4": "int4",
    "int8-int4-mixed": "int4 mixed",
}
PEER = "peer (torch.onnx.export + quantize_dynamic)"


@dataclass
class Row:
    name: str
    seq_len: int
    path: str
    size_mb: float
    accuracy: float | None = None
    agreement: float | None = None
    latency: dict | None = None  # threads -> {"p50": ms, "p90": ms}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_teacher(poll_s: float = 30.0) -> Path:
    """The teacher is trained by tools/train_teacher.py (maybe right now, by someone else): wait for it."""
    record = train_teacher.teacher_path() / "training.json"
    while not record.is_file():
        log(f"waiting for the teacher ({record}) ...")
        time.sleep(poll_s)
    return train_teacher.teacher_path()


def split_feeds(bundle, split: str, seq_len: int):
    dataset = load_dataset(example_assets.rotten_tomatoes_dir() / f"{split}.csv", require_labels=True)
    feeds = tokenize(bundle.tokenizer, dataset.texts, seq_len=seq_len, input_names=bundle.input_names)
    return feeds, label_ids(dataset, bundle.labels)


def variants(recipes, ablations: list[str] | None) -> dict[str, tuple]:
    """Row name -> (recipe name, Recipe) for the recipes, (None, graph passes) for ablations: the packaged
    recipes with one thing changed."""
    from dataclasses import replace

    from edgecompress.recipe import load_recipe

    rows: dict[str, tuple] = {LABELS.get(name, name): (name, load_recipe(name)) for name in ("default", *recipes)}
    if ablations is None:
        return rows

    def changed(label: str, edit) -> tuple:
        return tuple(p for p in (edit(p) for p in load_recipe(_recipe_of(label)).graph) if p is not None)

    rows["static int8, mask value -10000"] = (
        None,
        changed("static int8", lambda p: None if p.name == "attention_mask_value" else p),
    )
    rows["static int8, s8 activations"] = (
        None,
        changed("static int8", lambda p: replace(p, activation_type="int8") if p.name == "quantize_static" else p),
    )
    dynamic = load_recipe("dynamic-int8").graph
    quantize = next(p for p in dynamic if p.name == "quantize_dynamic")
    before_fusion = [p for p in dynamic if p.name != "quantize_dynamic"]
    fuse_at = next(i for i, p in enumerate(before_fusion) if p.name == "fuse_transformer")
    before_fusion[fuse_at] = replace(before_fusion[fuse_at], require_attention=False)
    rows["dynamic int8, quantized before fusion"] = (
        None,
        tuple(before_fusion[:fuse_at] + [quantize] + before_fusion[fuse_at:]),
    )
    rows["int4 mixed, 4-bit embeddings"] = (
        None,
        changed("int4 mixed", lambda p: replace(p, embedding_bits=4) if p.name == "quantize_int4" else p),
    )
    chosen = {name for name in rows if name not in recipes and name not in LABELS.values()}
    unknown = set(ablations) - chosen
    if unknown:
        raise SystemExit(f"unknown ablation(s) {sorted(unknown)}; known: {sorted(chosen)}")
    return {name: row for name, row in rows.items() if name not in chosen or not ablations or name in ablations}


def _recipe_of(label: str) -> str:
    return next(name for name, shown in LABELS.items() if shown == label)


def build_graph(bundle, passes: tuple, seq_len: int, calibration):
    """The passes on our export, with the PassContext `edgecompress export` would build."""
    from edgecompress.lower import export_onnx
    from edgecompress.passes import PassContext, apply_pass

    context = PassContext(
        seq_len=seq_len,
        batch=1,
        dynamic_shapes=False,
        num_heads=bundle.num_heads,
        hidden_size=bundle.hidden_size,
        num_layers=bundle.num_layers,
        input_names=bundle.input_names,
        calibration=calibration,
    )
    graph = export_onnx(bundle, {k: v[:1] for k, v in calibration.items()})
    for p in passes:
        graph, record = apply_pass(p, graph, context)
        log(f"    {p.name}: " + " | ".join(record.notes))
    return graph


def build_peer(teacher: Path, seq_len: int, out: Path) -> None:
    """Plain torch.onnx.export (dynamo, the default) then quantize_dynamic per channel, as its docs show.

    The stale value_info the dynamo export leaves must be dropped first, or quantize_dynamic fails.
    """
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(teacher), local_files_only=True).eval()
    ids = torch.ones(1, seq_len, dtype=torch.long)
    float_path = out.with_suffix(".float.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(float_path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            external_data=False,
        )
    graph = onnx.load(str(float_path))
    graph.ir_version = min(graph.ir_version, 10)  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 writes 14
    del graph.graph.value_info[:]
    quantize_dynamic(graph, str(out), per_channel=True, weight_type=QuantType.QInt8)
    float_path.unlink()


def build_with_export(teacher: Path, recipe: str, seq_len: int, path: Path) -> None:
    """A recipe with torch passes, through `edgecompress export` itself on a pixel7 profile at `seq_len`:
    --data and --calibration the validation split, --train-data the train split."""
    import shutil
    import tempfile

    from edgecompress.pipeline import ExportRequest, run_export

    data = example_assets.rotten_tomatoes_dir()
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as scratch:
        profile = Path(scratch) / f"pixel7-seq{seq_len}.toml"
        # only model.onnx is benchmarked (the integer-only .tflite: tools/bench_integer_tflite.py)
        profile.write_text(
            derived_profile_text("pixel7", name=f"pixel7-seq{seq_len}", seq_len=seq_len, artifacts=["onnx"])
        )
        result = run_export(
            ExportRequest(
                model=teacher,
                device=str(profile),
                out_root=Path(scratch) / "dist",
                data=data / "validation.csv",
                calibration=data / "validation.csv",
                train_data=data / "train.csv",
                recipe=recipe,
                measure=False,
            )
        )
        shutil.copyfile(result.out_dir / "model.onnx", path)


def build_all(teacher: Path, seq_len: int, out: Path, recipes, ablations: list[str] | None) -> list[Row]:
    """Every variant at one sequence length; an existing file is reused, not rebuilt."""
    import onnx

    from edgecompress.intake.model import load_bundle
    from edgecompress.recipe import Recipe

    bundle = load_bundle(teacher)
    calibration, _ = split_feeds(bundle, "validation", seq_len)
    rows = []
    for name, (source, recipe) in {**variants(recipes, ablations), PEER: (None, None)}.items():
        path = out / f"{_slug(name)}-{seq_len}.onnx"
        if not path.is_file():
            log(f"building {name} at seq_len {seq_len}")
            if recipe is None:
                build_peer(teacher, seq_len, path)
            elif isinstance(recipe, Recipe) and recipe.compress:
                build_with_export(teacher, source, seq_len, path)
            else:
                passes = recipe.graph if isinstance(recipe, Recipe) else recipe
                onnx.save(build_graph(bundle, passes, seq_len, calibration), str(path))
        rows.append(Row(name, seq_len, str(path), path.stat().st_size / 1e6))
    return rows


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40]


def evaluate(rows: list[Row], feeds, labels) -> None:
    """Accuracy on the test split and agreement with the float row, each model run as it will ship."""
    reference = None
    for row in rows:
        session = ort_session(row.path, threads=2, optimize=True)
        names = [i.name for i in session.get_inputs()]
        logits = run_session(
            session, {k: feeds[k] for k in names}, output_name=session.get_outputs()[0].name, batch_size=1
        )
        reference = logits if reference is None else reference
        row.accuracy = float(np.mean(logits.argmax(-1) == labels))
        row.agreement = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
        log(f"  {row.name}: accuracy {row.accuracy:.4f}, agreement {row.agreement:.4f}")


def measure(rows: list[Row], first_row, threads: list[int], rounds: int, runs: int) -> None:
    """Median over rounds of each model's p50 and p90; a round times every model once, in turn."""
    samples: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(rounds):
        for t in threads:
            for row in rows:
                result = run_runner(
                    Path(row.path), threads=t, runs=runs, warmup=10, inputs=_inputs_of(row.path, first_row)
                )
                samples.setdefault((row.name, t), []).append(result["latency_ms"])
        log(f"  latency round {round_index + 1}/{rounds} done")
    for row in rows:
        row.latency = {
            t: {q: float(np.median([s[q] for s in samples[row.name, t]])) for q in ("p50", "p90")} for t in threads
        }


def _inputs_of(path: str, feeds) -> dict:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return {value.name: feeds[value.name] for value in graph.input if value.name not in initializers}


def table(rows: list[Row], threads: list[int]) -> str:
    float_row, peer = rows[0], next(r for r in rows if r.name == PEER)
    head = (
        ["variant", "size MB", "x float"]
        + [f"p50/p90 ms, {t}T" for t in threads]
        + [f"x peer speed, {t}T" for t in threads]
        + ["accuracy %", "agree %", f"{MIN_AGREEMENT:.0%} gate"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name, f"{row.size_mb:.1f}", f"{row.size_mb / float_row.size_mb:.2f}"]
        cells += [f"{row.latency[t]['p50']:.1f} / {row.latency[t]['p90']:.1f}" for t in threads]
        cells += [f"{peer.latency[t]['p50'] / row.latency[t]['p50']:.2f}" for t in threads]
        cells += [
            f"{100 * row.accuracy:.2f}",
            f"{100 * row.agreement:.2f}",
            "pass" if row.agreement >= MIN_AGREEMENT else "FAIL",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[Row], threads: list[int]) -> list[str]:
    """The issue's targets, each with the measured figure and the margin (for the rows that were built)."""
    by_name = {r.name: r for r in rows}
    base, peer = by_name["float"], by_name[PEER]
    lines = []
    static = by_name.get("static int8")
    if static is not None:
        drop = 100 * (base.accuracy - static.accuracy)
        lines += [
            _check("static int8 size <= 0.27x float", static.size_mb / base.size_mb, 0.27, lower=True),
            _check("static int8 accuracy drop <= 1.0 point", drop, 1.0, lower=True),
            _check("static int8 accuracy >= peer's", 100 * static.accuracy, 100 * peer.accuracy, lower=False),
        ]
        lines += [
            _check(
                f"static int8 >= 1.3x faster than peer ({t} thread(s), p50)",
                peer.latency[t]["p50"] / static.latency[t]["p50"],
                1.3,
                lower=False,
            )
            for t in threads
        ]
    for name in ("int4 mixed", "int4"):
        if name in by_name:
            row = by_name[name]
            lines += [
                _check(f"{name} size <= 0.2x float", row.size_mb / base.size_mb, 0.2, lower=True),
                _check(f"{name} accuracy drop <= 1.0 point", 100 * (base.accuracy - row.accuracy), 1.0, lower=True),
            ]
    return lines


def _check(what: str, value: float, limit: float, *, lower: bool) -> str:
    met = value <= limit if lower else value >= limit
    return f"- {what}: {value:.3f} vs {limit:.3f} -> {'met' if met else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=list(DEFAULT_RECIPES),
        help="recipe names or TOML files to benchmark besides float and the peer",
    )
    parser.add_argument(
        "--ablations",
        nargs="*",
        metavar="NAME",
        help="also build these ablation variants (all of them when no name is given)",
    )
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds; the median is reported")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per round")
    parser.add_argument("--out", type=Path, default=cache_dir() / "bench-quantize")
    args = parser.parse_args(argv)
    from edgecompress.intake.model import load_bundle

    teacher = wait_for_teacher()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seq_len in args.seq_lens:
        rows = build_all(teacher, seq_len, args.out, args.recipes, args.ablations)
        feeds, labels = split_feeds(load_bundle(teacher), "test", seq_len)
        evaluate(rows, feeds, labels)
        measure(rows, {k: v[:1] for k, v in feeds.items()}, args.threads, args.rounds, args.runs)
        print(
            f"\n## seq_len {seq_len}, batch 1 ({len(labels)} test texts; latency: median of "
            f"{args.rounds} rounds x {args.runs} runs)\n\n{table(rows, args.threads)}\n"
        )
        print("\n".join(targets(rows, args.threads)))
        results += [asdict(r) for r in rows]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
