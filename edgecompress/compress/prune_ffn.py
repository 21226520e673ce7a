"""Remove the least important neurons of every feed-forward block, physically.

Before -> After (per layer, 1536 neurons at ratio 0.5):
    intermediate.dense Linear(384 -> 1536), output.dense Linear(1536 -> 384)
 -> intermediate.dense Linear(384 -> 768),  output.dense Linear(768 -> 384); config intermediate_size 768

Neurons are ranked per layer by |activation x gradient| summed over the tokens of labelled
`--train-data` (the gradient of a per-neuron mask), or by weight magnitude without it (see notes).
Every layer keeps the same width because config.json has one intermediate_size.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.compress._pruning import UnitPruningPass
from edgecompress.passes import register_pass


@register_pass
@dataclass(frozen=True)
class PruneFfn(UnitPruningPass):
    name = "prune_ffn"
    stage = "compress"
    unit_kind = "neuron"
