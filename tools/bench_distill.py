"""Benchmark distilled students against the Rotten Tomatoes teacher (all-MiniLM-L6-v2, fine-tuned).

Rows: the teacher (float); BiLSTM and CNN students, float and int8; the small-transformer student (3 of
the teacher's 6 layers, same width), float. Every file is written by `edgecompress export` at seq_len 64,
batch 1 (ONNX Runtime artifact). Int8 is the `dynamic-int8` recipe when the repo has one, otherwise
onnxruntime's `quantize_dynamic` (uint8 activations, int8 weights) on the student's exported model.onnx.

Students are trained by `edgecompress.compress.distill` on the train split plus `--augment` teacher-
labelled copies per text (the BiLSTM and CNN share one labelling), and cached; `--retrain` trains them
again. Accuracy and agreement with the teacher: every artifact on the whole test split. Latency: the
standalone ONNX Runtime runner on one median-length test text padded to 64 tokens, in interleaved rounds
(every artifact once per round) so that load from other processes on this shared machine hits all rows
alike; p50/p90 over all runs.

    OMP_NUM_THREADS=1 python tools/bench_distill.py [--augment 4 --rounds 3 --runs 50 --threads 1 2 --retrain]

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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402
from edgecompress.compress.distill.run import DistillRequest, distill  # noqa: E402
from edgecompress.data import label_ids, load_dataset, tokenize  # noqa: E402
from edgecompress.evaluate import ort_session, run_session  # noqa: E402
from edgecompress.measure import run_runner  # noqa: E402
from edgecompress.model import load_bundle  # noqa: E402
from edgecompress.paths import cache_dir, device_profiles_dir, recipes_dir  # noqa: E402
from edgecompress.pipeline import ExportRequest, run_export  # noqa: E402

SEQ_LEN = 64
INT8_OPS = ("Gather", "MatMul", "Gemm", "LSTM")  # the embedding table, the MLP head, the LSTM
STUDENTS = ("bilstm", "cnn", "transformer")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("edgecompress.compress.distill").setLevel(logging.INFO)
    root = cache_dir() / "bench" / "distill"
    teacher, splits = train_teacher.teacher_dir(), example_assets.rotten_tomatoes_dir()
    students = {kind: train_student(root, teacher, splits, kind, args) for kind in STUDENTS}
    exports = root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    device = bench_device(exports)
    rows = [export_row("teacher", "float", teacher, device, splits, exports)]
    for kind, folder in students.items():
        rows.append(export_row(kind, "float", folder, device, splits, exports))
        if kind != "transformer":
            rows.append(int8_row(kind, folder, rows[-1], device, splits, exports))
    score(rows, teacher, splits / "test.csv")
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
    return parser.parse_args()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_student(root: Path, teacher: Path, splits: Path, kind: str, args) -> Path:
    folder = root / kind
    if args.retrain:
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "training.json").is_file():
        log(f"distilling the {kind} student")
        augment = args.transformer_augment if kind == "transformer" else args.augment
        distill(DistillRequest(teacher=teacher, student=kind, train_data=splits / "train.csv", out_dir=folder,
                               augment=augment, seq_len=SEQ_LEN,
                               transfer_set=root / f"transfer-augment{augment}.npz"))
    return folder


def bench_device(folder: Path) -> Path:
    """pixel7's profile at seq_len 64 with the ONNX artifact only: latency is measured here, not estimated."""
    text = (device_profiles_dir() / "pixel7.toml").read_text()
    text = text.replace('name = "pixel7"', 'name = "bench64"').replace("seq_len = 128", f"seq_len = {SEQ_LEN}")
    lines = ['artifacts = ["onnx"]' if line.startswith("artifacts =") else line for line in text.splitlines()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench64.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def export_row(name: str, precision: str, model: Path, device: Path, splits: Path, exports: Path,
               recipe: str | None = None) -> dict:
    log(f"exporting {name} ({precision})")
    result = run_export(ExportRequest(model=model, device=str(device), out_root=exports / f"{name}-{precision}",
                                      data=splits / "test.csv", calibration=splits / "validation.csv",
                                      recipe=recipe, measure=False))
    bundle = load_bundle(model)
    return {"model": name, "precision": precision, "artifact": result.out_dir / "model.onnx",
            "input_names": bundle.input_names, "parameters": sum(p.numel() for p in bundle.module.parameters()),
            "time": training_time(model), "how": f"edgecompress export, recipe {recipe or 'default'}",
            "quantize_pass": next((p for p in result.report.passes if p["name"] == "quantize_dynamic"), None)}


def int8_row(name: str, folder: Path, float_row: dict, device: Path, splits: Path, exports: Path) -> dict:
    """The `dynamic-int8` recipe's artifact if its quantizer fires on the student, else quantize_dynamic's."""
    why = "no dynamic-int8 recipe"
    if (recipes_dir() / "dynamic-int8.toml").is_file():
        row = export_row(name, "int8", folder, device, splits, exports, recipe="dynamic-int8")
        quantize = row["quantize_pass"]
        if quantize["fired"]:
            return row
        why = f"recipe dynamic-int8 quantized nothing ({quantize['notes'][0]})"
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = exports / f"{name}-int8-quantize-dynamic" / "model.onnx"
    target.parent.mkdir(parents=True)
    model = onnx.load(float_row["artifact"])
    # Stale shapes trip the quantizer when it turns Gemm into a transposed MatMul (see shared DATA.md).
    del model.graph.value_info[:]
    # Conv stays float: ONNX Runtime's ConvInteger ran the CNN student in 0.59 ms, float Conv in 0.21 ms.
    quantize_dynamic(model, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS))
    return {**float_row, "precision": "int8", "artifact": target,
            "how": f"{why}: onnxruntime quantize_dynamic (u8 activations, s8 weights) of {', '.join(INT8_OPS)} "
                   "on the exported model.onnx"}


