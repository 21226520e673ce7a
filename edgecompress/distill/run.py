"""`edgecompress distill`: a fine-tuned teacher and labelled texts -> a trained student checkpoint folder.

plan (every check bad input can fail, before anything is written) -> prepare the work folder beside the
output (job.json, transfer set labelled by the teacher, initial student) -> train (in this process, or N
processes under torchrun) -> publish the checkpoint folder in one rename. The work folder
`.<output>.distill-partial` survives an interruption: rerunning the same command resumes from the last
finished epoch; a changed command (other options, data or teacher path) starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.atomic import swap_in
from edgecompress.distill.augment import AugmentOptions
from edgecompress.distill.losses import LossOptions
from edgecompress.distill.trainer import INIT, JOB, TRAINED, TRANSFER, TRANSFORMERS, TrainOptions
from edgecompress.errors import InternalError, UserError

log = logging.getLogger(__name__)

STUDENTS = ("bilstm", "cnn", "transformer", "squeezed")
DEFAULT_TRAINING = {
    "bilstm": TrainOptions(epochs=3, lr=2e-3),
    "cnn": TrainOptions(epochs=3, lr=2e-3),
    "transformer": TrainOptions(epochs=2, lr=1e-4, warmup_ratio=0.1, weight_decay=0.01),
    # Only the maps train, and they start near-orthonormal: a larger step than fine-tuning weights, no decay
    # (decay would pull the maps, and so every student weight, towards zero).
    "squeezed": TrainOptions(epochs=2, lr=5e-4, warmup_ratio=0.1),
}
DEFAULT_LOSSES = {
    "bilstm": LossOptions(),
    "cnn": LossOptions(),
    "transformer": LossOptions(logit_loss="kl", hidden_weight=1.0, attention_weight=1.0),
    "squeezed": LossOptions(logit_loss="kl", hidden_weight=1.0, attention_weight=1.0),
}


@dataclass
class DistillRequest:
    teacher: Path
    student: str  # one of STUDENTS
    train_data: Path
    out_dir: Path
    augment: int = 0  # augmented copies per labelled text
    seq_len: int = 64
    processes: int = 1
    student_config: Path | None = None  # JSON object of hyper-parameters overriding the defaults
    transfer_set: Path | None = None  # .npz to reuse the teacher's labels from, or to save them to
    training: dict[str, Any] = field(default_factory=dict)  # TrainOptions fields overriding the defaults
    losses: dict[str, Any] = field(default_factory=dict)  # LossOptions fields overriding the defaults
    eval_data: Path | None = None  # labelled held-out texts: teacher and student accuracy at the end


@dataclass
class Plan:
    """A checked request: everything the later stages need, and the job identity for resuming."""

    request: DistillRequest
    teacher: Any  # ModelBundle
    texts: list[str]
    labels: Any  # np.ndarray of label ids
    config: dict[str, Any]  # student config; BiLSTM/CNN embedding_rows is set once the corpus is known
    job: dict[str, Any]


def distill(request: DistillRequest) -> Path:
    """Run the whole distillation; returns the student checkpoint folder."""
    plan = plan_distillation(request)
    work = work_dir(request.out_dir)
    started = time.monotonic()
    try:
        transfer_source = prepare(plan, work)
        provenance = {"transfer_set": transfer_source, "prepare_seconds": round(time.monotonic() - started, 1)}
        _train(work, request.processes)
    except KeyboardInterrupt:
        log.warning("interrupted: run the same command again to resume from %s", work)
        raise
    publish(plan, work, provenance)
    return request.out_dir


def _train(work: Path, processes: int) -> None:
    if processes > 1:
        launch_torchrun(work, processes)
        return
    from edgecompress.distill.trainer import train

    train(work)


def work_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.distill-partial"


# --- plan ------------------------------------------------------------------------------------------


def plan_distillation(request: DistillRequest) -> Plan:
    """Check the request against the teacher and the data; raises UserError before anything is written."""
    from edgecompress.intake.data import label_ids, load_dataset

    if request.student not in STUDENTS:
        raise UserError(f"unknown student '{request.student}'", expected=f"one of {', '.join(STUDENTS)}")
    teacher = _load_teacher(request.teacher)
    dataset = load_dataset(request.train_data, require_labels=True)
    labels = label_ids(dataset, teacher.labels)
    if request.seq_len > teacher.tokenizer_settings.max_length:
        raise UserError(
            f"seq_len {request.seq_len} exceeds the teacher's maximum length {teacher.tokenizer_settings.max_length}"
        )
    if request.eval_data is not None:
        label_ids(load_dataset(request.eval_data, require_labels=True), teacher.labels)  # bad input fails now
    _check_output(request)
    _warn_about_lengths(teacher, dataset.texts, request.seq_len)
    config = _student_config(request, teacher)
    job = _job(request, teacher, config)
    if request.transfer_set is not None and Path(request.transfer_set).exists():
        _check_transfer_file(Path(request.transfer_set), job["transfer"])
    return Plan(request, teacher, dataset.texts, labels, config, job)


def _warn_about_lengths(teacher, texts: list[str], seq_len: int) -> None:
    from edgecompress.distill.held_out import length_warnings, shipped_export_lengths
    from edgecompress.intake.data import token_counts

    for warning in length_warnings(token_counts(teacher.tokenizer, texts), seq_len, shipped_export_lengths()):
        log.warning(warning)


def _job(request: DistillRequest, teacher, config: dict[str, Any]) -> dict[str, Any]:
    """What to train, as JSON: equal jobs resume each other; `transfer` says which transfer set fits."""
    losses = dataclasses.replace(DEFAULT_LOSSES[request.student], **request.losses).resolved(
        student_layers=config["num_hidden_layers"] if request.student in TRANSFORMERS else None,
        teacher_layers=teacher.num_layers,
        where="distillation losses",
    )
    training = dataclasses.replace(DEFAULT_TRAINING[request.student], **request.training)
    transfer = {
        "teacher": str(Path(request.teacher).resolve()),
        "seq_len": request.seq_len,
        "data": {"path": str(Path(request.train_data).resolve()), "sha256": _sha256(request.train_data)},
        "augment": dataclasses.asdict(AugmentOptions(request.augment, seed=training.seed)),
    }
    return {
        "kind": request.student,
        "transfer": transfer,
        "config": config,
        "train": dataclasses.asdict(training),
        "losses": dataclasses.asdict(losses),
    }


def _load_teacher(path: Path):
    from edgecompress.architectures import architectures
    from edgecompress.intake.model import CLASSIFICATION, load_bundle

    teacher = load_bundle(path)
    if teacher.module is None or teacher.architecture is None:
        raise UserError(
            "the teacher must be a checkpoint folder of an encoder family",
            where=str(path),
            expected="config.json with model_type one of " + ", ".join(sorted(architectures())),
        )
    if teacher.kind != CLASSIFICATION:
        raise UserError(
            "the teacher has no classification head, so there are no logits to distill",
            where=str(Path(path) / "config.json"),
            expected=f"architectures ['{teacher.architecture.class_prefix}ForSequenceClassification']",
            hint="fine-tune the encoder on labelled data first (tools/train_teacher.py does so)",
        )
    return teacher


def _check_output(request: DistillRequest) -> None:
    out = Path(request.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("output exists and is not a folder", where=str(out))
    if out.resolve() == Path(request.teacher).resolve():
        raise UserError(
            "the output folder is the teacher's folder", where=str(out), hint="write the student to a new folder"
        )


def _student_config(request: DistillRequest, teacher) -> dict[str, Any]:
    overrides = _read_overrides(request.student_config)
    where = str(request.student_config or "student defaults")
    if request.student == "transformer":
        from edgecompress.distill.small_bert import transformer_config

        return transformer_config(teacher.config, overrides, tokenizer=teacher.tokenizer, where=where)
    if request.student == "squeezed":
        from edgecompress.distill.squeeze import check_squeezable, squeezed_config

        check_squeezable(teacher.module.hf_model, where=str(request.teacher))
        return squeezed_config(teacher.config, overrides, tokenizer=teacher.tokenizer, where=where)
    from edgecompress.distill.students import student_config

    return student_config(
        request.student,
        overrides,
        tokenizer=teacher.tokenizer,
        labels=teacher.labels,
        max_positions=teacher.architecture.max_length(teacher.config),
        where=where,
    )


def _read_overrides(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        overrides = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("student config file does not exist", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"student config is not valid JSON ({exc})", where=str(path)) from None
    if not isinstance(overrides, dict):
        raise UserError(
            "student config is not a JSON object",
            where=str(path),
            expected='hyper-parameters such as {"embedding_dim": 64}',
        )
    return overrides


def _check_transfer_file(path: Path, identity: dict[str, Any]) -> None:
    """A transfer set is reused only for exactly the teacher, data, seq_len and augmentation it was made for."""
    import zipfile

    import numpy as np

    try:
        with np.load(path) as saved:
            found = json.loads(str(saved["identity"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        raise UserError("not a transfer set written by `edgecompress distill`", where=str(path)) from None
    if found != identity:
        raise UserError(
            "transfer set was labelled for another teacher, training file, seq_len or augmentation",
            where=str(path),
            hint="delete it, or give another --transfer-set path",
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- prepare ---------------------------------------------------------------------------------------


def prepare(plan: Plan, work: Path) -> str:
    """job.json, transfer.npz and init.pt in `work`, keeping what an earlier run of the same job left.

    Returns where the transfer set came from, for the training record.
    """
    job_text = json.dumps(plan.job, indent=2, sort_keys=True) + "\n"
    if (work / JOB).is_file() and (work / JOB).read_text(encoding="utf-8") == job_text:
        log.info("resuming the unfinished run in %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / JOB).write_text(job_text, encoding="utf-8")
    source = "kept from the interrupted run"
    if not (work / TRANSFER).is_file():
        source = _transfer_set(plan, work / TRANSFER)
    if not (work / INIT).is_file():
        _write_initial_student(plan, work)
    return source


def _transfer_set(plan: Plan, path: Path) -> str:
    """Copy the request's saved transfer set (checked in the plan), or label one and save it there too."""
    saved = plan.request.transfer_set
    if saved is not None and Path(saved).is_file():
        log.info("reusing the teacher's labels from %s", saved)
        _atomic_copy(Path(saved), path)
        return f"reused from {saved}"
    _write_transfer_set(plan, path)
    if saved is not None:
        _atomic_copy(path, Path(saved))
    return "labelled by the teacher"


