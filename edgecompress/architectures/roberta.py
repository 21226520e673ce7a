"""RoBERTa: BERT's layer layout under `roberta.`, with two differences that reach the exported graph.

- Position ids are not 0..n-1: transformers numbers non-pad tokens from padding_idx + 1 with a cumulative
  sum over `input_ids != pad` (`CumSum` in the ONNX graph; the TFLite backend lowers it to CUMSUM), and
  the position table has max_length + padding_idx + 1 rows, so the longest input is shorter than the table.
- No token_type_ids input: RoBERTa tokenizers never emit segment ids other than 0 (they do not even return
  them), and transformers then adds row 0 of the type table to every token, which is exactly what the
  exported graph computes with the input absent. So this holds for type_vocab_size 1 (roberta-base) and 2
  (RobertaConfig's default) alike. The reference gives the model those zeros itself (`zero_inputs`): left to
  derive them, transformers gathers them from a buffer by position id, a GatherElements TFLite cannot run.

The classification head reads the first token through `classifier.dense` -> tanh -> `classifier.out_proj` (no
pooler). ONNX Runtime's optimizer has no "roberta" model type; its "bert" patterns fuse every attention block.
"""

from __future__ import annotations

from edgecompress.architectures import Architecture, register_architecture


@register_architecture
class Roberta(Architecture):
    model_type = "roberta"
    family = "RoBERTa"
    class_prefix = "Roberta"
    config_class = "RobertaConfig"
    base = "roberta"
    uses_token_type_ids = False
    zero_inputs = ("token_type_ids",)
    # positions run from padding_idx + 1, so padding_idx + 1 rows of the table are never a token's
    positions_skip_padding = True
    head_dense_path = "classifier.dense"
    head_output_path = "classifier.out_proj"
    integer_only = True
    early_exit = True
    token_elimination = True  # BERT's layer code (transformers copies it): tests/test_eliminate_tokens.py
