"""ALBERT-style factorised word embeddings: a vocabulary x E table and an E x H projection.

Before -> After (MiniLM, E = 128):
    embeddings.word_embeddings Embedding(30522, 384)           11.7 M parameters
 -> FactorisedEmbedding: Embedding(30522, 128), Linear(128 -> 384, no bias)   3.9 M + 49 k

Initialised from the dense table's rank-E truncated SVD (exact at E = H), then, with `epochs` > 0, the
unfactorised model teaches the factorised one on `--train-data`. The word table is most of a small
encoder's file, so this is where the size goes; the cost is one small MatMul after the lookup and the
loss of ONNX Runtime's EmbedLayerNormalization fusion (the lookup no longer feeds the Add directly).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.architectures import architecture_of
from edgecompress.compress._factorised import FactorisedEmbedding
from edgecompress.compress._pruning import check_positive, cloned, parameter_count
from edgecompress.compress._recovery import RecoveringPass
from edgecompress.errors import InternalError, UserError
from edgecompress.passes import PassContext, PassResult, PassSkipped, register_pass


@register_pass
@dataclass(frozen=True)
class FactoriseEmbeddings(RecoveringPass):
    name = "factorise_embeddings"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference
    changed, untrained = "factorised", "the plain truncation"
    # trim_vocab cuts rows out of a dense table.
    runs_after = ("trim_vocab",)
    width: int = 128  # E: the table's width

    def requires(self, bundle, ctx: PassContext) -> None:
        check_positive(self.name, "width", self.width)
        self.check_recovery(ctx)
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch module to factorise")
        table = architecture_of(bundle.module).word_embeddings(bundle.module.hf_model)
        if not hasattr(table, "embedding_dim") or isinstance(table, FactorisedEmbedding):
            raise PassSkipped("the word embeddings are factorised already")
        hidden = table.embedding_dim
        if self.width >= hidden:
            raise UserError(
                f"option 'width' of pass '{self.name}' = {self.width} is not below the embedding width {hidden}",
                expected=f"a width from 1 to {hidden - 1}",
                hint="ALBERT uses 128 for a hidden size of 768",
            )

    def run(self, bundle, ctx: PassContext) -> PassResult:
        new = cloned(bundle)
        architecture = architecture_of(new.module)
        dense = architecture.word_embeddings(new.module.hf_model)
        architecture.set_word_embeddings(new.module.hf_model, FactorisedEmbedding(dense, self.width))
        record, recovery_note = self.recover(new, bundle, ctx)
        notes = [
            f"word embeddings {dense.num_embeddings} x {dense.embedding_dim} -> "
            f"{dense.num_embeddings} x {self.width} table + {self.width} x {dense.embedding_dim} projection",
            recovery_note,
        ]
        stats = {
            "width": self.width,
            "training_seconds": record["seconds"],
            "recovery": record,
            "parameters_before": parameter_count(bundle.module),
            "parameters_after": parameter_count(new.module),
        }
        return PassResult(new, notes, stats, lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        table = architecture_of(result.model.module).word_embeddings(result.model.module.hf_model)
        if not isinstance(table, FactorisedEmbedding) or table.width != self.width:
            raise InternalError(f"{self.name} left word embeddings of type {type(table).__name__}")
