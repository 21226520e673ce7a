"""DeBERTa-v2 and -v3: disentangled attention. Each layer adds content-to-position and position-to-content
scores, gathered from the shared relative-position embeddings by log-bucketed relative distance, to the
content-to-content scores; there are no absolute position embeddings and (v3) no token types.
"""

from __future__ import annotations

from types import MappingProxyType

from edgecompress.architectures import Architecture, register_architecture

_RELATIVE_HEADS = (
    "its disentangled attention projects the relative-position embeddings per head (pos_key_proj and "
    "pos_query_proj, or the shared key and query projections), which the head pruner does not slice"
)


@register_architecture
class DebertaV2(Architecture):
    model_type = "deberta-v2"
    family = "DeBERTa-v2"
    class_prefix = "DebertaV2"
    config_class = "DebertaV2Config"
    base = "deberta"
    query_path = "attention.self.query_proj"
    key_path = "attention.self.key_proj"
    value_path = "attention.self.value_proj"
    # v3 checkpoints have type_vocab_size 0: token types reach nothing; single texts are type 0 anyway.
    uses_token_type_ids = False
    # Measured (onnxruntime 1.31, bert patterns, tiny config): 0 of 2 attention blocks fuse.
    fused_attention_per_layer = 0
    unfused_attention = (
        "the fuser has no pattern for it (the relative-position scores gathered and added before the Softmax), "
        "and our MultiHeadAttention rule does not fit its query-and-key mask (graph/attention_to_mha.py)"
    )
    not_applicable = MappingProxyType(
        {
            "prune_heads": _RELATIVE_HEADS,
            "prune_schedule": _RELATIVE_HEADS,
            "trim_vocab": "its SentencePiece Unigram vocabulary is not trimmed (trim_vocab rewrites WordPiece "
            "vocabularies only)",
        }
    )