def _atomic_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _write_transfer_set(plan: Plan, path: Path) -> None:
    import numpy as np

    from edgecompress.distill.augment import build_transfer_set

    identity = plan.job["transfer"]
    options = AugmentOptions(**identity["augment"])
    log.info(
        "labelling %d texts%s with the teacher",
        len(plan.texts),
        f" and up to {options.copies} augmented copies of each" if options.copies else "",
    )
    transfer = build_transfer_set(
        plan.teacher,
        plan.texts,
        plan.labels,
        options,
        seq_len=identity["seq_len"],
        progress=_percent_logger("teacher labels"),
    )
    log.info("transfer set: %d labelled + %d augmented texts", len(plan.texts), len(transfer) - len(plan.texts))
    tmp = path.with_name("transfer.tmp.npz")
    np.savez(
        tmp,
        input_ids=transfer.input_ids,
        attention_mask=transfer.attention_mask,
        teacher_logits=transfer.teacher_logits,
        labels=transfer.labels,
        identity=np.array(json.dumps(identity, sort_keys=True)),
    )
    os.replace(tmp, path)


def _percent_logger(what: str):
    """A progress callback that logs every 10%."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            log.info("%s: %d/%d", what, done, total)

    return report


def _write_initial_student(plan: Plan, work: Path) -> None:
    """The student before training: its config completed and its weights initialised from the teacher."""
    import numpy as np
    import torch

    from edgecompress.distill.trainer import new_student

    torch.manual_seed(plan.job["train"]["seed"])
    hf_teacher = plan.teacher.module.hf_model
    if plan.job["kind"] == "transformer":
        from edgecompress.distill.small_bert import init_from_teacher

        config = plan.config
        student = new_student("transformer", config)
        init_from_teacher(student, config, hf_teacher)
    elif plan.job["kind"] == "squeezed":  # the maps start from the teacher (squeeze.initial_maps)
        config = plan.config
        student = new_student("squeezed", config, teacher=hf_teacher)
    else:
        with np.load(work / TRANSFER) as transfer:
            config, student = _embedding_student(plan, transfer, hf_teacher)
    tmp = work / (INIT + ".tmp")
    torch.save({"config": config, "state": student.state_dict()}, tmp)
    os.replace(tmp, work / INIT)


def _embedding_student(plan: Plan, transfer, hf_teacher):
    """A BiLSTM/CNN whose embedding rows are the corpus tokens, initialised by PCA of the teacher's vectors
    (`embeddings.py`: contextual ones from the labelled texts of the transfer set, or the word table)."""
    import torch

    from edgecompress.distill.embeddings import (
        contextual_token_vectors,
        kept_tokens,
        pca_projection,
        teacher_word_embeddings,
        token_map,
    )
    from edgecompress.distill.students import build_student

    input_ids, attention_mask = torch.from_numpy(transfer["input_ids"]), torch.from_numpy(transfer["attention_mask"])
    tokenizer = plan.teacher.tokenizer
    kept = kept_tokens(input_ids, attention_mask, tokenizer.all_special_ids, plan.config["max_vocab"])
    config = {**plan.config, "embedding_rows": len(kept)}
    student = build_student(config)
    if config["embedding_init"] == "contextual":
        labelled = torch.from_numpy(transfer["labels"] >= 0)  # the training texts, not their augmented copies
        log.info("initial embeddings: the teacher's contextual vectors over %d labelled texts", int(labelled.sum()))
        vectors = contextual_token_vectors(hf_teacher, input_ids[labelled], attention_mask[labelled])
    else:
        vectors = teacher_word_embeddings(hf_teacher)
    with torch.no_grad():
        student.token_map.copy_(token_map(kept, config["vocab_size"], tokenizer.unk_token_id))
        student.embedding.weight.copy_(pca_projection(vectors[torch.tensor(kept)], config["embedding_dim"]))
    log.info(
        "student vocabulary: %d of the teacher's %d tokens (those in the transfer set)", len(kept), config["vocab_size"]
    )
    return config, student


# --- train with torchrun ---------------------------------------------------------------------------


def launch_torchrun(work: Path, processes: int) -> None:
    """Train with `processes` DDP ranks on this machine; their log lines are passed on to our logger."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "edgecompress.distill.trainer",
        str(work),
    ]
    log.info("launching %d training processes: %s", processes, " ".join(cmd[2:]))
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            if line.strip():
                log.info("%s", line.rstrip())
                tail = (tail + [line.rstrip()])[-20:]
    if proc.returncode != 0:
        raise InternalError(f"distributed training exited with {proc.returncode}: " + " | ".join(tail))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- publish ---------------------------------------------------------------------------------------


