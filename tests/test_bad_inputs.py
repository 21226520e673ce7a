"""Every bad input of the README's and issue 17's lists, through the CLI: exit code, one `error:` line on
stderr, no traceback, and nothing written (the -o root, or the folder `check` reads, is byte-identical
before and after). A new case is one row of CASES: (id, what to build, exit code, part of the line).

Each builder gets a `Kit` (tiny checkpoint, device, data, an exported folder, scratch space) and returns the
argv and the folder that must stay untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.cli import main


@dataclass
class Kit:
    tmp: Path
    checkpoint: Path
    device: Path
    data: Path
    onnx: Path  # the tiny classifier lowered to ONNX (before any rewrite), fixed to nothing
    export: Path  # a finished export of the tiny classifier (OUT/tinyphone)

    def ckpt(self) -> Path:
        return Path(shutil.copytree(self.checkpoint, self.tmp / "ckpt"))

    def exported(self) -> Path:
        return Path(shutil.copytree(self.export, self.tmp / "export" / "tinyphone"))

    def export_args(self, model, *extra, out=None):
        out = out or self.tmp / "out"
        return ["export", model, "--device", self.device, "--data", self.data, "-o", out, "--no-measure", *extra], out


# ---- builders: each breaks one thing ------------------------------------------------------------------------


def _config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _weights(folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    save_file(edit(state), str(folder / "model.safetensors"))
    return folder


def _with_device(kit: Kit, old: str, new: str):
    """Export arguments with the tiny device profile edited (the file stem stays its name)."""
    text = kit.device.read_text()
    assert old in text, old
    folder = kit.tmp / "devices"
    folder.mkdir(exist_ok=True)
    device = folder / kit.device.name
    device.write_text(text.replace(old, new))
    argv, out = kit.export_args(kit.checkpoint)
    argv[argv.index("--device") + 1] = device
    return argv, out


def _poison(value: float):
    def edit(state):
        state["bert.encoder.layer.1.output.dense.weight"][0, 3] = value
        return state

    return edit


def _onnx_table(kit: Kit, table: str, rows: int) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(kit.onnx))
    init = next(i for i in model.graph.initializer if table in i.name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:rows].copy(), init.name))
    path = kit.tmp / "in" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path


def _family_with_tokenizer_of(kit: Kit, model_type: str, tokenizer_type: str):
    """A tiny `model_type` checkpoint whose tokenizer files are those of a `tokenizer_type` checkpoint."""
    from family_models import build_family_checkpoint

    model = build_family_checkpoint(kit.tmp / model_type, model_type)
    other = build_family_checkpoint(kit.tmp / f"{tokenizer_type}-tokenizer", tokenizer_type)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
        if (other / name).is_file():
            shutil.copyfile(other / name, model / name)
    return kit.export_args(model)


def _smaller_vocab(kit: Kit):
    ckpt = _weights(
        _config(kit.ckpt(), vocab_size=50),
        lambda s: {
            **s,
            "bert.embeddings.word_embeddings.weight": s["bert.embeddings.word_embeddings.weight"][:50].clone(),
        },
    )
    return kit.export_args(ckpt)


def _exported_with(kit: Kit, name: str, content: bytes | None = None, append: bytes | None = None):
    folder = kit.exported()
    path = folder / name
    path.write_bytes(content if content is not None else path.read_bytes() + append)
    return ["check", folder, "--device", kit.device], folder.parent


def _truncated_onnx_with_its_hash(kit: Kit):
    folder = kit.exported()
    data = (folder / "model.onnx").read_bytes()[:1000]
    (folder / "model.onnx").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "model.onnx":
            entry["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return ["check", folder, "--device", kit.device], folder.parent


def _distill_eval(kit: Kit, content: bytes | None):
    """distill --eval-data (issue 17 item 11) is checked with the rest of the request, before any work."""
    path = kit.tmp / "held_out.csv"
    if content is not None:
        path.write_bytes(content)
    return _distill(kit, kit.checkpoint, "cnn", "--eval-data", path)


def _distill(kit: Kit, teacher: Path, student: str, *extra, config: dict | None = None):
    """`distill TEACHER --student STUDENT` on the kit's texts, with a --student-config holding `config`."""
    if config is not None:
        extra = (*extra, "--student-config", _file(kit, "student.json", json.dumps(config)))
    out = kit.tmp / "students"
    return ["distill", teacher, "--student", student, "--train-data", kit.data, *extra, "-o", out / student], out


