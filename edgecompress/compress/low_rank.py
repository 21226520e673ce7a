"""Replace the FFN (and optionally attention-output) Linears of every layer by their truncated SVD.

Before -> After (per layer, MiniLM, rank 96):
    intermediate.dense Linear(384 -> 1536)   ->  LowRankLinear: Linear(384 -> 96, no bias), Linear(96 -> 1536)
    output.dense       Linear(1536 -> 384)   ->  LowRankLinear: Linear(1536 -> 96, no bias), Linear(96 -> 384)
    parameters per matrix 589,824 -> 184,320

The rank is given (`rank`) or chosen per matrix to keep a fraction of the squared singular values
(`energy`), then rounded up to a multiple of `multiple_of`. A matrix whose factors would not be smaller
than itself stays dense (said in the notes). With `epochs` > 0 the unfactorised model then teaches the
factorised one on `--train-data` (`_recovery.recover`), since truncation alone loses accuracy fast.

Q, K and V are not factorised: ONNX Runtime's attention fusion needs them as one MatMul each, and the
fused Attention is worth more than their share of the weights. At full rank the pass is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecompress.architectures import Architecture, architecture_of
from edgecompress.compress._factorised import LowRankLinear, energy_kept, rank_for_energy, round_up
from edgecompress.compress._pruning import check_positive, cloned, encoder_layers, parameter_count
from edgecompress.compress._recovery import RecoveringPass
from edgecompress.errors import InternalError, UserError
from edgecompress.passes import PassContext, PassResult, PassSkipped, register_pass

TARGETS = {
    "ffn": ("ffn_in", "ffn_out"),
    "ffn_in": ("ffn_in",),
    "ffn_out": ("ffn_out",),
    "ffn+attention_output": ("ffn_in", "ffn_out", "attention_output"),
}


@register_pass
@dataclass(frozen=True)
class LowRank(RecoveringPass):
    name = "low_rank"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    changed, untrained = "factorised", "the plain truncation"
    # The passes that slice these Linears by rows and columns: they must see them dense.
    runs_after = ("trim_vocab", "prune_heads", "prune_ffn", "prune_schedule", "drop_layers")
    rank: int = 0  # the rank of every factorised matrix (0: chosen by `energy`)
    energy: float = 0.0  # fraction of the squared singular values each matrix keeps (used when rank is 0)
    targets: str = "ffn"  # which Linears of each layer: see TARGETS
    multiple_of: int = 8  # ranks are rounded up to a multiple of this

    def requires(self, bundle, ctx: PassContext) -> None:
        self._check_options()
        self.check_recovery(ctx)
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to factorise")
        architecture, layer = architecture_of(bundle.module), encoder_layers(bundle.module)[0]
        smallest = min(min(architecture.linear(layer, role).weight.shape) for role in TARGETS[self.targets])
        if self.rank > smallest:
            raise UserError(
                f"option 'rank' of pass '{self.name}' = {self.rank} is above the matrices' own rank",
                expected=f"a rank from 1 to {smallest}",
                hint=f"below {smallest // 2} the factors are smaller than the dense matrix",
            )

    def _check_options(self) -> None:
        if self.targets not in TARGETS:
            known = ", ".join(TARGETS)
            raise UserError(f"unknown targets '{self.targets}' for pass '{self.name}'", hint=f"Known: {known}")
        if (self.rank > 0) == (0 < self.energy):
            raise UserError(
                f"pass '{self.name}' needs exactly one of 'rank' and 'energy', "
                f"got rank {self.rank}, energy {self.energy}",
                hint="for example rank = 96, or energy = 0.9",
            )
        if self.rank < 0 or not 0 <= self.energy < 1:
            raise UserError(
                f"options of pass '{self.name}' out of range: rank {self.rank}, energy {self.energy}",
                expected="rank a positive integer, or energy in (0, 1)",
            )
        check_positive(self.name, "multiple_of", self.multiple_of)

    def run(self, bundle, ctx: PassContext) -> PassResult:
        new = cloned(bundle)
        architecture = architecture_of(new.module)
        chosen = [self._factorise(architecture, layer) for layer in encoder_layers(new.module)]
        record, recovery_note = self.recover(new, bundle, ctx)
        factorised = [r for layer in chosen for r in layer if r["rank"] is not None]
        kept_dense = [r for layer in chosen for r in layer if r["rank"] is None]
        if not factorised:
            raise PassSkipped(f"no matrix gets smaller at {self._rule()}: every one stays dense")
        ranks = sorted({r["rank"] for r in factorised})
        notes = [
            f"{len(factorised)} Linears ({self.targets}) replaced by rank {_span(ranks)} factors ({self._rule()}); "
            f"energy kept {min(r['energy'] for r in factorised):.3f}-{max(r['energy'] for r in factorised):.3f}",
            recovery_note,
        ]
        if kept_dense:
            notes.append(f"{len(kept_dense)} Linears stay dense: their factors would not be smaller")
        stats = {
            "layers": chosen,
            "training_seconds": record["seconds"],
            "recovery": record,
            "parameters_before": parameter_count(bundle.module),
            "parameters_after": parameter_count(new.module),
        }
        return PassResult(new, notes, stats, lossy=True)

    def _rule(self) -> str:
        return f"rank {self.rank}" if self.rank else f"energy {self.energy}"

    def _factorise(self, architecture: Architecture, layer) -> list[dict]:
        chosen: list[dict[str, Any]] = []
        for role in TARGETS[self.targets]:
            linear = architecture.linear(layer, role)
            out_features, in_features = linear.weight.shape
            rank = self.rank or rank_for_energy(linear.weight, self.energy)
            rank = round_up(rank, self.multiple_of, min(out_features, in_features))
            if rank * (in_features + out_features) >= in_features * out_features:
                chosen.append({"role": role, "rank": None, "shape": [out_features, in_features]})
                continue
            energy = energy_kept(linear.weight, rank)
            architecture.set_linear(layer, role, LowRankLinear(linear, rank))
            shape = [out_features, in_features]
            chosen.append({"role": role, "rank": rank, "energy": round(energy, 4), "shape": shape})
        return chosen

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        architecture = architecture_of(result.model.module)
        for layer, chosen in zip(encoder_layers(result.model.module), result.stats["layers"]):
            for record in chosen:
                factorised = isinstance(architecture.linear(layer, record["role"]), LowRankLinear)
                if factorised != (record["rank"] is not None):
                    raise InternalError(f"{self.name}: {record['role']} is not what the pass recorded for it")


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
