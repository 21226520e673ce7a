"""MobileBERT: 24 narrow layers with bottlenecks (the body is `hidden_size` wide, attention and FFN run at
`true_hidden_size`), `num_feedforward_networks` stacked FFNs per layer, and NoNorm (x * weight + bias) in
place of LayerNorm.

Heads are pruned exactly: query and key come from the shared bottleneck, value from the layer input, and all
three feed the attention output's columns head by head, as in BERT.
"""

from __future__ import annotations

from types import MappingProxyType

from edgecompress.architectures import Architecture, register_architecture

_STACKED_FFNS = (
    "each layer stacks num_feedforward_networks FFNs that share config.json's intermediate_size, and the "
    "pruner slices only the last one: the checkpoint it wrote would not match its config"
)


@register_architecture
class MobileBert(Architecture):
    model_type = "mobilebert"
    family = "MobileBERT"
    class_prefix = "MobileBert"
    config_class = "MobileBertConfig"
    base = "mobilebert"
    # Measured (onnxruntime 1.31, bert patterns, tiny config): 0 of 4 attention blocks fuse, as query and key
    # read the bottleneck, value the layer input, and NoNorm is no LayerNorm for the pattern to start at.
    # Our own rule fuses every block into MultiHeadAttention (graph/attention_to_mha.py).
    own_attention_fusion = True
    not_applicable = MappingProxyType({"prune_ffn": _STACKED_FFNS, "prune_schedule": _STACKED_FFNS})
