"""Quantization sensitivity, measured: which nodes must stay float so that the output survives.

This module registers no pass: each quantization pass calls it with its own quantizer, so what is
measured is exactly what ships, and the thresholds are that pass's options.

Before -> After (a decision, not a rewrite): candidate nodes -> the nodes kept float, each with the
error its quantization caused.

Method, group first and then node (as Q-BERT ranks layers by sensitivity):
1. Quantize one group at a time and leave the rest float: one op class (one role in every layer, e.g.
   all `layer.*/intermediate/dense/MatMul`) or one encoder layer. Run ONNX Runtime on calibration
   rows and compare with the float graph: SQNR of the outputs, max |diff|, and the units that disagree.
2. Quantize each node of a group that broke the thresholds alone. A node that breaks them alone stays
   float; groups that pass are quantized whole without further trials.
3. Quantize every node that passed, together: errors add up, so nodes that each pass alone may make more
   units disagree together than the thresholds allow. While they do, the node whose own trial is worst stays
   float too.

Disagreement is the task's own (`PassContext.task`: same label, same tag at each real token, same decoded
span, regression values within the task's tolerance, embeddings at the task's cosine), the measure
verification then holds the artifact to; the thresholds never allow more disagreement than verification
does (`verify.evaluate.lossy_max_disagreement`). Without a task (a pass run outside an export), argmax
flips of a classifier's output.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.graph._quant_common import Error, is_classifier, op_counts, output_error, run_model, size_mb
from edgecompress.paths import cache_dir

log = logging.getLogger(__name__)
LAYER = re.compile(r"layer\.(\d+)")

# (float model, names of the nodes to quantize) -> quantized model
Quantizer = Callable[[Any, list[str]], Any]


WHOLE = "together"  # the group name of a trial with every chosen node quantized


@dataclass(frozen=True)
class Thresholds:
    """The output a quantized group must still give: a noise floor and a cap on the share of units that
    disagree (flipped predictions, or by the task's own agreement)."""

    min_sqnr_db: float
    max_flip_rate: float

    @classmethod
    def for_task(cls, min_sqnr_db: float, max_flip_rate: float, task: Any) -> Thresholds:
        """A pass's thresholds, the share of disagreeing units capped at what verification lets a lossy artifact
        keep for `task` (none for embeddings, whose every text must keep its cosine)."""
        if task is None:
            return cls(min_sqnr_db, max_flip_rate)
        from edgecompress.verify.evaluate import lossy_max_disagreement

        return cls(min_sqnr_db, min(max_flip_rate, lossy_max_disagreement(task)))

    def accept(self, error: Error) -> bool:
        return error.sqnr_db >= self.min_sqnr_db and error.flip_rate <= self.max_flip_rate

    def accept_together(self, error: Error) -> bool:
        """All chosen nodes together are held to the share of disagreeing units only: that is what verification
        judges. The SQNR floor picks what each group alone is worth quantizing (a layer under it keeps wider
        weights); the whole graph's SQNR, usually lower than any group's, is reported."""
        return error.flip_rate <= self.max_flip_rate

    def why_not(self, error: Error) -> str:
        reasons = [f"SQNR {error.sqnr_db:.1f} dB < {self.min_sqnr_db:g} dB"] if error.sqnr_db < self.min_sqnr_db else []
        return ", ".join(reasons + ([self.why_not_together(error)] if error.flip_rate > self.max_flip_rate else []))

    def why_not_together(self, error: Error) -> str:
        return f"{error.flips}/{error.units or error.rows} {error.unit} disagree > {self.max_flip_rate:.1%}"


@dataclass(frozen=True)
class Trial:
    group: str
    nodes: tuple[str, ...]
    error: Error

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "nodes": list(self.nodes), **self.error.as_dict()}


class Probe:
    """Quantizes chosen nodes of one float graph and scores the result against the float outputs, by `task`'s
    agreement when given (`feeds` then are rows the task encoded).

    With a `quantizer_id` (the quantizer and every option that changes its output), trials are also kept on
    disk (TrialStore), so a second export of the same graph on the same rows (the recipe search exports one
    model many times) reads them instead of quantizing and running the graph again.
    """

    def __init__(self, model, feeds, quantize: Quantizer, *, quantizer_id: str | None = None, task: Any = None):
        self.model, self.feeds, self.quantize, self.task = model, feeds, quantize, task
        self.classifier = is_classifier(model)
        self.reference = run_model(model, feeds)
        self._cache: dict[tuple[str, ...], Error] = {}
        self.store = TrialStore.open(model, feeds, quantizer_id, task) if quantizer_id else None

    def error_of(self, quantized) -> Error:
        candidate = run_model(quantized, self.feeds)
        return output_error(self.reference, candidate, classifier=self.classifier, task=self.task, feeds=self.feeds)

    def trial(self, group: str, nodes: list[str]) -> Trial:
        key = tuple(nodes)
        if key not in self._cache:
            stored = self.store.get(key) if self.store else None
            self._cache[key] = stored or self.error_of(self.quantize(self.model, list(nodes)))
            if self.store and stored is None:
                self.store.put(key, self._cache[key])
        return Trial(group, key, self._cache[key])


