"""ELECTRA (the discriminator): BERT's layer layout under `electra.`.

Its word embeddings may be narrower than its layers (`embedding_size`, ELECTRA-small 128 -> 256):
`electra.embeddings_project` maps them up before the first layer, so the embedding table is
[vocab, embedding_size]. The classification head is two Linear layers on [CLS] (dense -> GELU -> out_proj)
instead of BERT's pooler + classifier; neither is inside the encoder, so no pass needs to know.

ONNX Runtime's optimizer has no "electra" model type; its "bert" patterns fuse every attention block.
"""

from __future__ import annotations

from types import MappingProxyType

from edgecompress.architectures import Architecture, register_architecture


@register_architecture
class Electra(Architecture):
    model_type = "electra"
    family = "ELECTRA"
    class_prefix = "Electra"
    config_class = "ElectraConfig"
    base = "electra"
    head_dense_path = "classifier.dense"
    head_activation = "gelu"
    head_output_path = "classifier.out_proj"
    token_elimination = True  # BERT's layer code (transformers copies it): tests/test_eliminate_tokens.py
    not_applicable = MappingProxyType(
        {
            "integer_only": "integer-only inference (I-BERT) has no integer kernels yet for its head's GELU or, where "
            "embedding_size differs from hidden_size, its embedding projection (embeddings_project)",
        }
    )
