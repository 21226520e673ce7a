"""Benchmark of issue 4's compressed models against the Rotten Tomatoes teacher (all-MiniLM-L6-v2, fine-tuned).

Rows, every file written by `edgecompress export` at seq_len 64, batch 1 (ONNX Runtime artifact):
  teacher             float (recipe default) and int8 (recipe dynamic-int8)
  pruned teacher      the packaged `pruned` recipe (vocabulary trim, then heads and FFN neurons pruned in rounds
                      with distillation from the unpruned teacher), float and with `--quantize dynamic-int8`
  bilstm, cnn         distilled students (`edgecompress.distill`), float and int8 (dynamic-int8)
  transformer         the small-transformer student (3 of the teacher's 6 layers), float and int8
Students are trained on the train split plus `--augment` teacher-labelled copies per text (the BiLSTM and
CNN share one labelling) and cached; `--retrain` trains them again. The pruned rows prune inside the export
(its compress stage, on the train split), every run. Parameters: float weights of the float row's model.onnx.
Accuracy and agreement with the float teacher: every artifact on the whole test split. Latency: the
standalone ONNX Runtime runner on one median-length test text padded to 64 tokens, in interleaved rounds
(every artifact once per round) so that load from other processes on this shared machine hits all rows
alike; p50/p90 over all runs.

    OMP_NUM_THREADS=1 python tools/bench_distill.py [--augment 4 --rounds 3 --runs 50 --threads 1 2 --retrain]
                                                    [--skip-pruned]

OMP_NUM_THREADS=1 is for a machine shared with other jobs, as ours is: torch on two contended cores
labelled 14 texts/s, on one 54 texts/s. The runner's ONNX Runtime threads (`--threads`) are unaffected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from edgecompress.devices import derived_profile_text
from edgecompress.distill.run import DistillRequest, distill  # noqa: E402
from edgecompress.intake.data import label_ids, load_dataset, tokenize  # noqa: E402
from edgecompress.logs import show_progress_on_stderr  # noqa: E402
from edgecompress.measure.runner import run_runner  # noqa: E402
from edgecompress.paths import cache_dir  # noqa: E402
from edgecompress.pipeline import ExportRequest, run_export  # noqa: E402
from edgecompress.verify.evaluate import ort_session, run_session  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402

SEQ_LEN = 64
STUDENTS = ("bilstm", "cnn", "transformer")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    show_progress_on_stderr()  # training steps of recovery and distillation, with time left
    logging.getLogger("edgecompress.distill").setLevel(logging.INFO)
    root = cache_dir() / "bench" / "distill"
    teacher, splits = train_teacher.teacher_dir(), example_assets.rotten_tomatoes_dir()
    students = {kind: train_student(root, teacher, splits, kind, args) for kind in STUDENTS}
    exports = root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    device = bench_device(exports)
    models = {"teacher": (teacher, None)}
    if not args.skip_pruned:
        models["pruned teacher"] = (teacher, "pruned")
    models.update({kind: (folder, None) for kind, folder in students.items()})
    rows = []
    for name, (folder, recipe) in models.items():
        rows.append(export_row(name, "float", folder, device, splits, exports, recipe=recipe, quantize="none"))
        rows.append(
            export_row(
                name,
                "int8",
                folder,
                device,
                splits,
                exports,
                recipe=recipe,
                quantize="dynamic-int8",
                float_row=rows[-1],
            )
        )
    score(rows, splits / "test.csv")
    measure(rows, args)
    (root / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print_table(rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--augment", type=int, default=4, help="augmented copies per text (BiLSTM, CNN)")
    parser.add_argument("--transformer-augment", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per artifact per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--retrain", action="store_true", help="train the students again")
    parser.add_argument("--skip-pruned", action="store_true", help="leave out the pruned-teacher rows (~10 min)")
    return parser.parse_args()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_student(root: Path, teacher: Path, splits: Path, kind: str, args) -> Path:
    augment = args.transformer_augment if kind == "transformer" else args.augment
    request = DistillRequest(
        teacher=teacher,
        student=kind,
        train_data=splits / "train.csv",
        out_dir=root / kind,
        augment=augment,
        seq_len=SEQ_LEN,
        transfer_set=root / f"transfer-augment{augment}.npz",
    )
    return cached_student(request, retrain=args.retrain)


def cached_student(request: DistillRequest, *, retrain: bool) -> Path:
    """The student of `request`, distilled unless its folder holds a finished one (or `retrain`)."""
    folder = Path(request.out_dir)
    if retrain:
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "training.json").is_file():
        log(f"distilling the {folder.name} student ({request.student})")
        distill(request)
    return folder


def bench_device(folder: Path) -> Path:
    """pixel7's profile at seq_len 64 with the ONNX artifact only: latency is measured here, not estimated."""
    text = derived_profile_text("pixel7", name="bench64", seq_len=SEQ_LEN, artifacts=["onnx"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench64.toml"
    path.write_text(text)
    return path


def export_row(
    name: str,
    precision: str,
    model: Path,
    device: Path,
    splits: Path,
    exports: Path,
    *,
    recipe: str | None,
    quantize: str,
    float_row: dict | None = None,
) -> dict:
    log(f"exporting {name} ({precision})")
    started = time.perf_counter()
    result = run_export(
        ExportRequest(
            model=model,
            device=str(device),
            out_root=exports / f"{name.replace(' ', '-')}-{precision}",
            data=splits / "test.csv",
            calibration=splits / "validation.csv",
            train_data=splits / "train.csv" if recipe == "pruned" else None,
            recipe=recipe,
            quantize=quantize,
            measure=False,
        )
    )
    log(f"{name} ({precision}): exported in {time.perf_counter() - started:.0f} s")
    artifact = result.out_dir / "model.onnx"
    how = f"edgecompress export, recipe {result.report.recipe['name']}"
    quantizer = next((p for p in result.report.passes if p["name"] == "quantize_dynamic"), None)
    if quantize != "none" and not (quantizer and quantizer["fired"]):
        how += f" (quantized nothing: {quantizer['notes'][0] if quantizer else 'no quantize_dynamic pass'})"
    return {
        "model": name,
        "precision": precision,
        "artifact": artifact,
        "input_names": input_names(artifact),
        "parameters": float_row["parameters"] if float_row else float_weights(artifact),
        "time": training_time(model, result.report if recipe == "pruned" else None),
        "how": how,
    }


def input_names(artifact: Path) -> tuple[str, ...]:
    import onnx

    return tuple(value.name for value in onnx.load(str(artifact), load_external_data=False).graph.input)


def float_weights(artifact: Path) -> int:
    """Parameters as the float file stores them: elements of its floating-point initializers (integer
    buffers such as the students' token map or position ids are not parameters)."""
    import onnx

    model = onnx.load(str(artifact))
    return sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    )


def training_time(model: Path, report=None) -> dict:
    """Training time, and for students the time the teacher spent labelling (once per shared transfer set).
    For pruning inside the export, the compress stage of that export (importance, pruning rounds, recovery)."""
    if report is not None:
        seconds = next(stage["seconds"] for stage in report.stages if stage["name"] == "compress")
        return {"train": seconds, "labelling": None, "what": "compress stage of the export"}
    record = json.loads((model / "training.json").read_text())
    if "wall_time_s" in record:  # the teacher's own fine-tuning record
        return {"train": record["wall_time_s"], "labelling": None}
    return {
        "train": record["train_seconds"],
        "labelling": record["prepare_seconds"],
        "transfer_set": record["transfer_set"],
    }


def score(rows: list[dict], test_csv: Path) -> None:
    """Test accuracy and agreement with the float teacher's predictions, running each artifact on every text,
    tokenized by the tokenizer its export shipped (the pruned teacher's vocabulary is trimmed).

    Also picks the latency input: the test text of median length (teacher tokens), padded to SEQ_LEN.
    """
    from transformers import AutoTokenizer

    dataset = load_dataset(test_csv, require_labels=True)
    median = None
    predictions = []
    for row in rows:
        folder = Path(row["artifact"]).parent
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        labels = (folder / "labels.txt").read_text().split("\n")[:-1]
        feeds = tokenize(tokenizer, dataset.texts, seq_len=SEQ_LEN, input_names=row["input_names"])
        if median is None:
            lengths = feeds["attention_mask"].sum(axis=1)
            median = int(np.argsort(lengths, kind="stable")[len(dataset) // 2])
        log(f"scoring {row['model']} ({row['precision']}) on {len(dataset)} test texts")
        session = ort_session(str(row["artifact"]), threads=2, optimize=True)
        predicted = run_session(session, feeds, output_name="logits", batch_size=1).argmax(-1)
        row["accuracy"] = float(np.mean(predicted == label_ids(dataset, labels)))
        predictions.append(predicted)
        row["inputs"] = {k: v[median : median + 1] for k, v in feeds.items()}
    for row, predicted in zip(rows, predictions):
        row["agreement"] = float(np.mean(predicted == predictions[0]))


def measure(rows: list[dict], args) -> None:
    for threads in args.threads:
        samples = {id(row): [] for row in rows}
        for round_index in range(args.rounds):
            log(f"latency, {threads} thread(s): round {round_index + 1}/{args.rounds}")
            for row in rows:
                result = run_runner(
                    row["artifact"], threads=threads, runs=args.runs, warmup=10, inputs=row["inputs"], keep_samples=True
                )
                samples[id(row)] += result["latency_samples_ms"]
        for row in rows:
            row[f"p50_{threads}t"] = float(np.median(samples[id(row)]))
            row[f"p90_{threads}t"] = float(np.percentile(samples[id(row)], 90))
    for row in rows:
        del row["inputs"]


def print_table(rows: list[dict]) -> None:
    threads = sorted({int(key[4:-1]) for key in rows[0] if key.startswith("p50_")})
    head = ["model", "precision", "parameters", "size MB"]
    for t in threads:
        head += [f"p50 ms ({t}t)", f"p90 ms ({t}t)", f"speed-up ({t}t)"]
    head += ["test accuracy", "agreement", "training", "teacher labelling"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    teacher = rows[0]
    for row in rows:
        cells = [
            row["model"],
            row["precision"],
            f"{row['parameters'] / 1e6:.2f}M",
            f"{Path(row['artifact']).stat().st_size / 1e6:.2f}",
        ]
        for t in threads:
            cells += [
                f"{row[f'p50_{t}t']:.3f}",
                f"{row[f'p90_{t}t']:.3f}",
                f"{teacher[f'p50_{t}t'] / row[f'p50_{t}t']:.1f}x",
            ]
        spent = row["time"]
        labelling = (
            "-"
            if spent["labelling"] is None
            else "cached transfer set"
            if "reused" in spent["transfer_set"]
            else f"{spent['labelling'] / 60:.1f} min"
        )
        trained = f"{spent['train'] / 60:.1f} min" + (f" ({spent['what']})" if "what" in spent else "")
        cells += [f"{100 * row['accuracy']:.2f}%", f"{100 * row['agreement']:.2f}%", trained, labelling]
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        print(f"- {row['model']} {row['precision']}: {row['how']}")


if __name__ == "__main__":
    main()
