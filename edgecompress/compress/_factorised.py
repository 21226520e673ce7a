"""Factorised replacements for a dense Linear and a dense Embedding.

`LowRankLinear` is the truncated SVD of a Linear as two Linears (`low_rank`); `FactorisedEmbedding` is
ALBERT's vocabulary x E table followed by an E x H projection (`factorise_embeddings`). Both keep the
attributes other code reads off the module they replace (`in_features`/`out_features`, `weight`,
`num_embeddings`/`embedding_dim`), and both lower to plain MatMul/Gather nodes, which every backend runs.
"""

from __future__ import annotations

import torch


class LowRankLinear(torch.nn.Module):
    """y = up(down(x)) with W [out, in] ~ (U_r S_r^1/2)(S_r^1/2 V_r^T): the rank-r truncated SVD of W.

    The singular values are split evenly between the two factors so that neither holds all the scale,
    which keeps their ranges alike for int8 quantization later. The bias stays on `up`.
    """

    def __init__(self, linear: torch.nn.Linear, rank: int):
        super().__init__()
        u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
        root = s[:rank].sqrt()
        self.in_features, self.out_features, self.rank = linear.in_features, linear.out_features, rank
        self.down = torch.nn.Linear(linear.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.down.weight.copy_((root[:, None] * vh[:rank]).float())
            self.up.weight.copy_((u[:, :rank] * root).float())
            if linear.bias is not None:
                self.up.bias.copy_(linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense [out, in] matrix the factors multiply to (for code that reads a Linear's weight)."""
        return self.up.weight @ self.down.weight


class FactorisedEmbedding(torch.nn.Module):
    """ALBERT's factorised embedding: a [vocabulary, E] table, then an E -> H projection without bias.

    Initialised from the dense [vocabulary, H] table by its rank-E truncated SVD, so at E = H it is exact.
    """

    def __init__(self, embedding: torch.nn.Embedding, width: int):
        super().__init__()
        u, s, vh = torch.linalg.svd(embedding.weight.detach().double(), full_matrices=False)
        root = s[:width].sqrt()
        self.num_embeddings, self.embedding_dim, self.width = embedding.num_embeddings, embedding.embedding_dim, width
        self.padding_idx = embedding.padding_idx
        self.table = torch.nn.Embedding(embedding.num_embeddings, width, padding_idx=embedding.padding_idx)
        self.projection = torch.nn.Linear(width, embedding.embedding_dim, bias=False)
        with torch.no_grad():
            self.table.weight.copy_((u[:, :width] * root).float())
            self.projection.weight.copy_((root[:, None] * vh[:width]).float().T)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.table(input_ids))

    @property
    def weight(self) -> torch.Tensor:
        """The dense [vocabulary, H] table the factors multiply to."""
        return self.projection(self.table.weight)


def rank_for_energy(matrix: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep `energy` of the squared Frobenius norm."""
    s = torch.linalg.svdvals(matrix.detach().double())
    kept = torch.cumsum(s**2, 0) / torch.sum(s**2)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


def energy_kept(matrix: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(matrix.detach().double())
    return float(torch.sum(s[:rank] ** 2) / torch.sum(s**2))


def round_up(value: int, multiple: int, limit: int) -> int:
    """`value` rounded up to a multiple of `multiple` (int8 GEMM kernels work in blocks), at most `limit`."""
    return min(limit, -(-value // multiple) * multiple)
