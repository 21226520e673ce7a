"""The report: every figure carries how it was obtained (measured, estimated or static) and by what method."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEASURED, ESTIMATED, STATIC = "measured", "estimated", "static"


@dataclass
class Figure:
    value: Any
    unit: str
    how: str  # MEASURED, ESTIMATED or STATIC
    method: str
    # An estimate's error band: {"median_abs_error", "worst_abs_error", "checks", "how"} (see measure/device_estimate)
    band: dict[str, Any] | None = None

    def short(self) -> str:
        value = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        return f"{value} {self.unit}".strip() + f" ({self.how})"


@dataclass
class Verdict:
    budget: str
    limit: float
    value: float
    unit: str
    how: str
    passed: bool
    must_equal: bool = False  # a requirement (e.g. the fixed seq_len) rather than an upper limit

    def line(self, device: str, artifact: str) -> str:
        if self.must_equal:
            relation = "==" if self.passed else "!="
        else:
            relation = "<=" if self.passed else ">"
        status = "ok" if self.passed else "EXCEEDED"
        return (
            f"{status}: {self.budget} on {device} for {artifact}: {self.value:.4g} {self.unit} "
            f"{relation} {self.limit:.4g} {self.unit} ({self.how})"
        )


@dataclass
class ArtifactReport:
    kind: str
    file: str
    runtime: str
    size: Figure
    op_histogram: dict[str, int]
    float_ops: list[str]
    audit_method: str  # where the histogram and float-op list come from
    parity: dict[str, Any]
    accuracy: Figure | None
    agreement: Figure | None
    host_latency: dict[str, Any] | None
    device_latency: Figure
    memory: Figure
    verdicts: list[Verdict] = field(default_factory=list)
    delegation: dict[str, Any] | None = None  # LiteRT: nodes the XNNPACK delegate takes vs leaves
    # Float-computing nodes between integer ops (see backends/ort_audit.py); None where not audited.
    float_ops_inside: list[str] | None = None
    # Host p50 of this artifact against its float twin's, for quantized artifacts (see pipeline).
    speed_vs_float: dict[str, Any] | None = None
    # Non-ONNX-Runtime artifacts: parity with the ONNX Runtime artifact of the same export.
    parity_vs_onnxruntime: dict[str, Any] | None = None
    # Length buckets: each text at its bucket against the same file at the longest length; latency per bucket
    # and over --data's length distribution (host, measured), and the device estimate over that distribution.
    bucket_parity: dict[str, Any] | None = None
    # A .tflite with one signature per bucket: each signature's nodes, delegation and own weight bytes, and the
    # weight bytes all signatures share (read from the file).
    signatures: dict[str, Any] | None = None
    shared_weight_bytes: int | None = None
    host_latency_buckets: dict[str, dict[str, float]] | None = None
    # Classifiers with labelled --data: recall per class and macro-F1 (report/per_class.py).
    classes: dict[str, Any] | None = None
    # Every figure the task scores against gold (tasks/: accuracy, micro/macro F1, entity F1, EM, Pearson...);
    # `accuracy` holds the headline one, which the accuracy budget judges.
    scores: dict[str, float] | None = None
    host_latency_real_text: dict[str, Any] | None = None
    device_latency_real_text: Figure | None = None
    # Measured on the device `--on` named (measure/device.py): percentiles, peak memory, where and how.
    device_measured: dict[str, Any] | None = None


@dataclass
class Report:
    tool: dict[str, str]
    model: dict[str, Any]
    device: dict[str, Any]
    recipe: dict[str, Any]
    data: dict[str, Any]
    stages: list[dict[str, Any]]
    passes: list[dict[str, Any]]
    reference: dict[str, Any]
    artifacts: list[ArtifactReport]
    notes: list[str] = field(default_factory=list)
    # Latency per op type: the device estimate, and onnxruntime's profiler on the host when measured
    # (measure/op_breakdown.py); drawn in report.html.
    op_latency: dict[str, Any] | None = None
    # Early exit (exits/ship.py): the policy, the segments, and per threshold accuracy and mean latency.
    early_exit: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(v.passed for a in self.artifacts for v in a.verdicts)

    def misses(self) -> list[str]:
        return [v.line(self.device["name"], a.file) for a in self.artifacts for v in a.verdicts if not v.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def write(self, folder: Path) -> None:
        (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (folder / "report.md").write_text(render_markdown(self))


def render_markdown(report: Report) -> str:
    device = report.device
    lines = [
        f"# edgecompress report: {report.model['name']} on {device['display_name']}",
        "",
        f"Verdict: **{'all budgets met' if report.passed else 'BUDGET EXCEEDED'}**",
        "",
    ]
    lines += [f"- {miss}" for miss in report.misses()]
    lines += [
        "",
        "How to read this: *measured* figures were taken by running the artifact (runtime, threads "
        "and host named); *estimated* figures come from the model named beside them; *static* figures "
        "are computed from the file or graph alone.",
        "",
    ]
    lines += _artifact_table(report)
    lines += _bucket_lines(report)
    lines += _audit_lines(report)
    if report.early_exit:
        from edgecompress.exits.ship import markdown

        lines += markdown(report.early_exit)
    lines += [
        "",
        "## Budgets",
        "",
        "| artifact | budget | value | limit | how | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for artifact in report.artifacts:
        for v in artifact.verdicts:
            lines.append(
                f"| {artifact.file} | {v.budget} | {v.value:.4g} {v.unit} | {v.limit:.4g} {v.unit} "
                f"| {v.how} | {'ok' if v.passed else '**exceeded**'} |"
            )
    lines += ["", "## Passes", "", "| stage | pass | fired | notes | seconds |", "|---|---|---|---|---|"]
    for p in report.passes:
        lines.append(
            f"| {p['stage']} | {p['name']} | {'yes' if p['fired'] else 'no'} | "
            f"{'; '.join(p['notes'])} | {p['seconds']:.2f} |"
        )
    lines += ["", "## Methods", ""]
    for artifact in report.artifacts[:1]:
        for label, figure in (("device latency", artifact.device_latency), ("memory", artifact.memory)):
            lines.append(f"- {label}: {figure.how}, {figure.method}")
        if artifact.host_latency:
            lines.append(f"- host latency: {artifact.host_latency['how']}, {artifact.host_latency['method']}")
    lines += _device_lines(report)
    lines.append(f"- parity and accuracy: {report.reference['method']}")
    if report.data.get("judged_on"):
        lines.append(f"- judged on: {report.data['judged_on']}")
    if report.data.get("tuned_on"):
        lines.append(f"- tuned on: {report.data['tuned_on']}")
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s['name']} | {s['seconds']:.2f} |" for s in report.stages]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _device_lines(report: Report) -> list[str]:
    """Each artifact's figures from the device --on named: where, how, and which figures were derived."""
    lines = []
    for artifact in report.artifacts:
        measured = artifact.device_measured
        if not measured:
            continue
        peak = f"{measured['peak_rss_mb']:.0f} MB" if measured.get("peak_rss_mb") is not None else "not reported"
        lines.append(
            f"- {artifact.file} on {measured['measured_on']}: p50 {measured['p50_ms']:.2f} ms, p90 "
            f"{measured['p90_ms']:.2f} ms, p99 {measured['p99_ms']:.2f} ms, peak memory {peak} "
            f"({measured['how']}, {measured['method']})"
        )
        lines += [f"  - {figure}: {why}" for figure, why in measured["derived"].items()]
    return lines


