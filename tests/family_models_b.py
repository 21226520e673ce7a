"""Tiny random-initialised ALBERT, MobileBERT, DeBERTa-v2 and MPNet checkpoints with real tokenizers.

ALBERT and DeBERTa-v2 ship SentencePiece Unigram tokenizers: one is trained here in well under a second with
the `tokenizers` library on example texts and handed to the family's own tokenizer class, which builds its
normaliser, Metaspace pre-tokenizer and [CLS]/[SEP] template around it (the way a converted SentencePiece
model is loaded). MPNet and MobileBERT use WordPiece vocabularies, which are trained the same way.
"""

from __future__ import annotations

from pathlib import Path

from conftest import SENTENCES, WORDS

FAMILIES_B = ("albert", "mobilebert", "deberta-v2", "mpnet")
# Random weights at BERT's initializer_range (0.02) give logits that hardly depend on the text (std ~5e-5 over
# the test sentences), which any parity check at 1e-4 would pass: wider weights make the texts matter.
SPREAD = {"initializer_range": 0.3}
LABELS = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
# Texts the tokenizers learn from: the test sentences, the word list, and some more of their kind.
_TRAINING_TEXTS = (
    [text for text, _ in SENTENCES]
    + [" ".join(WORDS)] * 3
    + [
        "a great film with a boring plot",
        "the actor was fun, the story was not",
        "i hated this movie. it is the worst!",
        "best story ever, loved the film",
    ]
)


def _unigram_vocab(specials: list[str], size: int = 120) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs of a SentencePiece-style Unigram model trained on the texts."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=size, special_tokens=specials, unk_token=specials[1])
    tokenizer.train_from_iterator(_TRAINING_TEXTS, trainer=trainer)
    return [(piece, float(score)) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]


def _wordpiece_vocab(specials: list[str], size: int = 160) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=specials)
    tokenizer.train_from_iterator(_TRAINING_TEXTS, trainer=trainer)
    return tokenizer.get_vocab()


def _albert():
    from transformers import AlbertConfig, AlbertForSequenceClassification, AlbertModel, AlbertTokenizer

    vocab = _unigram_vocab(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = AlbertTokenizer(vocab=vocab, model_max_length=128)
    # ALBERT's factorised embedding (16 wide, projected to 32) and one layer shared by both depths.
    config = AlbertConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_act="gelu",
        **LABELS,
        **SPREAD,
    )
    return tokenizer, config, AlbertForSequenceClassification, AlbertModel


def _mobilebert():
    from transformers import BertTokenizer, MobileBertConfig, MobileBertForSequenceClassification, MobileBertModel

    vocab = _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    # MobileBERT's shape in small: 32-wide body, 16-wide bottleneck, stacked FFNs, NoNorm, 4 layers.
    config = MobileBertConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        intra_bottleneck_size=16,
        true_hidden_size=16,
        num_feedforward_networks=2,
        max_position_embeddings=128,
        **LABELS,
        # NoNorm does not rescale: at 0.3 each layer multiplies the hidden states by ~10 (1.5e4 after 4), where
        # float32 rounding alone exceeds 1e-4; 0.1 keeps them near 10 and the logits text-dependent.
        initializer_range=0.1,
    )
    return tokenizer, config, MobileBertForSequenceClassification, MobileBertModel


def _deberta_v2():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model, DebertaV2Tokenizer

    vocab = _unigram_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = DebertaV2Tokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    # DeBERTa-v3-like: relative attention (c2p and p2c) over log buckets, shared relative key projections.
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=16,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        **LABELS,
        **SPREAD,
    )
    return tokenizer, config, DebertaV2ForSequenceClassification, DebertaV2Model


def _mpnet():
    from transformers import MPNetConfig, MPNetForSequenceClassification, MPNetModel, MPNetTokenizer

    vocab = _wordpiece_vocab(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
    tokenizer = MPNetTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    config = MPNetConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        relative_attention_num_buckets=32,
        pad_token_id=tokenizer.pad_token_id,
        **LABELS,
        **SPREAD,
    )
    return tokenizer, config, MPNetForSequenceClassification, MPNetModel


_BUILDERS = {"albert": _albert, "mobilebert": _mobilebert, "deberta-v2": _deberta_v2, "mpnet": _mpnet}


def build_family_checkpoint(folder: Path, family: str, *, classifier: bool = True, seed: int = 0) -> Path:
    """A tiny checkpoint of one family (classifier or bare encoder), saved as save_pretrained writes it."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, config, classifier_class, encoder_class = _BUILDERS[family]()
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = (classifier_class if classifier else encoder_class)(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
