"""Student embeddings from the teacher's: the corpus vocabulary, and a PCA projection to the student width.

The student keeps only the token ids its transfer set contains (plus the special tokens), most frequent
first, up to `max_vocab` rows; the rest of the teacher's vocabulary maps to [UNK]. On Rotten Tomatoes the
training texts use ~13,700 of MiniLM's 30,522 word pieces and cover ~98.7% of the test tokens. This is
done here rather than by a tokenizer rewrite so the app ships the teacher's tokenizer files unchanged.

Initial vectors are the teacher's word embeddings of the kept tokens projected on their top principal
directions (Tang et al. start from word2vec; the teacher's own table is the closest thing we have).
"""

from __future__ import annotations

from collections import Counter


def kept_tokens(input_ids, attention_mask, special_ids: list[int], max_rows: int) -> list[int]:
    """Teacher ids that get their own student row: special tokens always, then corpus tokens by frequency."""
    counts = Counter(input_ids[attention_mask.bool()].tolist())
    specials = list(dict.fromkeys(special_ids))
    by_frequency = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    skip = set(specials)
    corpus = [token for token, _ in by_frequency if token not in skip]
    return specials + corpus[:max(0, max_rows - len(specials))]


def token_map(kept: list[int], vocab_size: int, unk_id: int):
    """int32 [vocab_size]: teacher id -> student row; ids outside `kept` share [UNK]'s row."""
    import torch

    rows = {token: row for row, token in enumerate(kept)}
    mapping = torch.full((vocab_size,), rows[unk_id], dtype=torch.int32)
    mapping[torch.tensor(kept)] = torch.arange(len(kept), dtype=torch.int32)
    return mapping


def pca_projection(matrix, dim: int):
    """Rows of `matrix` on its top `dim` principal directions, scaled to unit standard deviation.

    The scale matches what `nn.Embedding` starts from (N(0, 1)); the teacher's raw table is ~20x smaller.
    Directions beyond the rank of `matrix` (a student wider than the teacher) start at zero.
    """
    import torch

    centered = matrix.double() - matrix.double().mean(dim=0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    components = min(dim, vh.shape[0])
    projected = centered @ vh[:components].T
    projected = projected / projected.std().clamp(min=1e-12)
    padding = torch.zeros(matrix.shape[0], dim - components, dtype=projected.dtype)
    return torch.cat([projected, padding], dim=1).float()


def teacher_word_embeddings(hf_model):
    """The teacher's [vocab, hidden] word-embedding matrix (a BertForSequenceClassification)."""
    return hf_model.bert.embeddings.word_embeddings.weight.detach()