class TrialStore:
    """Sensitivity trials of one (graph, calibration rows, quantizer, task agreement, onnxruntime version), on
    disk as JSON under the cache folder, named by the digest of all five: any change to one of them is another
    file. A trial records measurements, not a verdict: the thresholds judge them when read."""

    FORMAT = "trials v2: flips by the task's agreement, with units"

    def __init__(self, path: Path):
        self.path = path
        self.trials: dict[str, dict] = {}
        if path.is_file():
            try:
                self.trials = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("sensitivity cache %s is unreadable: measuring again", path)

    @classmethod
    def open(cls, model, feeds, quantizer_id: str, task: Any = None) -> TrialStore:
        import onnxruntime

        digest = hashlib.sha256()
        for part in (
            model.SerializeToString(deterministic=True),
            quantizer_id.encode(),
            (task.agreement_id() if task is not None else "argmax flips").encode(),
            cls.FORMAT.encode(),
            onnxruntime.__version__.encode(),
        ):
            digest.update(hashlib.sha256(part).digest())
        for name in sorted(feeds):
            digest.update(name.encode() + np.ascontiguousarray(feeds[name]).tobytes())
        return cls(cache_dir() / "sensitivity" / f"{digest.hexdigest()[:32]}.json")

    def get(self, nodes: tuple[str, ...]) -> Error | None:
        entry = self.trials.get("\n".join(nodes))
        return Error(**entry) if entry else None

    def put(self, nodes: tuple[str, ...], error: Error) -> None:
        """Record one trial and rewrite the file atomically (a killed export leaves the trials it finished)."""
        self.trials["\n".join(nodes)] = error.as_dict()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            scratch = self.path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text(json.dumps(self.trials), encoding="utf-8")
            os.replace(scratch, self.path)
        except OSError as exc:  # a cache that cannot be written costs time, never the export
            log.warning("cannot write the sensitivity cache %s (%s)", self.path, exc)


def op_class(name: str, op_type: str) -> str:
    """A node's role regardless of its layer: its name with the layer number starred, else its op type."""
    return LAYER.sub("layer.*", name) if LAYER.search(name) else op_type


def class_groups(nodes) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for node in nodes:
        groups[f"op class {op_class(node.name, node.op_type)}"].append(node.name)
    return dict(groups)


def layer_groups(model, nodes) -> dict[str, list[str]]:
    """Nodes by encoder layer, read from their names; a fused node (`Attention_3`) takes its consumer's layer.

    Nodes whose layer cannot be told (embeddings, a third-party graph's names) are in no layer group.
    """
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node.name)
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for node in nodes:
        names = [node.name] + [c for output in node.output for c in consumers[output]]
        layer = next((m.group(0) for m in map(LAYER.search, names) if m), None)
        if layer is not None:
            groups[layer].append(node.name)
    return dict(groups)


@dataclass
class Sensitivity:
    trials: list[Trial]
    kept_float: dict[str, Trial]
    thresholds: Thresholds
    # Nodes kept float because the others, quantized together with them, broke the thresholds: each with its
    # own trial and the trial of all of them together that it was taken out of.
    kept_together: dict[str, tuple[Trial, Trial]] = field(default_factory=dict)

    def notes(self) -> list[str]:
        alone = [t for t in self.trials if t.group != WHOLE]  # groups and nodes, each quantized alone
        failed = [t for t in alone if not self.thresholds.accept(t.error)]
        notes = (
            [
                f"sensitivity: {len(self.trials)} trials on {self.trials[0].error.rows} calibration rows, "
                f"{len(failed)} broke the thresholds alone (SQNR >= {self.thresholds.min_sqnr_db:g} dB, "
                f"{self.trials[0].error.unit} that disagree <= {self.thresholds.max_flip_rate:.1%})"
            ]
            if self.trials
            else []
        )
        notes += [
            f"kept float: {name} (quantized alone: {self.thresholds.why_not(t.error)}; {t.error.describe()})"
            for name, t in self.kept_float.items()
        ]
        notes += [
            f"kept float: {name} (quantized together with the others: {self.thresholds.why_not_together(whole.error)}; "
            f"the worst of them alone: {own.error.describe()})"
            for name, (own, whole) in self.kept_together.items()
        ]
        if alone and not self.kept_float and not self.kept_together:
            worst = min(alone, key=lambda t: t.error.sqnr_db)
            notes.append(f"kept float: none; least robust: {worst.group} ({worst.error.describe()})")
        return notes

    def stats(self) -> dict[str, Any]:
        return {
            "trials": [t.as_dict() for t in self.trials],
            "kept_float": {
                **{name: t.as_dict() for name, t in self.kept_float.items()},
                **{name: own.as_dict() for name, (own, _) in self.kept_together.items()},
            },
        }

    def add(self, trial: Trial) -> Trial:
        """Record a trial once (a node may be tried alone both as a suspect and while settling the whole)."""
        if trial.nodes not in {t.nodes for t in self.trials}:
            self.trials.append(trial)
        return trial