def _data_file(kit: Kit, name: str, content: bytes | None):
    path = kit.tmp / name
    if content is not None:
        path.write_bytes(content)
    args, out = kit.export_args(kit.checkpoint)
    args[args.index("--data") + 1] = path
    return args, out


def _out_in_the_way(kit: Kit, make):
    root = kit.tmp / "out"
    root.mkdir()
    make(root / "tinyphone")
    return kit.export_args(kit.checkpoint, out=root)


def _user_folder(path: Path) -> None:
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")


def _search_without_data(kit: Kit):
    out = kit.tmp / "out"
    return ["export", kit.checkpoint, "--device", kit.device, "-o", out, "--no-measure", "--search"], out


def _student_of(kit: Kit, teacher: Path) -> Path:
    folder = kit.ckpt()
    (folder / "training.json").write_text(json.dumps({"teacher": {"path": str(teacher), "digest": "sha256:0"}}))
    return folder


def _search_with(kit: Kit, *extra, data: bytes | None = None):
    argv, out = kit.export_args(kit.checkpoint, "--search", *extra)
    if data is not None:
        path = kit.tmp / "texts.csv"
        path.write_bytes(data)
        argv[argv.index("--data") + 1] = path
    return argv, out


def _file_as_parent(kit: Kit):
    (kit.tmp / "afile").write_text("x")
    args, _ = kit.export_args(kit.tmp / "missing-model", out=kit.tmp / "afile" / "out")
    return args, kit.tmp / "afile"


# ---- issue 15: data in the wrong format for the model's task ------------------------------------------------


def _task_model(kit: Kit, head: str, **config) -> Path:
    from test_tasks import build

    return build(kit.tmp / "task-model", head, **config)


