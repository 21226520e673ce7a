"""Structured surgery on BERT encoder layers, shared by the pruning passes (registers no pass).

A prunable *unit* is a group of `width` consecutive output rows of producer Linear layers that feed
the same `width` input columns of one consumer Linear:

    attention head h:  rows of query/key/value [h*d:(h+1)*d]  ->  columns of attention.output.dense
    FFN neuron j:      row j of intermediate.dense            ->  column j of output.dense

Removing a unit slices those rows and columns. That is exact: the model computes what the unpruned
model computes with that unit's slice of the consumer's input multiplied by 0 (`unit_masks`), because
heads attend independently and an FFN neuron feeds nothing but its column. The same mask, left at 1
with a gradient, gives the importance score I = E|dL/dmask| (Michel et al. 2019); for an FFN neuron
that gradient is sum over tokens of activation x gradient, the first-order Taylor score.

Every layer keeps the same number of units: ONNX Runtime's `Attention` fusion takes one head count
for the whole graph, read from `config.json`'s num_attention_heads.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from edgecompress.architectures import Architecture, architecture_for, architecture_of
from edgecompress.compress._taskdata import TaskData, task_data, task_loss, training_seq_len
from edgecompress.errors import InternalError, UserError
from edgecompress.intake.model import CLASSIFICATION
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped


class Units:
    """One kind of prunable unit; subclasses name the Linear layers it spans in one encoder layer, found
    through the model family's architecture."""

    kind = ""
    config_key = ""
    gradient_score = ""  # what the gradient importance of this kind of unit is, for the notes

    def producers(self, layer) -> list[torch.nn.Linear]:
        raise NotImplementedError

    def consumer(self, layer) -> torch.nn.Linear:
        raise NotImplementedError

    def width(self, layer) -> int:
        return 1

    def value_producer(self, layer) -> torch.nn.Linear:
        """The producer on the path whose output the consumer adds up (value for heads)."""
        return self.producers(layer)[-1]

    def count(self, layer) -> int:
        return self.consumer(layer).in_features // self.width(layer)

    def resized(self, layer, count: int) -> None:
        """Update any bookkeeping the layer keeps about its unit count."""


class AttentionHeads(Units):
    kind, config_key = "head", "num_attention_heads"
    gradient_score = "E|dL/d(head mask)| (Michel et al. 2019)"

    def __init__(self, architecture: Architecture | None = None):
        self.architecture = architecture or architecture_for("bert")
        self.config_key = self.architecture.heads_key

    def producers(self, layer):
        parts = self.architecture.attention(layer)
        return [parts.query, parts.key, parts.value]

    def consumer(self, layer):
        return self.architecture.attention(layer).output

    def width(self, layer) -> int:
        return self.architecture.attention(layer).head_size

    def resized(self, layer, count: int) -> None:
        self.architecture.set_head_count(layer, count)


class FfnNeurons(Units):
    kind, config_key = "neuron", "intermediate_size"
    gradient_score = "|activation x gradient| (first-order Taylor)"

    def __init__(self, architecture: Architecture | None = None):
        self.architecture = architecture or architecture_for("bert")
        self.config_key = self.architecture.ffn_key

    def producers(self, layer):
        return [self.architecture.ffn(layer)[0]]

    def consumer(self, layer):
        return self.architecture.ffn(layer)[1]


def heads(module) -> AttentionHeads:
    """The attention heads of this model's family."""
    return AttentionHeads(architecture_of(module))


def neurons(module) -> FfnNeurons:
    """The FFN neurons of this model's family."""
    return FfnNeurons(architecture_of(module))


def units_of(module, kind: str) -> Units:
    """The prunable units of `kind` ("head" or "neuron") of this model's family."""
    return {"head": heads, "neuron": neurons}[kind](module)


def encoder_layers(module) -> torch.nn.ModuleList:
    """The encoder layers of a classifier or a bare encoder, through its family's architecture."""
    return architecture_of(module).layers(module.hf_model)


