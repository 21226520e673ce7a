"""BERT (and MiniLM, which is a BERT): the family every path of this tool was first written for."""

from __future__ import annotations

from edgecompress.architectures import Architecture, register_architecture


@register_architecture
class Bert(Architecture):
    model_type = "bert"
    family = "BERT"
    class_prefix = "Bert"
    config_class = "BertConfig"
    base = "bert"
    integer_only = True
    early_exit = True
    token_elimination = True