def _vocab_with_a_gap(kit: Kit) -> Path:
    """The tiny checkpoint with its last token numbered one past the end, as a duplicated vocab.txt line does."""
    folder = kit.ckpt()
    document = json.loads((folder / "tokenizer.json").read_text())
    vocab = document["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    vocab[last] += 1
    (folder / "tokenizer.json").write_text(json.dumps(document))
    return folder


def _family(kit: Kit, model_type: str) -> Path:
    from family_models import build_any_family_checkpoint

    return build_any_family_checkpoint(kit.tmp / model_type, model_type)


def _file(kit: Kit, name: str, text: str) -> Path:
    path = kit.tmp / name
    path.write_text(text)
    return path


def _with_data(kit: Kit, model: Path, data: Path, *extra):
    argv, out = kit.export_args(model, *extra)
    argv[argv.index("--data") + 1] = data
    return argv, out


def _ner_rows_for_classifier(kit: Kit):
    rows = _file(kit, "ner.jsonl", '{"tokens": ["a", "movie"], "tags": ["O", "O"]}\n')
    return _with_data(kit, kit.checkpoint, rows)


def _qa_without_answers(kit: Kit):
    from test_tasks import squad

    data = squad(kit.tmp / "dev.json")
    document = json.loads(data.read_text())
    document["data"][0]["paragraphs"][0]["qas"][1]["answers"] = []
    data.write_text(json.dumps(document))
    return _with_data(kit, _task_model(kit, "ForQuestionAnswering"), data)


def _regression_labels_not_numbers(kit: Kit):
    return _with_data(kit, _task_model(kit, "ForSequenceClassification", num_labels=1), kit.data)


def _csv_for_token_classifier(kit: Kit):
    from test_tasks import LABELS, labelled

    model = _task_model(kit, "ForTokenClassification", **labelled(LABELS["token-classification"]))
    return _with_data(kit, model, _file(kit, "eval.conll", "text,label\n"))


def _unsupported_sentence_transformers_module(kit: Kit):
    folder = kit.ckpt()
    _config(folder, architectures=["BertModel"])
    _weights(folder, lambda state: {k: v for k, v in state.items() if not k.startswith(("classifier.", "bert.pooler"))})
    modules = [{"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    return kit.export_args(folder)


CASES = [
    # id, builder(kit) -> (argv, folder that must be unchanged), exit code, part of the error line
    ("model-missing", lambda k: k.export_args(k.tmp / "nope"), 2, "model path does not exist"),
    (
        "checkpoint-empty",
        lambda k: k.export_args(Path(k.tmp / "empty").mkdir() or k.tmp / "empty"),
        2,
        "checkpoint folder is empty",
    ),
    (
        "config-missing",
        lambda k: k.export_args((k.ckpt() / "config.json").unlink() or k.tmp / "ckpt"),
        2,
        "config.json is missing",
    ),
    (
        "unknown-device",
        lambda k: (["export", k.checkpoint, "--device", "pixel77", "-o", k.tmp / "out"], k.tmp / "out"),
        2,
        "Unknown device 'pixel77'",
    ),
    (
        "unknown-quantize",
        lambda k: k.export_args(k.checkpoint, "--quantize", "int3"),
        2,
        "unknown quantization mode 'int3'",
    ),
    ("unknown-recipe", lambda k: k.export_args(k.checkpoint, "--recipe", "nope"), 2, "unknown recipe 'nope'"),
    # a vocabulary listing a token twice numbers the rest with a gap: once an internal IndexError at export
    (
        "vocab-id-gap",
        lambda k: k.export_args(_vocab_with_a_gap(k)),
        2,
        "one listed twice in vocab.txt?",
    ),
    # issue 14: a rank or group out of range; a method that does not apply to the family
    (
        "low-rank-above-matrix-rank",
        lambda k: k.export_args(
            k.checkpoint, "--recipe", _file(k, "r.toml", '[[compress]]\npass = "low_rank"\nrank = 99\nepochs = 0\n')
        ),
        2,
        "option 'rank' of pass 'low_rank' = 99 is above the matrices' own rank",
    ),
    (
        "low-rank-without-train-data",
        lambda k: k.export_args(
            k.checkpoint, "--recipe", _file(k, "r.toml", '[[compress]]\npass = "low_rank"\nrank = 8\n')
        ),
        2,
        "pass 'low_rank' fine-tunes the factorised model on training texts, but none were given",
    ),
    (
        "share-layers-group-too-large",
        lambda k: k.export_args(
            k.checkpoint, "--recipe", _file(k, "r.toml", '[[compress]]\npass = "share_layers"\ngroup = 5\nepochs = 0\n')
        ),
        2,
        "option 'group' of pass 'share_layers' = 5 is more than the model's 2 layers",
    ),
    (
        "share-layers-on-albert",
        lambda k: k.export_args(
            _family(k, "albert"),
            "--recipe",
            _file(k, "r.toml", '[[compress]]\npass = "share_layers"\nepochs = 0\n'),
        ),
        2,
        "share one set of layer weights already",
    ),
    # issue 14 part 4: an exit threshold out of range; early exit where it does not apply, or without training texts
    (
        "early-exit-threshold-out-of-range",
        lambda k: k.export_args(
            k.checkpoint,
            "--recipe",
            _file(k, "r.toml", '[[compress]]\npass = "early_exit"\npolicy = "patience"\nthreshold = 5\n'),
            "--train-data",
            k.data,
        ),
        2,
        "exit threshold 5 is out of range for policy 'patience'",
    ),
    (
        "early-exit-on-an-onnx-file",
        lambda k: k.export_args(
            k.onnx,
            "--tokenizer",
            k.checkpoint,
            "--task",
            "sequence-classification",
            "--recipe",
            _file(k, "r.toml", '[[compress]]\npass = "early_exit"\n'),
        ),
        2,
        "early exit needs the model's layers as torch modules",
    ),
    (
        "early-exit-on-mobilebert",
        lambda k: k.export_args(
            _family(k, "mobilebert"), "--recipe", _file(k, "r.toml", '[[compress]]\npass = "early_exit"\n')
        ),
        2,
        "early exit does not apply to MobileBERT",
    ),
    (
        "early-exit-with-token-elimination",
        lambda k: k.export_args(
            k.checkpoint,
            "--recipe",
            _file(k, "r.toml", '[[compress]]\npass = "eliminate_tokens"\n[[compress]]\npass = "early_exit"\n'),
            "--train-data",
            k.data,
        ),
        2,
        "pass 'early_exit' cannot be combined with 'eliminate_tokens'",
    ),
    (
        "early-exit-without-train-data",
        lambda k: k.export_args(k.checkpoint, "--recipe", _file(k, "r.toml", '[[compress]]\npass = "early_exit"\n')),
        2,
        "pass 'early_exit' trains its ramps by distillation",
    ),
    # issue 16: a profile's length buckets and what its latency budget bounds
    (
        "buckets-not-ending-at-seq-len",
        lambda k: _with_device(k, "buckets = [16]", "buckets = [8, 12]"),
        2,
        "field 'runtime.buckets' must end with seq_len 16, got [8, 12]",
    ),
    (
        "latency-applies-to-unknown",
        lambda k: _with_device(k, 'latency_applies_to = "longest-bucket"', 'latency_applies_to = "median"'),
        2,
        "field 'budgets.latency_applies_to' must be one of real-text, longest-bucket",
    ),
    ("data-missing", lambda k: _data_file(k, "none.csv", None), 2, "data file does not exist"),
    ("data-unknown-format", lambda k: _data_file(k, "x.xlsx", b"text,label\n"), 2, "unknown data format '.xlsx'"),
    ("data-no-text-column", lambda k: _data_file(k, "x.csv", b"words,label\nfun,positive\n"), 2, "no text column"),
    (
        "data-unknown-labels",
        lambda k: _data_file(k, "x.csv", b"text,label\nfun,happy\n"),
        2,
        "labels ['happy'] are not known to the model",
    ),
    (
        "data-utf16",
        lambda k: _data_file(k, "x.csv", "text,label\nfun,positive\n".encode("utf-16")),
        2,
        "the file is UTF-16 text; expected UTF-8 text",
    ),
    (
        "data-semicolons",
        lambda k: _data_file(k, "x.csv", b"text;label\nfun;positive\n"),
        2,
        "the columns seem separated by ';'",
    ),
    # item 2: a tokenizer larger than the embedding table (IndexError at run time before)
    (
        "vocab-larger-than-table",
        _smaller_vocab,
        2,
        "the tokenizer has 110 tokens but the model's embedding table has 50 rows",
    ),
    (
        "onnx-vocab-larger-than-table",
        lambda k: k.export_args(_onnx_table(k, "word_embeddings", 50), "--tokenizer", k.checkpoint),
        2,
        "the tokenizer has 110 tokens but the model's embedding table has 50 rows",
    ),
    # issue 15: a tokenizer of another family; smaller than the table (BERT's 110 WordPieces for RoBERTa's 300
    # rows), it pads with the wrong id, which RoBERTa's positions count from
    (
        "tokenizer-of-another-family",
        lambda k: _family_with_tokenizer_of(k, "roberta", "distilbert"),
        2,
        "the tokenizer pads with id 0 ('[PAD]') but config.json says pad_token_id 1",
    ),
    # larger than the table (RoBERTa's 300 BPE tokens for DistilBERT's 110 rows)
    (
        "tokenizer-of-another-family-too-large",
        lambda k: _family_with_tokenizer_of(k, "distilbert", "roberta"),
        2,
        "the tokenizer has 300 tokens but the model's embedding table has 110 rows",
    ),
    # item 3: an .onnx position table shorter than the profile's seq_len (ORT failure in verification before)
    (
        "onnx-short-position-table",
        lambda k: k.export_args(
            _onnx_table(k, "position_embeddings", 8), "--tokenizer", k.checkpoint, "--task", "sequence-classification"
        ),
        2,
        "device seq_len 16 exceeds the model's maximum length 8",
    ),
    (
        "onnx-corrupt",
        lambda k: k.export_args(
            (k.tmp / "m.onnx").write_bytes(b"\x08garbage") and k.tmp / "m.onnx", "--tokenizer", k.checkpoint
        ),
        2,
        "not a readable ONNX model",
    ),
    # item 7: NaN / inf weights are the user's input, not a lowering bug
    (
        "weights-nan",
        lambda k: k.export_args(_weights(k.ckpt(), _poison(float("nan")))),
        2,
        "tensor 'bert.encoder.layer.1.output.dense.weight' has 1 NaN or infinite value(s)",
    ),
    (
        "weights-inf",
        lambda k: k.export_args(_weights(k.ckpt(), _poison(float("inf")))),
        2,
        "tensor 'bert.encoder.layer.1.output.dense.weight' has 1 NaN or infinite value(s)",
    ),
    # item 8: weights for more layers than the config has (shipped a 1-layer model with exit 0 before)
    (
        "weights-more-layers-than-config",
        lambda k: k.export_args(_config(k.ckpt(), num_hidden_layers=1)),
        2,
        "tensor(s) the config has no place for ('bert.encoder.layer.1.",
    ),
    (
        "weights-missing-tensor",
        lambda k: k.export_args(_weights(k.ckpt(), lambda s: {n: v for n, v in s.items() if n != "classifier.bias"})),
        2,
        "tensor 'classifier.bias' is missing",
    ),
    (
        "shard-index-missing-shard",
        lambda k: k.export_args(
            (
                (k.ckpt() / "model.safetensors").unlink()
                or (k.tmp / "ckpt" / "model.safetensors.index.json").write_text(
                    json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})
                )
            )
            and k.tmp / "ckpt"
        ),
        2,
        "shard 'model-00001-of-00002.safetensors' named in the index is missing",
    ),
    # 10b: -o checked before any work; never replace what no export wrote
    (
        "output-is-a-file",
        lambda k: k.export_args(k.checkpoint, out=(k.tmp / "o").write_text("x") and k.tmp / "o"),
        2,
        "cannot create the output folder (File exists)",
    ),
    ("output-parent-is-a-file-before-intake", _file_as_parent, 2, "cannot create the output folder ("),
    (
        "output-device-path-is-a-file",
        lambda k: _out_in_the_way(k, lambda p: p.write_text("mine\n")),
        2,
        "a file is in the way of the output folder",
    ),
    (
        "output-device-folder-not-an-export",
        lambda k: _out_in_the_way(k, _user_folder),
        2,
        "the output folder holds files that no export wrote",
    ),
    # item 5: check on damaged exports
    ("check-not-an-export", lambda k: (["check", k.tmp, "--device", k.device], k.tmp), 2, "not an edgecompress export"),
    ("check-truncated-onnx", _truncated_onnx_with_its_hash, 2, "model.onnx is not a readable ONNX model"),
    ("check-empty-manifest", lambda k: _exported_with(k, "manifest.json", b""), 2, "manifest.json is not valid JSON"),
    (
        "check-manifest-without-inputs",
        lambda k: _exported_with(k, "manifest.json", b"{}"),
        2,
        "field 'inputs' of manifest.json is missing",
    ),
    (
        "check-report-not-an-object",
        lambda k: _exported_with(k, "report.json", b"[1, 2]"),
        2,
        "report.json is a list, not an object",
    ),
    (
        "check-report-artifact-malformed",
        lambda k: _exported_with(k, "report.json", b'{"artifacts": [3], "data": {}}'),
        2,
        "report.json artifacts[0] is a int, not an object",
    ),
    # item 6: a modified artifact is not what was verified
    (
        "check-modified-onnx",
        lambda k: _exported_with(k, "model.onnx", append=b"\0"),
        2,
        "file 'model.onnx' was modified after export",
    ),
    (
        "check-modified-ort",
        lambda k: _exported_with(k, "model.ort", append=b"\0"),
        2,
        "file 'model.ort' was modified after export",
    ),
    (
        "check-missing-vocab",
        lambda k: (lambda args: ((args[0][1] / "vocab.txt").unlink(), args)[1])(
            _exported_with(k, "labels.txt", append=b"")
        ),
        2,
        "file 'vocab.txt' listed in manifest.json is missing",
    ),
    ("bench-missing", lambda k: (["bench", k.tmp / "none.onnx"], k.tmp), 2, "artifact does not exist"),
    (
        "bench-text-file",
        lambda k: (["bench", (k.tmp / "a.txt").write_text("x") and k.tmp / "a.txt"], k.tmp),
        2,
        "no runner for '.txt' files",
    ),
    # issue 12: --on targets (the loopback-ssh and adb-client cases are in test_transport_ssh.py / _adb.py)
    (
        "bench-on-unknown-target",
        lambda k: (["bench", k.exported() / "model.onnx", "--on", "telnet://board"], k.tmp / "export"),
        2,
        "--on: unknown target 'telnet://board'; expected host, ssh://user@host[:port] or adb[:SERIAL]",
    ),
    (
        "bench-on-malformed-ssh",
        lambda k: (["bench", k.exported() / "model.onnx", "--on", "ssh://pi@board:99999"], k.tmp / "export"),
        2,
        "cannot read ssh target 'ssh://pi@board:99999'",
    ),
    (
        "bench-on-adb-without-program",
        lambda k: (["bench", k.exported() / "model.tflite", "--on", "adb"], k.tmp / "export"),
        2,
        "no benchmark_model given for litert artifacts",
    ),
    (
        "bench-on-adb-program-missing",
        lambda k: (
            ["bench", k.exported() / "model.onnx", "--on", "adb", "--perf-test", k.tmp / "onnxruntime_perf_test"],
            k.tmp / "export",
        ),
        2,
        "benchmark program does not exist",
    ),
    (
        "bench-on-adb-program-not-elf",
        lambda k: (
            ["bench", k.exported() / "model.onnx", "--on", "adb", "--perf-test", k.data],
            k.tmp / "export",
        ),
        2,
        "benchmark program is not an executable (no ELF header)",
    ),
    (
        "export-on-unknown-target-before-any-work",
        lambda k: k.export_args(k.checkpoint, "--on", "ftp://board"),
        2,
        "--on: unknown target 'ftp://board'",
    ),
    ("distill-eval-data-missing", lambda k: _distill_eval(k, None), 2, "data file does not exist"),
    (  # issue 14 part 1: Weight Squeezing maps the teacher's weights; a narrow embedding table has none to map
        "distill-squeezed-narrow-embeddings",
        lambda k: _distill(k, _family(k, "mobilebert"), "squeezed"),
        2,
        "Weight Squeezing needs embeddings as wide as the layers",
    ),
    (
        "distill-squeezed-init",
        lambda k: _distill(k, k.checkpoint, "squeezed", config={"init": "random"}),
        2,
        "a squeezed student has no 'init' setting",
    ),
    (
        "distill-transformer-unknown-init",
        lambda k: _distill(k, k.checkpoint, "transformer", config={"init": "glove"}),
        2,
        "unknown init 'glove'",
    ),
    (
        "distill-eval-data-unknown-labels",
        lambda k: _distill_eval(k, b"text,label\nfun,happy\n"),
        2,
        "labels ['happy'] are not known to the model",
    ),
    (
        "distill-eval-data-unlabelled",
        lambda k: _distill_eval(k, b"text\nfun\n"),
        2,
        "no label column",
    ),  # issue 15: the task seam
    ("ner-rows-for-classifier", _ner_rows_for_classifier, 2, "these are token-classification rows"),
    ("qa-without-answers", _qa_without_answers, 2, "qas[1]: question without answers"),
    ("regression-label-not-a-number", _regression_labels_not_numbers, 2, "label 'positive' is not a number"),
    ("csv-for-token-classifier", _csv_for_token_classifier, 2, "line has one column ('text,label')"),
    (
        "onnx-task-ambiguous",
        lambda k: k.export_args(k.onnx, "--tokenizer", k.checkpoint),
        2,
        "cannot tell the task from the outputs (logits 2-D)",
    ),
    (
        "task-option-contradicts-checkpoint",
        lambda k: k.export_args(k.checkpoint, "--task", "token-classification"),
        2,
        "--task token-classification does not match the checkpoint",
    ),
    (
        "sentence-transformers-dense",
        _unsupported_sentence_transformers_module,
        2,
        "module(s) ['Dense'] are not supported",
    ),
    # issue 13: export --search (no candidate meeting the budgets is exit 3, not an error: tests/test_search.py)
    ("search-without-data", _search_without_data, 2, "--search needs --data: the search ranks candidates by accuracy"),
    ("search-unlabelled-data", lambda k: _search_with(k, data=b"text\nfun\n"), 2, "--data has no label column"),
    (
        "search-student-not-a-folder",
        lambda k: _search_with(k, "--student", k.tmp / "nothing-here"),
        2,
        "--student is not a checkpoint folder",
    ),
    (
        "search-student-not-a-student",
        lambda k: _search_with(k, "--student", k.ckpt()),
        2,
        "--student is not a student checkpoint: no training.json naming its teacher",
    ),
    (
        "search-student-of-another-teacher",
        lambda k: _search_with(k, "--student", _student_of(k, k.tmp / "other-teacher")),
        2,
        "--student was distilled from another teacher",
    ),
    (
        "search-student-without-search",
        lambda k: k.export_args(k.checkpoint, "--student", k.ckpt()),
        2,
        "--student is a search candidate",
    ),
    (
        "search-with-quantize",
        lambda k: _search_with(k, "--quantize", "int8"),
        2,
        "--quantize and --search both choose the recipe",
    ),
]


def snapshot(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_checkpoint, tiny_device, tiny_data):
    import onnx

    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.lower import export_onnx

    root = tmp_path_factory.mktemp("bad-inputs")
    bundle = load_bundle(tiny_checkpoint)
    feeds = tokenize(bundle.tokenizer, ["a good movie"], seq_len=16, input_names=bundle.input_names)
    onnx.save(export_onnx(bundle, feeds), str(root / "tiny.onnx"))
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(tiny_device),
            "--data",
            str(tiny_data),
            "-o",
            str(root / "dist"),
            "--no-measure",
        ],
    )
    assert result.exit_code == 0, result.output
    return root / "tiny.onnx", root / "dist" / "tinyphone"


@pytest.mark.parametrize("case, build, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(
    case, build, code, fragment, assets, tmp_path, tiny_checkpoint, tiny_device, tiny_data
):
    kit = Kit(tmp_path, tiny_checkpoint, tiny_device, tiny_data, *assets)
    argv, untouched = build(kit)
    before = snapshot(untouched)
    result = CliRunner().invoke(main, [str(a) for a in argv])
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("[") and not line.startswith("        ")
    ]  # stage progress lines are not errors
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "bug" not in lines[0]
    assert snapshot(untouched) == before
    assert not list(untouched.parent.glob(".*.partial-*")) if untouched.parent.exists() else True


def test_the_table_covers_the_issue():
    assert len(CASES) >= 30