def _host_text(host: dict) -> str:
    """p50 / p90 with the runs' spread (p10-p90, IQR) and the load average the runner saw, when it reports them."""
    text = f"{host['p50_ms']:.2f} / {host['p90_ms']:.2f} ms ({host['threads']} thr"
    if host.get("iqr_ms") is not None:
        text += f", p10-p90 {host['p10_ms']:.2f}-{host['p90_ms']:.2f}, IQR {host['iqr_ms']:.2f}"
    if host.get("load_1m_before") is not None:
        text += f", load {host['load_1m_before']:.2f}/{host['cpu_count']} cores"
    text += ")"
    return text + (" **unreliable**" if host.get("unreliable") else "")


def _band(figure: Figure) -> str:
    """', error 12% median / 25% worst' from an estimate's error band, or nothing when it has none."""
    band = figure.band
    if not band or band.get("median_abs_error") is None:
        return ", error band unknown" if band else ""
    return f", error {100 * band['median_abs_error']:.0f}% median / {100 * band['worst_abs_error']:.0f}% worst"


def _artifact_table(report: Report) -> list[str]:
    lines = [
        "## Artifacts",
        "",
        "| file | size | parity max abs diff | agreement | score | host p50 / p90 | device latency | memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in report.artifacts:
        host = a.host_latency
        host_text = _host_text(host) if host else "not measured"
        lines.append(
            f"| {a.file} | {a.size.value / 1e6:.2f} MB | {a.parity['max_abs_diff']:.2e} | "
            f"{_pct(a.agreement)} | {_score(a.accuracy)} | {host_text} | "
            f"{a.device_latency.value:.1f} ms (est.{_band(a.device_latency)}) | "
            f"{a.memory.value:.1f} MB (est.) |"
        )
    lines += _class_lines(report)
    scored = [a for a in report.artifacts if a.scores]
    if scored:
        lines += ["", f"Scores against gold ({report.data.get('scores_method')}):", ""]
        lines += [f"- {a.file}: " + ", ".join(f"{k} {v:.4f}" for k, v in (a.scores or {}).items()) for a in scored]
    twins = [a for a in report.artifacts if a.speed_vs_float]
    if twins:
        lines += ["", f"Against the float twin ({(twins[0].speed_vs_float or {})['method']}):", ""]
        for a in twins:
            speed = a.speed_vs_float or {}
            verdict = "**slower than float**" if speed["slower"] else "ok"
            lines.append(
                f"- {a.file}: p50 {speed['p50_ms']:.2f} ms vs float {speed['float_p50_ms']:.2f} ms, "
                f"{speed['speedup']:.2f}x: {verdict}"
            )
    return lines


def _class_lines(report: Report) -> list[str]:
    """Recall per class and macro-F1 of the uncompressed model and each artifact (labelled --data only)."""
    reference = report.data.get("reference_classes")
    if not reference:
        return []
    names = list(reference["recall"])
    lines = [
        "",
        f"Per class ({reference['method']}):",
        "",
        "| model | macro-F1 | " + " | ".join(f"recall {n} ({reference['support'][n]})" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for label, figures in [("uncompressed", reference)] + [(a.file, a.classes) for a in report.artifacts if a.classes]:
        recalls = " | ".join(
            "-" if figures["recall"][n] is None else f"{100 * figures['recall'][n]:.1f}%" for n in names
        )
        f1 = figures["macro_f1"]
        lines.append(f"| {label} | {'-' if f1 is None else f'{f1:.3f}'} | {recalls} |")
    return lines


def _bucket_lines(report: Report) -> list[str]:
    """Length buckets: where --data's texts fall, and each artifact's latency the way the app runs it."""
    lengths = report.data.get("lengths")
    bucketed = [a for a in report.artifacts if a.bucket_parity]
    if not lengths or not bucketed:
        return []
    counts = ", ".join(f"{b}: {n}" for b, n in lengths["texts_per_bucket"].items())
    lines = [
        "",
        "## Length buckets",
        "",
        f"Texts of --data: p50 {lengths['tokens_p50']} tokens, p90 {lengths['tokens_p90']}, longest "
        f"{lengths['tokens_max']}; {lengths['truncated']} ({100 * lengths['truncated_share']:.1f}%) longer than "
        f"{lengths['longest_input']} and truncated. Texts per bucket: {counts}.",
        "",
        "| file | host p50 / p90, real text | host p50 per bucket | device est. p90, real text | bucket vs longest |",
        "|---|---|---|---|---|",
    ]
    for a in bucketed:
        real = a.host_latency_real_text
        real_text = f"{real['p50_ms']:.2f} / {real['p90_ms']:.2f} ms" if real else "not measured"
        per_bucket = ", ".join(f"{b}: {v['p50_ms']:.2f}" for b, v in (a.host_latency_buckets or {}).items()) or "-"
        parity = a.bucket_parity or {}
        agreement = parity["prediction_agreement"]
        exact = f"max abs diff {parity['max_abs_diff']:.1e}" + (
            f", same prediction {100 * agreement:.2f}%" if agreement is not None else ""
        )
        estimate = a.device_latency_real_text
        lines.append(
            f"| {a.file} | {real_text} | {per_bucket} | {estimate.value:.3g} ms (est.) | {exact} |"
            if estimate
            else f"| {a.file} | {real_text} | {per_bucket} | - | {exact} |"
        )
    return lines


def _audit_lines(report: Report) -> list[str]:
    lines = ["", "## Op audit", ""]
    for a in report.artifacts:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(a.op_histogram.items(), key=lambda kv: -kv[1]))
        lines.append(f"- **{a.file}** ({a.audit_method}): {ops}")
        lines.append(f"  - computing in float: {', '.join(a.float_ops) or 'none'}")
        if a.float_ops_inside is not None:
            inside = a.float_ops_inside
            lines.append(
                f"  - float nodes between integer ops: {len(inside)}"
                + (f" ({', '.join(inside[:8])}{', ...' if len(inside) > 8 else ''})" if inside else "")
            )
        if a.parity_vs_onnxruntime:
            c = a.parity_vs_onnxruntime
            agreement = c["prediction_agreement"]
            same = f", same prediction on {100 * agreement:.2f}% of texts" if agreement is not None else ""
            lines.append(f"  - against {c['against']}: max |diff| {c['max_abs_diff']:.2e}{same}")
        if a.delegation:
            d = a.delegation
            left = ", ".join(f"{op} {n}" for op, n in d["left_to_litert"].items()) or "none"
            lines.append(
                f"  - XNNPACK takes {d['delegated_nodes']} of {d['nodes']} nodes in {d['partitions']} "
                f"partition(s); left to LiteRT's kernels: {left}"
            )
    return lines


def _score(figure: Figure | None) -> str:
    """The headline score: accuracy as a percentage, any other measure by its name (entity_f1 0.8123)."""
    if figure is None or figure.unit == "fraction":
        return ("accuracy " if figure is not None else "") + _pct(figure)
    return f"{figure.unit} {figure.value:.4f}"


def _pct(figure: Figure | None) -> str:
    return "n/a" if figure is None else f"{100 * figure.value:.2f}%"
