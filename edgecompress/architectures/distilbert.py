"""DistilBERT: BERT's layer with its own names (`attention.q_lin`, `ffn.lin1`), config keys (n_heads, dim,
n_layers, hidden_dim) and no token types; its attention module counts heads in `n_heads`.

ONNX Runtime's transformer optimizer has no "distilbert" model type (`MODEL_TYPES` in onnxruntime 1.31 lists
bert, bart, gpt2, ...): its "bert" patterns fuse DistilBERT's attention, measured 1 `Attention` per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgecompress.architectures import Architecture, _get, register_architecture


@register_architecture
class DistilBert(Architecture):
    model_type = "distilbert"
    family = "DistilBERT"
    class_prefix = "DistilBert"
    config_class = "DistilBertConfig"
    base = "distilbert"
    layers_path = "transformer.layer"
    query_path = "attention.q_lin"
    key_path = "attention.k_lin"
    value_path = "attention.v_lin"
    attention_output_path = "attention.out_lin"
    ffn_in_path = "ffn.lin1"
    ffn_out_path = "ffn.lin2"
    self_attention_path = "attention"
    attention_norm_path = "sa_layer_norm"
    ffn_norm_path = "output_layer_norm"
    token_type_embeddings_path = ""
    uses_token_type_ids = False
    heads_key = "n_heads"
    hidden_key = "dim"
    layers_key = "n_layers"
    ffn_key = "hidden_dim"
    ffn_activation_path = "ffn.activation"
    activation_key = "activation"
    # No pooler: the head is pre_classifier -> ReLU -> classifier on the first token.
    head_dense_path = "pre_classifier"
    head_activation = "relu"
    integer_only = True

    def set_head_count(self, layer, count: int) -> None:
        # DistilBERT reshapes by head size with -1 heads; n_heads is what its config and prune_heads keep.
        attention = _get(layer, self.self_attention_path)
        attention.n_heads = count

    def attention_width(self, layer) -> int:
        attention = _get(layer, self.self_attention_path)
        return int(attention.n_heads * attention.attention_head_size)

    def bert_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        # DistilBERT names its activation and dropouts differently; its LayerNorms use BERT's 1e-12
        renamed = {
            "hidden_act": config.get("activation", "gelu"),
            "hidden_dropout_prob": config.get("dropout", 0.1),
            "attention_probs_dropout_prob": config.get("attention_dropout", 0.1),
            "layer_norm_eps": 1e-12,
        }
        return {**super().bert_config(config), **renamed}
