"""MPNet: BERT's layer layout under other names (attention.attn.q/k/v/o), a T5-style relative position bias
shared by every layer and added to the attention scores, and no token types.
"""

from __future__ import annotations

from types import MappingProxyType

from edgecompress.architectures import Architecture, register_architecture

_BIAS_PER_HEAD = (
    "its relative position bias (encoder.relative_attention_bias) has one column per head, shared by every "
    "layer, which the head pruner does not slice"
)


@register_architecture
class MPNet(Architecture):
    model_type = "mpnet"
    family = "MPNet"
    class_prefix = "MPNet"
    config_class = "MPNetConfig"
    base = "mpnet"
    query_path = "attention.attn.q"
    key_path = "attention.attn.k"
    value_path = "attention.attn.v"
    attention_output_path = "attention.attn.o"
    attention_norm_path = "attention.LayerNorm"
    self_attention_path = "attention.attn"
    uses_token_type_ids = False
    # Measured (onnxruntime 1.31, bert patterns, tiny config): 0 of 2 attention blocks fuse, for the relative
    # position bias added to the scores. Our own rule fuses every block into MultiHeadAttention with that bias
    # as its attention_bias (graph/attention_to_mha.py).
    own_attention_fusion = True
    not_applicable = MappingProxyType(
        {
            "prune_heads": _BIAS_PER_HEAD,
            "prune_schedule": _BIAS_PER_HEAD,
            "integer_only": "integer-only inference (I-BERT) has no integer kernel for its relative position bias "
            "added to the attention scores",
        }
    )
