"""Cross-layer parameter sharing (ALBERT): consecutive encoder layers run one set of weights.

Before -> After (6 layers, group 2):
    encoder.layer = [L0, L1, L2, L3, L4, L5]   ->   [L0, L0, L2, L2, L4, L4]   (3 distinct layer modules)
    config num_hidden_layers 6 (the depth is unchanged: each shared module runs twice)

Each group keeps its first layer's weights; with `epochs` > 0 the unshared model then teaches the shared one
on `--train-data` (`_recovery.recover`; the layer-by-layer hidden-state term still pairs depth with depth).
Torch's ONNX exporter writes a shared module's weights once; ONNX Runtime's attention fusion then packs Q, K
and V into a new tensor per node, which `share_initializers` folds back into one. The compute is unchanged:
sharing saves file size and download, not time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgecompress.architectures import architecture_of
from edgecompress.compress._pruning import check_positive, cloned, encoder_layers, parameter_count
from edgecompress.compress._recovery import RecoveringPass
from edgecompress.errors import InternalError, UserError
from edgecompress.passes import PassContext, PassResult, PassSkipped, register_pass


@register_pass
@dataclass(frozen=True)
class ShareLayers(RecoveringPass):
    name = "share_layers"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    changed, untrained = "shared", "the plain tie"
    # Pruning and factorising slice or replace each layer's Linears one layer at a time: they must see
    # every layer its own before the layers are tied.
    runs_after = ("prune_heads", "prune_ffn", "prune_schedule", "drop_layers", "low_rank")
    group: int = 2  # consecutive layers that share one set of weights

    def requires(self, bundle, ctx: PassContext) -> None:
        check_positive(self.name, "group", self.group)
        self.check_recovery(ctx)
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to share layers of")
        layers = encoder_layers(bundle.module)
        if len({id(layer) for layer in layers}) < len(layers):
            raise PassSkipped("the encoder's layers share their weights already")
        if self.group > len(layers):
            raise UserError(
                f"option 'group' of pass '{self.name}' = {self.group} is more than the model's {len(layers)} layers",
                expected=f"a group from 2 to {len(layers)}",
            )
        if self.group == 1:
            raise PassSkipped("group 1 shares nothing")

    def run(self, bundle, ctx: PassContext) -> PassResult:
        new = cloned(bundle)
        layers = encoder_layers(new.module)
        shared = [layers[(i // self.group) * self.group] for i in range(len(layers))]
        architecture_of(new.module).set_layers(new.module.hf_model, torch.nn.ModuleList(shared))
        record, recovery_note = self.recover(new, bundle, ctx)
        distinct = len({id(layer) for layer in shared})
        notes = [
            f"{len(layers)} layers run {distinct} distinct weight sets (groups of {self.group}, "
            f"each the group's first layer)",
            recovery_note,
        ]
        stats = {
            "distinct_layers": distinct,
            "depth": len(layers),
            "training_seconds": record["seconds"],
            "recovery": record,
            "parameters_before": parameter_count(bundle.module),
            "parameters_after": parameter_count(new.module),  # counts each shared tensor once
        }
        return PassResult(new, notes, stats, lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        layers = encoder_layers(result.model.module)
        if len({id(layer) for layer in layers}) != result.stats["distinct_layers"]:
            raise InternalError(f"{self.name}: the layers are not tied as recorded")
