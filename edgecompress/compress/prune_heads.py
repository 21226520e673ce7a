"""Remove the least important attention heads of every encoder layer, physically.

Before -> After (per layer, 12 heads of size 32 at ratio 0.5):
    query/key/value Linear(384 -> 384), output.dense Linear(384 -> 384)
 -> query/key/value Linear(384 -> 192), output.dense Linear(192 -> 384); config num_attention_heads 6

Heads are ranked per layer by the gradient of a per-head mask on labelled `--train-data` (Michel et al.
2019, "Are Sixteen Heads Really Better than One?"), or by weight magnitude without it (see notes).
Every layer loses the same number of heads and the head size stays: ONNX Runtime's `Attention` fusion
takes one head count for the whole graph, the one in config.json. (transformers 5 dropped its own
`prune_heads`, which also left layers with different head counts.)
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.compress._pruning import UnitPruningPass
from edgecompress.passes import register_pass


@register_pass
@dataclass(frozen=True)
class PruneHeads(UnitPruningPass):
    name = "prune_heads"
    stage = "compress"
    unit_kind = "head"
