"""XLM-RoBERTa: RoBERTa's model (same layers, position ids and inputs) with a SentencePiece Unigram tokenizer."""

from __future__ import annotations

from edgecompress.architectures import register_architecture
from edgecompress.architectures.roberta import Roberta


@register_architecture
class XlmRoberta(Roberta):
    model_type = "xlm-roberta"
    family = "XLM-RoBERTa"
    class_prefix = "XLMRoberta"
    config_class = "XLMRobertaConfig"