def publish(plan: Plan, work: Path, provenance: dict[str, Any]) -> None:
    """Write the checkpoint folder beside the output and swap it in; then drop the work folder."""
    import numpy as np
    import torch

    from edgecompress.distill.checkpoint import write_student

    out = plan.request.out_dir
    trained = torch.load(work / TRAINED, weights_only=True)
    init_config = torch.load(work / INIT, weights_only=True)["config"]
    with np.load(work / TRANSFER) as transfer:
        labels = transfer["labels"]
    from edgecompress.distill.held_out import checkpoint_digest

    record = {
        **plan.job,
        "config": init_config,
        "examples": {"labelled": int((labels >= 0).sum()), "augmented": int((labels < 0).sum())},
        **provenance,
        **trained["record"],
        "teacher": {
            "path": str(Path(plan.request.teacher).resolve()),
            "digest": checkpoint_digest(Path(plan.request.teacher)),
            "held_out": None,
        },
        "student_held_out": None,
    }
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_student(staging, plan.job["kind"], init_config, trained["student"], plan.teacher, record)
        if plan.request.eval_data is not None:
            _measure_held_out(plan, staging, record)
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s", out)


def _measure_held_out(plan: Plan, folder: Path, record: dict[str, Any]) -> None:
    """Teacher and student accuracy on --eval-data, recorded in the student's training.json."""
    from edgecompress.distill.held_out import held_out_accuracy
    from edgecompress.intake.model import load_bundle

    seq_len, path = plan.request.seq_len, Path(plan.request.eval_data or "")
    record["teacher"]["held_out"] = held_out_accuracy(plan.teacher, path, seq_len)
    record["student_held_out"] = held_out_accuracy(load_bundle(folder), path, seq_len)
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
