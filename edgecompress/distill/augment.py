"""Transfer data: the labelled texts plus augmented copies, every one labelled by the teacher's logits.

A small student needs far more examples than the labelled set to imitate the teacher (Tang et al. 2019,
section 3.3); the teacher labels any text, so the set is multiplied by perturbing its texts. Per word:
with `p_mask` it becomes [MASK]; else with `p_replace` one of its `neighbours` nearest whole-word tokens
by cosine over the teacher's word-embedding matrix (Tang et al. pick a word of the same part of speech,
which needs a tagger; the teacher's own embedding space is the nearest thing at hand). Then, with
`p_ngram`, only a random n-gram (n in 1..max_ngram) of the result is kept. Duplicates are dropped. Each
text draws from its own generator seeded by (seed, position), so a text's copies depend on nothing else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks, as BERT's basic tokenizer splits
# Tries per wanted copy before settling for fewer: short texts have few distinct variants.
ATTEMPTS_PER_COPY = 4
NEIGHBOUR_CHUNK = 1024  # query words per similarity matmul (1024 x ~20k floats)


@dataclass(frozen=True)
class AugmentOptions:
    copies: int = 0  # augmented texts per labelled text
    p_mask: float = 0.1
    p_replace: float = 0.1
    p_ngram: float = 0.25
    max_ngram: int = 5
    neighbours: int = 5
    seed: int = 0


@dataclass
class TransferSet:
    """Tokenized texts with the teacher's logits; `labels` is -1 on augmented rows (no hard label)."""

    input_ids: np.ndarray  # int64 [rows, seq_len]
    attention_mask: np.ndarray  # int64 [rows, seq_len]
    teacher_logits: np.ndarray  # float32 [rows, labels]
    labels: np.ndarray  # int64 [rows]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def augment(
    texts: list[str], vocab: dict[str, int], word_embeddings, mask_token: str, options: AugmentOptions
) -> list[tuple[int, str]]:
    """(index of the source text, augmented text) pairs, up to `options.copies` per text."""
    words = [WORD.findall(text) for text in texts]
    neighbours = near_neighbours({w for ws in words for w in ws}, vocab, word_embeddings, options.neighbours)
    out = []
    for index, text_words in enumerate(words):
        rng = random.Random(f"{options.seed}/{index}")
        seen = {" ".join(text_words)}
        for _ in range(options.copies * ATTEMPTS_PER_COPY):
            if len(seen) > options.copies:
                break
            candidate = perturb(text_words, rng, neighbours, mask_token, options)
            if candidate and candidate not in seen:
                seen.add(candidate)
                out.append((index, candidate))
    return out


def perturb(
    words: list[str], rng: random.Random, neighbours: dict[str, list[str]], mask_token: str, options: AugmentOptions
) -> str:
    """One augmented version of a text given as words (see the module docstring)."""
    out = []
    for word in words:
        draw = rng.random()
        choices = neighbours.get(word) or neighbours.get(word.lower())
        if draw < options.p_mask and word[0].isalnum():
            out.append(mask_token)
        elif draw < options.p_mask + options.p_replace and choices:
            out.append(rng.choice(choices))
        else:
            out.append(word)
    if out and rng.random() < options.p_ngram:
        n = rng.randint(1, options.max_ngram)
        start = rng.randrange(max(1, len(out) - n + 1))
        out = out[start : start + n]
    return " ".join(out)


def whole_word(token: str) -> bool:
    """A vocabulary entry that is a word by itself: not a ##continuation, [SPECIAL] or punctuation."""
    return token.isalpha()


def near_neighbours(words: set[str], vocab: dict[str, int], word_embeddings, k: int) -> dict[str, list[str]]:
    """For each word that is a whole-word token (as written or lowercased): its k nearest such tokens."""
    import torch
    import torch.nn.functional as F

    candidates = sorted(token for token in vocab if whole_word(token))
    column = {token: i for i, token in enumerate(candidates)}
    queries = sorted({form for word in words for form in (word, word.lower()) if form in column})
    if not queries or len(candidates) < 2:
        return {}
    table = F.normalize(word_embeddings[torch.tensor([vocab[t] for t in candidates])].float(), dim=1)
    found = {}
    for start in range(0, len(queries), NEIGHBOUR_CHUNK):
        chunk = queries[start : start + NEIGHBOUR_CHUNK]
        rows = torch.tensor([column[word] for word in chunk])
        similarity = table[rows] @ table.T
        similarity[torch.arange(len(chunk)), rows] = -2.0  # a word is not its own neighbour
        best = similarity.topk(min(k, len(candidates) - 1), dim=1).indices
        found.update({word: [candidates[i] for i in row] for word, row in zip(chunk, best.tolist())})
    return found


def build_transfer_set(
    teacher,
    texts: list[str],
    labels: np.ndarray,
    options: AugmentOptions,
    *,
    seq_len: int,
    progress: Callable[[int, int], None] | None = None,
) -> TransferSet:
    """The labelled texts and their augmented copies, tokenized and labelled by the teacher bundle."""
    from edgecompress.distill.embeddings import teacher_word_embeddings

    tokenizer = teacher.tokenizer
    augmented = (
        augment(
            texts,
            tokenizer.get_vocab(),
            teacher_word_embeddings(teacher.module.hf_model),
            tokenizer.mask_token,
            options,
        )
        if options.copies
        else []
    )
    all_texts = list(texts) + [text for _, text in augmented]
    input_ids, attention_mask, logits = label_with_teacher(teacher, all_texts, seq_len=seq_len, progress=progress)
    hard = np.concatenate([np.asarray(labels, dtype=np.int64), np.full(len(augmented), -1, dtype=np.int64)])
    return TransferSet(input_ids, attention_mask, logits, hard, all_texts)


def label_with_teacher(teacher, texts: list[str], *, seq_len: int, progress: Callable[[int, int], None] | None = None):
    """(input_ids, attention_mask, teacher logits) of `texts`, padded and truncated to `seq_len`."""
    from edgecompress.intake.data import tokenize
    from edgecompress.verify.evaluate import reference_outputs

    feeds = tokenize(teacher.tokenizer, texts, seq_len=seq_len, input_names=teacher.input_names)
    logits = reference_outputs(teacher, feeds, progress=progress)
    return feeds["input_ids"], feeds["attention_mask"], logits
