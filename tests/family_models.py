"""Tiny random-initialised checkpoints of every encoder family, each with a REAL tokenizer of its kind.

`build_family_checkpoint(folder, "roberta")` writes config.json, model.safetensors and the tokenizer files
the family's own checkpoints ship: a WordPiece vocab.txt for DistilBERT and ELECTRA (as conftest's BERT), a
byte-level BPE for RoBERTa and a SentencePiece Unigram for XLM-RoBERTa, trained in well under a second with
the `tokenizers` library on the test sentences, saved as tokenizer.json + tokenizer_config.json naming the
family's tokenizer class. Other test files (and other families' engineers) import it:
`from family_models import FAMILIES, build_family_checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conftest import SENTENCES, WORDS, _write_vocab

MAX_POSITIONS = 64
LABELS = dict(id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
# Texts the subword tokenizers learn from: the test sentences plus every word they may meet.
TRAINING_TEXTS = [text for text, _ in SENTENCES] + [" ".join(WORDS), " ".join(WORDS).upper()]


@dataclass(frozen=True)
class Family:
    model_type: str
    class_prefix: str  # transformers class = prefix + "ForSequenceClassification" | "Model"
    config: dict  # tiny config fields (the family's own key names)
    tokenizer: str  # "wordpiece" | "bpe" | "unigram"
    tokenizer_class: str


FAMILIES = {
    "distilbert": Family(
        "distilbert",
        "DistilBert",
        dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=MAX_POSITIONS),
        "wordpiece",
        "DistilBertTokenizer",
    ),
    "roberta": Family(
        "roberta",
        "Roberta",
        # RoBERTa's own checkpoints: one token type, pad id 1, position table of max_length + pad + 1 rows
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=MAX_POSITIONS + 2,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
        "bpe",
        "RobertaTokenizer",
    ),
    "xlm-roberta": Family(
        "xlm-roberta",
        "XLMRoberta",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=MAX_POSITIONS + 2,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
        "unigram",
        "XLMRobertaTokenizer",
    ),
    "electra": Family(
        "electra",
        "Electra",
        # a discriminator whose embeddings are narrower than its layers, as ELECTRA-small's (128 -> 256)
        dict(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=MAX_POSITIONS,
        ),
        "wordpiece",
        "ElectraTokenizer",
    ),
}


def build_family_checkpoint(folder: Path, model_type: str, *, classifier: bool = True, seed: int = 0) -> Path:
    """A 2-layer, 32-wide checkpoint of `model_type` (classifier or bare encoder) with its family's tokenizer."""
    import torch
    import transformers

    family = FAMILIES[model_type]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(folder, family)
    config_class = getattr(transformers, family.class_prefix + "Config")
    config = config_class(vocab_size=vocab_size, **family.config, **LABELS)
    torch.manual_seed(seed)
    head = "ForSequenceClassification" if classifier else "Model"
    model = getattr(transformers, family.class_prefix + head)(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _write_tokenizer(folder: Path, family: Family) -> int:
    """Write the family's tokenizer files into `folder`; return its vocabulary size."""
    from transformers import AutoTokenizer

    if family.tokenizer == "wordpiece":
        _write_vocab(folder)
        vocab = (folder / "vocab.txt").read_text().split()
        tokenizer_class = getattr(__import__("transformers"), family.tokenizer_class)
        tokenizer = tokenizer_class(
            vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=MAX_POSITIONS
        )
        tokenizer.save_pretrained(str(folder))
    else:
        backend = _bpe() if family.tokenizer == "bpe" else _unigram()
        backend.save(str(folder / "tokenizer.json"))
        specials = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>")
        specials |= dict(pad_token="<pad>", mask_token="<mask>")
        tokenizer_config = dict(tokenizer_class=family.tokenizer_class, model_max_length=MAX_POSITIONS, **specials)
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return len(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))


# RoBERTa and XLM-R number their specials alike: <s> 0, <pad> 1, </s> 2, <unk> 3; <mask> comes last.
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def _bpe():
    """A byte-level BPE as RoBERTa's (GPT-2's byte alphabet, `Ġ` marks a leading space), <s> X </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[*_SPECIALS, "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXTS, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return tokenizer


def _unigram():
    """A SentencePiece Unigram as XLM-R's (`▁` marks a word start), <s> X </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=[*_SPECIALS, "<mask>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(TRAINING_TEXTS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tokenizer


def build_any_family_checkpoint(folder: Path, model_type: str, *, classifier: bool = True) -> Path:
    """A tiny checkpoint of any registered family: BERT from conftest, the families here, and those of
    family_models_b (one signature for all, so a test can go over every family)."""
    import family_models_b
    from conftest import build_tiny_checkpoint

    if model_type == "bert":
        return build_tiny_checkpoint(folder, classifier=classifier)
    if model_type in FAMILIES:
        return build_family_checkpoint(folder, model_type, classifier=classifier)
    return family_models_b.build_family_checkpoint(folder, model_type, classifier=classifier)
