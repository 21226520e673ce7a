"""Tiny random checkpoints of every encoder family, with real tokenizers, and the ONNX file a user exports by hand.

No DistilBERT/RoBERTa/... weights ship in a registry package (shared DATA.md), so the families are tested and
benchmarked on random-initialised configs that keep each family's own layout, with a tokenizer of the
family's kind trained in a second on the built-in sentences: WordPiece (BERT, DistilBERT, ELECTRA,
MobileBERT, MPNet), byte-level BPE (RoBERTa), Unigram (XLM-R, ALBERT, DeBERTa-v2).

`hand_export` is the peer: what a user gets with plain `torch.onnx.export` of a transformers 5 model in
eager attention, the file the `.onnx` intake must take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Small but real shapes: 2 layers, 4 heads of 16, seq 128 fits the positions (the pixel7 profile's length).
_COMMON: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=130
)
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(_COMMON),
    "electra": dict(_COMMON, embedding_size=64),
    "mobilebert": dict(_COMMON, embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32),
    "mpnet": dict(_COMMON),
    "distilbert": dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=130),
    "roberta": dict(_COMMON, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "xlm-roberta": dict(_COMMON, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "albert": dict(_COMMON, embedding_size=32),
    "deberta-v2": dict(_COMMON, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"]),
}
TOKENIZER_KIND = {
    "bert": "wordpiece",
    "distilbert": "wordpiece",
    "electra": "wordpiece",
    "mobilebert": "wordpiece",
    "mpnet": "wordpiece",
    "roberta": "bpe",
    "xlm-roberta": "unigram",
    "albert": "unigram",
    "deberta-v2": "unigram",
}
VOCAB_SIZE = 400
LABELS = {0: "negative", 1: "positive"}


def build_checkpoint(model_type: str, folder: Path, *, classifier: bool = True, seed: int = 0) -> Path:
    """A random-initialised `model_type` checkpoint (classifier or bare encoder) with its trained tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(TOKENIZER_KIND[model_type])
    tokenizer.save_pretrained(str(folder))
    extra = dict(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}) if classifier else {}
    # the config pads with the tokenizer's own pad id (intake refuses a mismatch: a tokenizer of another family)
    settings = {**TINY_CONFIGS[model_type], "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **settings, **extra)
    torch.manual_seed(seed)
    head = AutoModelForSequenceClassification if classifier else AutoModel
    head.from_config(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def train_tokenizer(kind: str):
    """A PreTrainedTokenizerFast of `kind` trained on the built-in sentences (a second on one core)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from edgecompress.intake.builtin_corpus import BUILTIN_TEXTS

    if kind == "wordpiece":
        specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=[*specials.values(), "[MASK]"])
        first, last = "[CLS]", "[SEP]"
    else:
        specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        specials |= {"cls_token": "<s>", "sep_token": "</s>"}
        tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        if kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=VOCAB_SIZE, special_tokens=tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
            )
        else:
            tok = Tokenizer(models.Unigram())
            tok.pre_tokenizer = pre_tokenizers.Metaspace()
            tok.decoder = decoders.Metaspace()
            trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=tokens, unk_token="<unk>")
        first, last = "<s>", "</s>"
    tok.train_from_iterator(list(BUILTIN_TEXTS), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        pair=f"{first} $A {last} $B {last}",
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, mask_token=tokens_mask(kind), **specials)


def tokens_mask(kind: str) -> str:
    return "[MASK]" if kind == "wordpiece" else "<mask>"


def hand_export(folder: Path, out: Path, *, dynamo: bool = False, token_types: bool | None = None) -> Path:
    """`torch.onnx.export` of a classifier checkpoint as a user writes it: eager attention, dynamic batch and
    sequence axes, `input_ids` and `attention_mask`, and `token_type_ids` when the family has more than one
    token type (BERT; not DistilBERT or RoBERTa) unless `token_types` says otherwise."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    if token_types is None:
        token_types = getattr(model.config, "type_vocab_size", 0) > 1
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    args = tuple(
        torch.ones(1, 16, dtype=torch.long) if n != "token_type_ids" else torch.zeros(1, 16, dtype=torch.long)
        for n in names
    )
    options: dict[str, Any] = {"external_data": False, "opset_version": 18} if dynamo else {"opset_version": 17}
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(out),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=dynamo,
            **options,
        )
    return out
