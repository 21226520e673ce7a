"""ALBERT: a factorised word embedding (embedding_size, projected up to hidden_size) and one set of layer
weights shared by every depth (`num_hidden_groups` groups, usually one, of `inner_group_num` layers).

The layers the passes see are the stored ones, not the depths: pruning the heads or FFN neurons of the shared
layer prunes every depth at once, which is still exact (the same slice of the same weights at each depth), and
the gradient importance of a shared unit sums over every depth it serves.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from edgecompress.architectures import Architecture, register_architecture


@register_architecture
class Albert(Architecture):
    model_type = "albert"
    family = "ALBERT"
    class_prefix = "Albert"
    config_class = "AlbertConfig"
    base = "albert"
    layers_path = "encoder.albert_layer_groups"
    query_path = "attention.query"
    key_path = "attention.key"
    value_path = "attention.value"
    attention_output_path = "attention.dense"
    ffn_in_path = "ffn"
    ffn_out_path = "ffn_output"
    attention_norm_path = "attention.LayerNorm"
    ffn_norm_path = "full_layer_layer_norm"
    self_attention_path = "attention"
    # Measured (onnxruntime 1.31, bert patterns, tiny config): every depth but the first fuses (1 of 2).
    fused_attention_per_layer = 1
    unfused_attention = (
        "the first depth reads the embedding projection (embedding_hidden_mapping_in), not a LayerNorm, and "
        "ONNX Runtime's BERT attention pattern starts at a LayerNorm"
    )
    not_applicable = MappingProxyType(
        {
            "drop_layers": "its depths share one set of layer weights: there is no layer to remove, only a "
            "repetition (num_hidden_layers), which this pass does not change",
            "share_layers": "its depths share one set of layer weights already",
            "trim_vocab": "its SentencePiece Unigram vocabulary is not trimmed (trim_vocab rewrites WordPiece "
            "vocabularies only)",
            "integer_only": "integer-only inference (I-BERT) has no integer kernel for its embedding projection "
            "(embedding_hidden_mapping_in), and its own checkpoints use gelu_new, which i-GELU does not approximate",
        }
    )

    def layers(self, hf_model):
        """Every stored layer of every group, once (each serves several depths)."""
        groups = super().layers(hf_model)
        return torch.nn.ModuleList([layer for group in groups for layer in group.albert_layers])

    def expected_fused_attention(self, num_layers: int) -> int:
        return num_layers - 1  # see unfused_attention

    def set_layers(self, hf_model, layers) -> None:
        raise NotImplementedError("ALBERT's layers are shared by depth; drop_layers is refused for it")