def find_sensitive(probe: Probe, nodes, thresholds: Thresholds) -> Sensitivity:
    """Group trials, then single-node trials inside failing groups; nodes failing alone stay float."""
    groups = {**class_groups(nodes), **{f"layer {k}": v for k, v in layer_groups(probe.model, nodes).items()}}
    trials = [probe.trial(name, members) for name, members in groups.items()]
    suspects = {name for t in trials if not thresholds.accept(t.error) for name in t.nodes}
    singles = [probe.trial(node.name, [node.name]) for node in nodes if node.name in suspects]
    trials += [t for t in singles if t.nodes not in {g.nodes for g in trials}]
    kept = {t.group: t for t in singles if not thresholds.accept(t.error)}
    return Sensitivity(trials, kept, thresholds)


def settle_together(probe: Probe, chosen: list[str], sensitivity: Sensitivity) -> Trial:
    """Trial of the `chosen` nodes quantized together; while more units disagree than the thresholds allow
    (`Thresholds.accept_together`), the chosen node whose own trial is worst (most units disagree, then lowest
    SQNR) leaves `chosen` and stays float. Returns the trial that passed (with nothing chosen, the float graph
    itself passes)."""
    thresholds = sensitivity.thresholds
    together = sensitivity.add(probe.trial(WHOLE, chosen))
    while chosen and not thresholds.accept_together(together.error):
        alone = [sensitivity.add(probe.trial(name, [name])) for name in chosen]
        worst = max(alone, key=lambda t: (t.error.flip_rate, -t.error.sqnr_db))
        sensitivity.kept_together[worst.group] = (worst, together)
        chosen.remove(worst.group)
        together = sensitivity.add(probe.trial(WHOLE, chosen))
    return together


@dataclass
class Outcome:
    """A quantized graph with what was quantized, what was kept float and why, and its measured error."""

    model: Any
    quantized: list[str]
    sensitivity: Sensitivity | None
    error: Error | None

    def notes(self, before, candidates) -> list[str]:
        kinds = collections.Counter(n.op_type for n in candidates if n.name in set(self.quantized))
        notes = [
            f"quantized {len(self.quantized)} of {len(candidates)} weighted nodes "
            f"({', '.join(f'{count} {op}' for op, count in sorted(kinds.items())) or 'none'})"
        ]
        notes += (
            self.sensitivity.notes()
            if self.sensitivity
            else ["no calibration data: sensitivity analysis skipped, every supported node quantized"]
        )
        notes.append(
            f"size {size_mb(before):.1f} MB -> {size_mb(self.model):.1f} MB "
            f"({size_mb(self.model) / size_mb(before):.2f}x)"
        )
        if self.error is not None:
            notes.append(f"whole graph vs float on {self.error.rows} calibration rows: {self.error.describe()}")
        return notes

    def stats(self, before) -> dict[str, Any]:
        return {
            "quantized": self.quantized,
            "size_mb_before": round(size_mb(before), 3),
            "size_mb_after": round(size_mb(self.model), 3),
            "ops_after": op_counts(self.model),
            "error": self.error.as_dict() if self.error else None,
            **(self.sensitivity.stats() if self.sensitivity else {}),
        }


def quantize_except_sensitive(
    model,
    nodes,
    quantize: Quantizer,
    feeds,
    thresholds: Thresholds,
    *,
    quantizer_id: str | None = None,
    task: Any = None,
) -> Outcome:
    """Without calibration feeds every node is quantized; with them, nodes that break the output, alone or
    together, stay float. `quantizer_id`, `task`: see Probe (trials kept on disk, judged by the task)."""
    if feeds is None:
        names = [n.name for n in nodes]
        return Outcome(quantize(model, names), names, None, None)
    probe = Probe(model, feeds, quantize, quantizer_id=quantizer_id, task=task)
    sensitivity = find_sensitive(probe, nodes, thresholds)
    chosen = [n.name for n in nodes if n.name not in sensitivity.kept_float]
    together = settle_together(probe, chosen, sensitivity)
    return Outcome(quantize(model, chosen), chosen, sensitivity, together.error)
