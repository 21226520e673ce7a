"""Low-rank factorisation (`low_rank`) and ALBERT-style factorised embeddings (`factorise_embeddings`)."""

from __future__ import annotations

import pytest
import torch

from edgecompress.architectures import architecture_of
from edgecompress.compress._factorised import FactorisedEmbedding, LowRankLinear, rank_for_energy
from edgecompress.compress._pruning import encoder_layers
from edgecompress.compress.factorise_embeddings import FactoriseEmbeddings
from edgecompress.compress.low_rank import LowRank
from edgecompress.errors import UserError
from edgecompress.intake.data import load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import PassSkipped, apply_pass
from edgecompress.pipeline import ExportRequest, run_export

from conftest import SENTENCES, write_csv
from family_models import build_any_family_checkpoint
from helpers import FLOAT_GRAPH_STAGE, pass_context

TEXTS = [text for text, _ in SENTENCES]


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint):
    return load_bundle(tiny_checkpoint)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("train") / "train.csv", SENTENCES * 4)


def logits(bundle) -> torch.Tensor:
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=16, input_names=bundle.input_names)
    with torch.no_grad():
        return bundle.module(*(torch.from_numpy(feeds[name]) for name in bundle.input_names))


def test_factors_at_full_rank_are_the_dense_layers():
    torch.manual_seed(0)
    linear, table = torch.nn.Linear(24, 40), torch.nn.Embedding(50, 24)
    x, ids = torch.randn(3, 24), torch.randint(0, 50, (3, 5))
    torch.testing.assert_close(LowRankLinear(linear, 24)(x), linear(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(FactorisedEmbedding(table, 24)(ids), table(ids), atol=1e-5, rtol=1e-5)


def test_energy_picks_the_smallest_rank_that_keeps_it():
    matrix = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.1]))  # squared: 9, 4, 1, 0.01 of 14.01
    assert rank_for_energy(matrix, 0.6) == 1
    assert rank_for_energy(matrix, 0.9) == 2
    assert rank_for_energy(matrix, 0.999) == 3


def test_low_rank_without_recovery_is_the_truncated_svd_of_every_ffn_matrix(bundle):
    new, record = apply_pass(LowRank(rank=8, epochs=0), bundle, pass_context(bundle))
    architecture = architecture_of(new.module)
    truncated = load_bundle_copy(bundle)
    for layer in encoder_layers(truncated.module):
        for role in ("ffn_in", "ffn_out"):
            linear = architecture.linear(layer, role)
            u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
            with torch.no_grad():
                linear.weight.copy_((u[:, :8] * s[:8]) @ vh[:8])
    for layer in encoder_layers(new.module):
        assert all(isinstance(architecture.linear(layer, r), LowRankLinear) for r in ("ffn_in", "ffn_out"))
    torch.testing.assert_close(logits(new), logits(truncated), atol=1e-5, rtol=1e-4)
    assert record.stats["parameters_after"] < record.stats["parameters_before"]
    assert "no recovery training" in " ".join(record.notes)


def load_bundle_copy(bundle):
    import copy
    import dataclasses

    return dataclasses.replace(bundle, module=copy.deepcopy(bundle.module))


def test_recovery_distils_the_original_into_the_factors(bundle, train_csv):
    # A random tiny model has nothing worth recovering toward (its FFNs barely move the residual stream),
    # so this checks that the distillation runs on the factors and lowers its loss; the benchmark
    # (tools/bench_low_rank.py) measures what recovery is worth on the trained teacher.
    ctx = pass_context(bundle, train_data=load_dataset(train_csv, require_labels=True))
    plain, _ = apply_pass(LowRank(rank=8, epochs=0), bundle, ctx)
    recovered, record = apply_pass(LowRank(rank=8, epochs=8, lr=5e-3, batch_size=8), bundle, ctx)
    recovery = record.stats["recovery"]
    assert recovery["steps"] == 8 * len(SENTENCES * 4) // 8
    assert recovery["loss_last"] < recovery["loss_first"]
    layer, trained = encoder_layers(plain.module)[0], encoder_layers(recovered.module)[0]
    assert not torch.equal(layer.intermediate.dense.down.weight, trained.intermediate.dense.down.weight)


