"""The verify stage: every artifact file is run on every text and must match the reference before anything ships.

Four checks, in order: for an integer-only model, the op audit of each file (no float op between integer
ops); each file against the reference model (the compressed torch model, or the input ONNX file), every
text padded to the longest length; each non-ONNX-Runtime file against the ONNX Runtime file of the same
export (one export must be one model on every runtime; bit-exact for an integer-only model); and, for a
profile with length buckets, each file run the way the app runs it, every text at its bucket, against the
same file at the longest length. A
quantized file of a runtime with an exact writer that misses the first or second check gets a second
chance on ONNX Runtime's integer grids. The result carries every figure the report needs; nothing here
writes outside the staging folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecompress.backends import Artifact, backend_for, served_lengths
from edgecompress.errors import VerificationError
from edgecompress.intake.data import TextLengths, bucket_of
from edgecompress.verify.evaluate import (
    BUCKET_ATOL,
    Parity,
    artifact_outputs,
    bucket_fidelity,
    compare,
    compare_buckets,
    compare_runtimes,
)

Ticker = Callable[[str], Callable[[int, int], None]]  # label -> progress(done, total)


@dataclass
class Verified:
    """What the verify stage hands on: the artifacts as finally written, with their checks and audits."""

    artifacts: list[Artifact]
    parities: list[Parity]  # against the reference model, per artifact
    outputs: list[np.ndarray]  # each artifact's outputs on every text, for accuracy and agreement
    audits: list[dict]  # op histogram, float ops (and more) per artifact
    cross_runtime: list[dict | None]  # parity with the ONNX Runtime artifact, per non-ORT artifact
    notes: list[str] = field(default_factory=list)
    # With length buckets: each artifact's outputs with every text at its bucket (what the app gets; accuracy
    # is scored on these), and how they compare with `outputs`, per artifact. Empty without buckets.
    served_outputs: list[np.ndarray] = field(default_factory=list)
    bucket_parity: list[dict] = field(default_factory=list)

    def outputs_as_served(self, i: int) -> np.ndarray:
        return self.served_outputs[i] if self.served_outputs else self.outputs[i]


@dataclass(frozen=True)
class Reference:
    """What the artifacts are checked against, and how strictly."""

    outputs: np.ndarray  # outputs of the model the graph was lowered from, on `feeds`
    feeds: dict[str, np.ndarray]  # the eval texts, tokenized as the shipped tokenizer does
    output_name: str
    task: Any  # the model's tasks.Task: what agreement means, which output values count
    lossy: bool  # a pass changed the numbers on purpose: agreement instead of a tight tolerance
    atol: float
    # How the texts fall into the lengths the artifacts serve (the same TextLengths the report counts); None or
    # one bucket: the feeds' length only.
    lengths: TextLengths | None = None
    bucket_atol: float = BUCKET_ATOL  # a bucket against the longest length, for a float model

    @property
    def buckets(self) -> tuple[int, ...]:
        return self.lengths.buckets if self.lengths is not None else ()


def verify_artifacts(
    artifacts: list[Artifact], graph, reference: Reference, *, integer_only: bool, ticker: Ticker
) -> Verified:
    audits = [artifact_audit(a, graph) for a in artifacts]
    if integer_only:
        check_integer_only(artifacts, audits)
    verified = Verified(list(artifacts), [], [], audits, [None] * len(artifacts))
    for i, artifact in enumerate(artifacts):
        parity, values = _against_reference(artifact, reference, ticker(f"verify {artifact.path.name}"))
        if not parity.passed and reference.lossy:
            parity, values = _exact_second_chance(verified, i, graph, parity, values, reference, ticker)
        if not parity.passed:
            raise VerificationError(
                f"{verified.artifacts[i].path.name} does not match the reference model: max |diff| "
                f"{parity.max_abs_diff:.3g} (tolerance {parity.tolerance}), prediction agreement "
                f"{parity.prediction_agreement} of {parity.agreement_units} units, min cosine {parity.min_cosine}; "
                "nothing was written"
            )
        verified.parities.append(parity)
        verified.outputs.append(values)
    _cross_check(verified, graph, reference, ticker)
    if integer_only:
        check_bit_exact(verified)
    if len(reference.buckets) > 1:
        _check_buckets(verified, reference, ticker)
    return verified


def _exact_second_chance(
    verified: Verified, i: int, graph, missed: Parity, values: np.ndarray, reference: Reference, ticker: Ticker
) -> tuple[Parity, np.ndarray]:
    """A quantized artifact of a runtime with an exact writer that misses the reference is written again on ONNX
    Runtime's int8 grids: the integers of the graph the quantizers judged (their trials run ONNX Runtime), which
    the runtime's own rounding may take across a decision the judged graph keeps. Returns the new parity and
    outputs, or `missed` and `values` when there is no such writer or it misses too."""
    first = verified.artifacts[i]
    write = backend_for(first.runtime).exact_writer
    if write is None:
        return missed, values
    artifact = write(graph, first.path.parent, reference.buckets)
    parity, outputs = _against_reference(artifact, reference, ticker(f"verify {artifact.path.name} (exact)"))
    if not parity.passed:
        return missed, values
    verified.artifacts[i], verified.audits[i] = artifact, artifact_audit(artifact, graph)
    verified.notes.append(
        f"{artifact.path.name}: with the runtime's own int8 rounding it missed the reference model "
        f"({_agreement(missed)}); written again on ONNX Runtime's int8 grids, which is slower "
        f"({_agreement(parity)})"
    )
    return parity, outputs


def _check_buckets(verified: Verified, reference: Reference, ticker: Ticker) -> None:
    """Every artifact with each text at its bucket must compute what it computes at the longest length."""
    assert reference.lengths is not None  # buckets come from it
    for artifact, padded in zip(verified.artifacts, verified.outputs):
        lengths = served_lengths(artifact, reference.lengths)
        which = bucket_of(lengths.tokens, lengths.buckets)
        served = _run_bucketed(artifact, reference, lengths.buckets, which, ticker(f"buckets {artifact.path.name}"))
        parity = compare_buckets(
            padded,
            served,
            task=reference.task,
            feeds=reference.feeds,
            lossy=reference.lossy,
            atol=reference.bucket_atol,
        )
        fidelity = None
        if reference.lossy and not parity.passed:  # two quantized runs may differ where both are near float
            fidelity = bucket_fidelity(reference.outputs, padded, served, task=reference.task, feeds=reference.feeds)
            parity.passed = fidelity["passed"]
        if not parity.passed:
            served_as = _served_as(lengths, reference)
            raise VerificationError(
                f"{artifact.path.name} with each text at {served_as} does not compute what it computes at "
                f"length {reference.buckets[-1]}: max |diff| {parity.max_abs_diff:.3g} (tolerance "
                f"{parity.tolerance}), same prediction on {parity.prediction_agreement}, min cosine "
                f"{parity.min_cosine}{_fidelity_text(fidelity)}; nothing was written"
            )
        verified.served_outputs.append(served)
        verified.bucket_parity.append(
            {
                **dataclasses.asdict(parity),
                "texts_per_bucket": reference.lengths.per_bucket(),
                "served_at": _served_as(lengths, reference),
                "how": "measured",
                "against": f"the same file with every text padded to {reference.buckets[-1]}",
                "fidelity_to_reference": fidelity,
            }
        )


def _served_as(lengths: TextLengths, reference: Reference) -> str:
    return "its length bucket" if lengths.buckets == reference.buckets else "its own length (no padding)"


def _fidelity_text(fidelity: dict | None) -> str:
    if fidelity is None:
        return ""
    return (
        f", and it is further from the reference model than the padded run ({fidelity['measure']} "
        f"{fidelity['bucketed']:.4f} against {fidelity['padded']:.4f})"
    )


def _run_bucketed(
    artifact: Artifact, reference: Reference, lengths: tuple[int, ...], which: np.ndarray, progress
) -> np.ndarray:
    """The artifact's outputs with every text cut to the length it runs at (`which`, one of `lengths`), as the
    manifest tells the app to run it. A per-token output is zero-padded back to the longest length (parity
    compares real tokens only)."""
    served: np.ndarray | None = None
    longest = reference.buckets[-1]
    done = 0
    for length in lengths:
        rows = np.flatnonzero(which == length)
        if not len(rows):
            continue
        feeds = {name: values[rows, :length] for name, values in reference.feeds.items()}
        values = artifact_outputs(artifact, feeds, output_name=reference.output_name, length=length)
        if served is None:
            shape = (longest, *values.shape[2:]) if reference.task.per_token else values.shape[1:]
            served = np.zeros((len(which), *shape), dtype=values.dtype)
        if reference.task.per_token:
            served[rows, :length] = values
        else:
            served[rows] = values
        done += len(rows)
        progress(done, len(which))
    assert served is not None  # every text has a bucket
    return served


def _against_reference(artifact: Artifact, reference: Reference, progress) -> tuple[Parity, np.ndarray]:
    """(parity with the reference model, outputs) of one artifact file run on every text."""
    outputs = artifact_outputs(artifact, reference.feeds, output_name=reference.output_name, progress=progress)
    return compare(
        reference.outputs,
        outputs,
        task=reference.task,
        feeds=reference.feeds,
        lossy=reference.lossy,
        atol=reference.atol,
    ), outputs


def _against_runtime(ort_outputs: np.ndarray, outputs: np.ndarray, reference: Reference) -> Parity:
    return compare_runtimes(
        ort_outputs, outputs, task=reference.task, feeds=reference.feeds, lossy=reference.lossy, atol=reference.atol
    )


def _cross_check(verified: Verified, graph, reference: Reference, ticker: Ticker) -> None:
    """Each non-ONNX-Runtime artifact against the ONNX Runtime one of the same export (or the final graph
    run in ONNX Runtime when the profile ships none): one export must be one model on every runtime."""
    from edgecompress.verify.evaluate import ort_session, run_session

    others = [i for i, a in enumerate(verified.artifacts) if a.runtime != "onnxruntime"]
    if not others:
        return
    ort_outputs = next(
        (outputs for a, outputs in zip(verified.artifacts, verified.outputs) if a.runtime == "onnxruntime"), None
    )
    source = "the ONNX Runtime artifact"
    if ort_outputs is None:
        session = ort_session(graph.SerializeToString(), threads=2, optimize=True)
        ort_outputs = run_session(session, reference.feeds, output_name=reference.output_name, batch_size=1)
        source = "the final ONNX graph in ONNX Runtime"
    for i in others:
        parity = _against_runtime(ort_outputs, verified.outputs[i], reference)
        if not parity.passed:
            parity = _write_exact(verified, i, graph, ort_outputs, parity, reference, ticker)
        if not parity.passed:
            raise VerificationError(
                f"{verified.artifacts[i].path.name} does not compute what {source} computes: max |diff| "
                f"{parity.max_abs_diff:.3g}, same prediction on {parity.prediction_agreement}, min cosine "
                f"{parity.min_cosine}; nothing was written"
            )
        verified.cross_runtime[i] = {**dataclasses.asdict(parity), "against": source, "how": "measured"}


def _write_exact(
    verified: Verified, i: int, graph, ort_outputs: np.ndarray, missed: Parity, reference: Reference, ticker: Ticker
) -> Parity:
    """Write artifact `i` again with its runtime's exact writer (ONNX Runtime's integers) when it has one,
    check it like the first, and say so in the notes; returns the new cross-runtime parity (or `missed`)."""
    first = verified.artifacts[i]
    write = backend_for(first.runtime).exact_writer
    if write is None:
        return missed
    artifact = write(graph, first.path.parent, reference.buckets)
    parity, outputs = _against_reference(artifact, reference, ticker(f"verify {artifact.path.name} (exact)"))
    if not parity.passed:
        return missed
    verified.artifacts[i], verified.parities[i], verified.outputs[i] = artifact, parity, outputs
    verified.audits[i] = artifact_audit(artifact, graph)
    again = _against_runtime(ort_outputs, outputs, reference)
    verified.notes.append(
        f"{artifact.path.name}: with the runtime's own int8 rounding it missed the check against "
        f"the ONNX Runtime artifact ({_agreement(missed)}); written again on ONNX Runtime's int8 "
        f"grids, which is slower ({_agreement(again)})"
    )
    return again


def _agreement(parity: Parity) -> str:
    if parity.prediction_agreement is not None:
        return f"same prediction on {parity.prediction_agreement:.2%} of texts"
    return f"max |diff| {parity.max_abs_diff:.3g}"


def check_integer_only(artifacts: list[Artifact], audits: list[dict]) -> None:
    """An integer-only model may compute in float only at its boundary: the audit of each file decides."""
    for artifact, audit in zip(artifacts, audits):
        inside = audit.get("float_ops_inside")
        if inside is None:
            raise VerificationError(
                f"{artifact.path.name}: the {artifact.runtime} audit cannot tell float ops "
                f"inside the model, so an integer-only export cannot be proven; nothing "
                f"was written"
            )
        if inside:
            raise VerificationError(
                f"{artifact.path.name} is not integer-only: {len(inside)} node(s) compute in "
                f"float between integer ops ({', '.join(inside[:5])}); nothing was written"
            )


def check_bit_exact(verified: Verified) -> None:
    """An integer-only model computes the same integers on every runtime (each lowering is exact), so its
    non-ONNX-Runtime files must give ONNX Runtime's logits to the bit: any difference is a lowering bug."""
    for artifact, cross in zip(verified.artifacts, verified.cross_runtime):
        if cross is not None and cross["max_abs_diff"] != 0.0:
            raise VerificationError(
                f"{artifact.path.name} is not bit-exact with {cross['against']}: max |diff| "
                f"{cross['max_abs_diff']:.3g} on an integer-only model; nothing was written"
            )


def artifact_audit(artifact: Artifact, graph) -> dict[str, Any]:
    """Ops and float ops read from the artifact where its runtime can list them, else from the ONNX graph."""
    from edgecompress.onnx_facts import infer_shapes, op_histogram

    audit = backend_for(artifact.runtime).audit
    if audit is not None:
        return audit(artifact.path)
    return {
        "op_histogram": op_histogram(graph),
        "float_ops": float_op_types(graph, infer_shapes(graph)),
        "method": "static: from model.onnx, the graph this artifact was written from",
    }


def float_op_types(model, shapes) -> list[str]:
    """Op types that compute in float (the ONNX Runtime audit's definition), from the graph and its shapes."""
    from edgecompress.backends.ort.audit import computes_in_float, graph_nodes

    types = {name: elem_type for name, (_, elem_type) in shapes.items()}
    return sorted({n.label for n in graph_nodes(model) if computes_in_float(n, types)})