def check_ratio(pass_name: str, option: str, ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise UserError(
            f"option '{option}' of pass '{pass_name}' must be in [0, 1), got {ratio!r}",
            hint="it is the fraction of units removed from each layer",
        )


def units_to_remove(pass_name: str, option: str, ratio: float, total: int, kind: str) -> int:
    """How many of a layer's `total` units `ratio` removes; removing all of them is a user error."""
    count = round(ratio * total)
    if count >= total:
        raise UserError(
            f"option '{option}' of pass '{pass_name}' = {ratio} would remove all {total} {kind}s of every layer",
            expected=f"a ratio below {(total - 0.5) / total:.3f}",
        )
    return count


@contextlib.contextmanager
def unit_masks(module, units: Units, masks: list[torch.Tensor]) -> Iterator[None]:
    """Multiply each layer's units by `masks[layer]` (one value per unit) at the consumer's input."""
    handles = []
    for layer, mask in zip(encoder_layers(module), masks):
        width = units.width(layer)

        def hook(module, args, mask=mask, width=width):
            return (args[0] * mask.repeat_interleave(width),)

        handles.append(units.consumer(layer).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gradient_importance(module, kinds: list[Units], data: TaskData, batch_size: int = 32) -> list[torch.Tensor]:
    """E|dL/dmask| per unit for each kind ([layers, units] each), normalised to unit L2 norm per layer.

    Michel et al. normalise per layer to compare heads across layers; here every layer loses the same
    number of units, so the normalisation leaves the choice unchanged and only makes scores comparable.
    Weights are frozen meanwhile: only the masks need gradients.
    """
    layers = encoder_layers(module)
    masks = [[torch.ones(units.count(layer), requires_grad=True) for layer in layers] for units in kinds]
    scores = [torch.zeros(len(layers), units.count(layers[0])) for units in kinds]
    frozen = [p for p in module.parameters() if p.requires_grad]
    module.eval()
    with contextlib.ExitStack() as stack, torch.enable_grad():
        for units, kind_masks in zip(kinds, masks):
            stack.enter_context(unit_masks(module, units, kind_masks))
        for p in frozen:
            p.requires_grad_(False)
        try:
            for batch in data.batches(batch_size):
                task_loss(module, batch).backward()
                for kind_scores, kind_masks in zip(scores, masks):
                    for i, mask in enumerate(kind_masks):
                        kind_scores[i] += mask.grad.abs()
                        mask.grad = None
        finally:
            for p in frozen:
                p.requires_grad_(True)
    return [s / s.norm(dim=1, keepdim=True).clamp(min=1e-12) for s in scores]


def magnitude_importance(module, units: Units) -> torch.Tensor:
    """Without labelled data: ||value rows of the unit|| x ||consumer columns of the unit|| per unit.

    The product bounds how much the unit can add to the residual stream per unit of input: attention
    mixes values with weights that sum to 1, and GELU grows no faster than its input.
    """
    rows = []
    for layer in encoder_layers(module):
        width, count = units.width(layer), units.count(layer)
        value = units.value_producer(layer).weight.detach().reshape(count, width, -1)
        out = units.consumer(layer).weight.detach().reshape(-1, count, width)
        rows.append(value.flatten(1).norm(dim=1) * out.transpose(0, 1).flatten(1).norm(dim=1))
    return torch.stack(rows)


@dataclass
class Pruned:
    """Which original units of each layer are still alive; removes the lowest-scoring ones in place."""

    units: Units
    total: int  # units per layer before pruning
    alive: list[list[int]]

    @classmethod
    def start(cls, module, units: Units) -> Pruned:
        counts = [units.count(layer) for layer in encoder_layers(module)]
        return cls(units, counts[0], [list(range(count)) for count in counts])

    @property
    def removed(self) -> int:
        return self.total - len(self.alive[0])

    def removed_ids(self) -> list[list[int]]:
        return [sorted(set(range(self.total)) - set(ids)) for ids in self.alive]

    def remove(self, module, scores: torch.Tensor, count: int) -> None:
        """Remove the `count` lowest-scoring units of every layer."""
        if count <= 0:
            return
        for i, layer in enumerate(encoder_layers(module)):
            keep = torch.sort(torch.topk(scores[i], scores.shape[1] - count, sorted=False).indices).values
            keep_units(layer, self.units, keep)
            self.alive[i] = [self.alive[i][j] for j in keep.tolist()]


def keep_units(layer, units: Units, keep: torch.Tensor) -> None:
    """Slice the producers' rows and the consumer's columns down to the units in `keep`."""
    width = units.width(layer)
    columns = (keep[:, None] * width + torch.arange(width)).flatten()
    for linear in units.producers(layer):
        _slice(linear, columns, dim=0)
    _slice(units.consumer(layer), columns, dim=1)
    units.resized(layer, len(keep))


def _slice(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.detach().index_select(dim, index).clone())
    if dim == 0:
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.detach()[index].clone())
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def cloned(bundle):
    """A bundle with its own copy of the module and config, so a pass never changes its input."""
    return dataclasses.replace(bundle, module=copy.deepcopy(bundle.module), config=dict(bundle.config))


def set_config(bundle, **values) -> None:
    """Record an architecture change in both the shipped config dict and the module's own config."""
    bundle.config.update(values)
    for key, value in values.items():
        setattr(bundle.module.hf_model.config, key, value)


def record_attention_width(bundle) -> None:
    """Keep the bundle describing the model it carries: the graph stage's context is built from it once,
    after the compress stage.

    ONNX Runtime's fuser takes `hidden_size` as "the hidden dimension after pruning", the width of Q/K/V
    (heads x head size): for an unpruned BERT that is hidden_size; with heads pruned it is smaller, and
    with the model's hidden_size the fuser finds no head count and fuses nothing (measured on the tiny
    BERT, onnxruntime 1.31).
    """
    bundle.attention_width = architecture_of(bundle.module).attention_width(encoder_layers(bundle.module)[0])


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def importance_data(bundle, ctx, limit: int) -> tuple[TaskData | None, str]:
    """Labelled texts to score units by gradient, or None and why weight magnitude is used instead."""
    if bundle.kind != CLASSIFICATION:
        return None, "a sentence encoder has no task loss to take gradients of"
    if ctx.train_data is None or ctx.train_data.labels is None:
        return None, "no labelled --train-data, so no task loss to take gradients of"
    return task_data(bundle, ctx.train_data, seq_len=training_seq_len(bundle, ctx), limit=limit), ""


def importance_method(units: Units, data: TaskData | None, why_not: str) -> str:
    if data is None:
        return f"weight magnitude ({why_not})"
    return f"{units.gradient_score} on {len(data)} labelled training texts"


def importance(module, kinds: list[Units], data: TaskData | None) -> list[torch.Tensor]:
    if data is None:
        return [magnitude_importance(module, units) for units in kinds]
    return gradient_importance(module, kinds, data)


@dataclass(frozen=True)
class UnitPruningPass(Pass):
    """Shared body of `prune_heads` and `prune_ffn`: the same fraction of units leaves every layer.

    With `steps` > 1 the units go in equal rounds, importance re-measured on the pruned model each
    round (Michel et al. prune iteratively: a unit's importance changes once its neighbours are gone).
    """

    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    unit_kind: ClassVar[str]  # "head" or "neuron": which Units of the model's family this pass removes
    ratio: float = 0.5
    steps: int = 1
    importance_texts: int = 1024  # labelled texts the gradient importance is averaged over

    def requires(self, bundle, ctx: PassContext) -> None:
        check_ratio(self.name, "ratio", self.ratio)
        check_positive(self.name, "steps", self.steps)
        check_positive(self.name, "importance_texts", self.importance_texts)
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to prune")
        units = units_of(bundle.module, self.unit_kind)
        total = units.count(encoder_layers(bundle.module)[0])
        if units_to_remove(self.name, "ratio", self.ratio, total, units.kind) == 0:
            raise PassSkipped(f"ratio {self.ratio} of {total} {units.kind}s per layer removes none")

    def run(self, bundle, ctx: PassContext) -> PassResult:
        new = cloned(bundle)
        units = units_of(new.module, self.unit_kind)
        pruned = Pruned.start(new.module, units)
        count = units_to_remove(self.name, "ratio", self.ratio, pruned.total, units.kind)
        data, why_not = importance_data(bundle, ctx, self.importance_texts)
        method = importance_method(units, data, why_not)
        for step in range(1, self.steps + 1):
            (scores,) = importance(new.module, [units], data)
            pruned.remove(new.module, scores, round(count * step / self.steps) - pruned.removed)
        set_config(new, **{units.config_key: pruned.total - count})
        record_attention_width(new)
        notes = [
            f"removed {count} of {pruned.total} {units.kind}s in each of {len(pruned.alive)} layers "
            f"in {self.steps} step(s); importance: {method}"
        ]
        stats = {
            "importance": method,
            f"{units.kind}s_before": pruned.total,
            f"{units.kind}s_after": pruned.total - count,
            "removed": pruned.removed_ids(),
            "parameters_before": parameter_count(bundle.module),
            "parameters_after": parameter_count(new.module),
        }
        return PassResult(new, notes, stats, lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        units = units_of(result.model.module, self.unit_kind)
        expected = result.model.config[units.config_key]
        found = {units.count(layer) for layer in encoder_layers(result.model.module)}
        if found != {expected}:
            raise InternalError(f"{self.name} left {sorted(found)} {units.kind}s per layer; config says {expected}")


def check_positive(pass_name: str, option: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"option '{option}' of pass '{pass_name}' must be positive, got {value!r}")