def test_factorised_embeddings_without_recovery_are_the_truncated_table(bundle):
    new, record = apply_pass(FactoriseEmbeddings(width=8, epochs=0), bundle, pass_context(bundle))
    table = architecture_of(new.module).word_embeddings(new.module.hf_model)
    dense = architecture_of(bundle.module).word_embeddings(bundle.module.hf_model).weight.detach().double()
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    assert isinstance(table, FactorisedEmbedding)
    torch.testing.assert_close(table.weight.double(), (u[:, :8] * s[:8]) @ vh[:8], atol=1e-5, rtol=1e-4)
    assert record.stats["parameters_after"] < record.stats["parameters_before"]


def test_low_rank_does_not_fire_when_no_factor_is_smaller(bundle):
    # 32 x 64 matrices: rank 24 factors hold 24 x 96 = 2304 numbers against 2048 dense.
    with pytest.raises(PassSkipped, match="every one stays dense"):
        LowRank(rank=24, epochs=0).run(bundle, pass_context(bundle))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LowRank(epochs=0), "exactly one of 'rank' and 'energy'"),
        (lambda: LowRank(rank=8, energy=0.9, epochs=0), "exactly one of 'rank' and 'energy'"),
        (lambda: LowRank(energy=1.5, epochs=0), "out of range"),
        (lambda: LowRank(rank=40, epochs=0), "above the matrices' own rank"),
        (lambda: LowRank(rank=8, targets="qkv", epochs=0), "unknown targets 'qkv'"),
        (lambda: LowRank(rank=8), "--train-data"),
        (lambda: FactoriseEmbeddings(width=32, epochs=0), "not below the embedding width 32"),
        (lambda: FactoriseEmbeddings(width=8), "--train-data"),
    ],
)
def test_bad_options_are_user_errors(bundle, make, message):
    with pytest.raises(UserError, match=message):
        make().requires(bundle, pass_context(bundle))


def test_albert_shared_layer_is_factorised_once_for_every_depth(tmp_path):
    albert = load_bundle(build_any_family_checkpoint(tmp_path / "albert", "albert"))
    new, record = apply_pass(LowRank(rank=8, epochs=0), albert, pass_context(albert))
    # ALBERT's encoder holds one layer module that every depth runs: one factorisation serves them all.
    assert albert.num_layers > 1 and len(record.stats["layers"]) == 1
    assert isinstance(architecture_of(new.module).linear(encoder_layers(new.module)[0], "ffn_in"), LowRankLinear)
    assert torch.isfinite(logits(new)).all()


RECIPE = (
    """
[[compress]]
pass = "low_rank"
rank = 8
epochs = 0
[[compress]]
pass = "factorise_embeddings"
width = 8
epochs = 0
"""
    + FLOAT_GRAPH_STAGE
)


def test_factorised_model_exports_verified_with_attention_still_fused(
    tiny_checkpoint, tiny_device, tiny_data, tmp_path
):
    recipe = tmp_path / "low_rank.toml"
    recipe.write_text(RECIPE)
    request = ExportRequest(tiny_checkpoint, str(tiny_device), tmp_path / "dist", data=tiny_data, recipe=str(recipe))
    report = run_export(ExportRequest(**{**request.__dict__, "measure": False})).report
    records = {p["name"]: p for p in report.passes}
    assert records["low_rank"]["fired"] and records["factorise_embeddings"]["fired"]
    assert records["fuse_transformer"]["stats"]["fused"]["Attention"] == 2
    assert {a.kind for a in report.artifacts} >= {"ort", "tflite"}
    assert report.passed