def training_time(model: Path) -> dict:
    """Training time, and for students the time the teacher spent labelling (once per shared transfer set)."""
    record = json.loads((model / "training.json").read_text())
    if "wall_time_s" in record:  # the teacher's own fine-tuning record
        return {"train": record["wall_time_s"], "labelling": None}
    return {"train": record["train_seconds"], "labelling": record["prepare_seconds"],
            "transfer_set": record["transfer_set"]}


def score(rows: list[dict], teacher: Path, test_csv: Path) -> None:
    """Test accuracy and agreement with the teacher's predictions, running each artifact on every text.

    Also picks the latency input: the median-length test text, padded to SEQ_LEN.
    """
    bundle = load_bundle(teacher)
    dataset = load_dataset(test_csv, require_labels=True)
    labels = label_ids(dataset, bundle.labels)
    feeds = {names: tokenize(bundle.tokenizer, dataset.texts, seq_len=SEQ_LEN, input_names=names)
             for names in {row["input_names"] for row in rows}}
    lengths = next(iter(feeds.values()))["attention_mask"].sum(axis=1)
    median = int(np.argsort(lengths, kind="stable")[len(dataset) // 2])
    predictions = []
    for row in rows:
        log(f"scoring {row['model']} ({row['precision']}) on {len(dataset)} test texts")
        session = ort_session(str(row["artifact"]), threads=2, optimize=True)
        predictions.append(run_session(session, feeds[row["input_names"]], output_name="logits",
                                       batch_size=1).argmax(-1))
        row["inputs"] = {k: v[median:median + 1] for k, v in feeds[row["input_names"]].items()}
    for row, predicted in zip(rows, predictions):
        row["accuracy"] = float(np.mean(predicted == labels))
        row["agreement"] = float(np.mean(predicted == predictions[0]))


def measure(rows: list[dict], args) -> None:
    for threads in args.threads:
        samples = {id(row): [] for row in rows}
        for round_index in range(args.rounds):
            log(f"latency, {threads} thread(s): round {round_index + 1}/{args.rounds}")
            for row in rows:
                result = run_runner(row["artifact"], threads=threads, runs=args.runs, warmup=10,
                                    inputs=row["inputs"], keep_samples=True)
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
        cells = [row["model"], row["precision"], f"{row['parameters'] / 1e6:.2f}M",
                 f"{Path(row['artifact']).stat().st_size / 1e6:.2f}"]
        for t in threads:
            cells += [f"{row[f'p50_{t}t']:.3f}", f"{row[f'p90_{t}t']:.3f}",
                      f"{teacher[f'p50_{t}t'] / row[f'p50_{t}t']:.1f}x"]
        spent = row["time"]
        labelling = ("-" if spent["labelling"] is None else "shared (above)" if "reused" in spent["transfer_set"]
                     else f"{spent['labelling'] / 60:.1f} min")
        cells += [f"{100 * row['accuracy']:.2f}%", f"{100 * row['agreement']:.2f}%",
                  f"{spent['train'] / 60:.1f} min", labelling]
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        print(f"- {row['model']} {row['precision']}: {row['how']}")


if __name__ == "__main__":
    main()
