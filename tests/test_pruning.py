"""Structured pruning passes on the tiny BERT: each fires, each declines with a reason, the physically
pruned model equals the masked original, bad options are user errors, and pruned models export fused."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging

import numpy as np
import pytest
import torch

from edgecompress.compress._pruning import encoder_layers, unit_masks, units_of
from edgecompress.compress.drop_layers import DropLayers
from edgecompress.compress.prune_ffn import PruneFfn
from edgecompress.compress.prune_heads import PruneHeads
from edgecompress.compress.prune_schedule import PruneSchedule
from edgecompress.compress.trim_vocab import TrimVocab
from edgecompress.errors import UserError
from edgecompress.intake.data import load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import PassContext, apply_pass
from edgecompress.paths import recipes_dir
from edgecompress.pipeline import ExportRequest, run_export

from conftest import SENTENCES, write_csv
from helpers import FLOAT_GRAPH_STAGE, pass_context

SEQ = 16
TEXTS = [text for text, _ in SENTENCES]


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint):
    return load_bundle(tiny_checkpoint)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("train") / "train.csv", SENTENCES)


@pytest.fixture()
def ctx(bundle, train_csv) -> PassContext:
    return context(bundle, train_data=load_dataset(train_csv, require_labels=True))


def context(bundle, **overrides) -> PassContext:
    return pass_context(bundle, **{"seq_len": SEQ, **overrides})


def logits(bundle, texts=TEXTS, seq_len=SEQ) -> torch.Tensor:
    feeds = tokenize(bundle.tokenizer, texts, seq_len=seq_len, input_names=bundle.input_names)
    with torch.no_grad():
        return bundle.module(*(torch.from_numpy(feeds[name]) for name in bundle.input_names))


def hidden(bundle, texts=TEXTS, seq_len=SEQ) -> torch.Tensor:
    """The encoder's last hidden states (before the pooler and classifier)."""
    feeds = tokenize(bundle.tokenizer, texts, seq_len=seq_len, input_names=bundle.input_names)
    with torch.no_grad():
        inputs = {name: torch.from_numpy(feeds[name]) for name in bundle.input_names}
        return bundle.module.hf_model.bert(**inputs).last_hidden_state


def masked_logits(bundle, kind: str, removed: list[list[int]]) -> torch.Tensor:
    """The unpruned model with the removed units' outputs multiplied by 0."""
    units = units_of(bundle.module, kind)
    masks = []
    for layer, ids in zip(encoder_layers(bundle.module), removed):
        mask = torch.ones(units.count(layer))
        mask[ids] = 0
        masks.append(mask)
    with unit_masks(bundle.module, units, masks):
        return logits(bundle)


# --- prune_heads / prune_ffn ------------------------------------------------------------------------


def test_prune_heads_slices_heads_and_equals_the_masked_original(bundle, ctx):
    pruned, record = apply_pass(PruneHeads(ratio=0.5), bundle, ctx)
    assert record.fired and record.lossy
    assert record.notes == [
        "removed 1 of 2 heads in each of 2 layers in 1 step(s); importance: "
        "E|dL/d(head mask)| (Michel et al. 2019) on 12 labelled training texts"
    ]
    attention = encoder_layers(pruned.module)[0].attention
    assert (attention.self.query.out_features, attention.output.dense.in_features) == (16, 16)
    assert pruned.config["num_attention_heads"] == pruned.module.hf_model.config.num_attention_heads == 1
    assert (pruned.num_heads, pruned.attention_width) == (1, 16)  # what the graph stage's context is built from
    assert bundle.config["num_attention_heads"] == 2  # the input bundle is untouched
    expected = masked_logits(bundle, "head", record.stats["removed"])
    torch.testing.assert_close(logits(pruned), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(logits(pruned), logits(bundle), atol=1e-6)


def test_prune_heads_without_train_data_ranks_by_magnitude_and_says_so(bundle):
    pruned, record = apply_pass(PruneHeads(ratio=0.5), bundle, context(bundle))
    assert "importance: weight magnitude (no labelled --train-data" in record.notes[0]
    expected = masked_logits(bundle, "head", record.stats["removed"])
    torch.testing.assert_close(logits(pruned), expected, atol=1e-6, rtol=0)


def test_prune_ffn_in_steps_equals_the_masked_original(bundle, ctx):
    pruned, record = apply_pass(PruneFfn(ratio=0.25, steps=2), bundle, ctx)
    assert record.notes[0].startswith(
        "removed 16 of 64 neurons in each of 2 layers in 2 step(s); importance: |activation x gradient|"
    )
    assert pruned.config["intermediate_size"] == 48
    assert [len(ids) for ids in record.stats["removed"]] == [16, 16]
    assert record.stats["parameters_after"] == record.stats["parameters_before"] - 2 * 16 * (32 + 1 + 32)
    torch.testing.assert_close(
        logits(pruned), masked_logits(bundle, "neuron", record.stats["removed"]), atol=1e-6, rtol=0
    )


def test_gradient_importance_removes_the_head_that_matters_least(bundle, ctx):
    """Zeroing a head's output weights makes it unimportant by both measures: that head must go."""
    doctored = dataclasses.replace(bundle, module=copy.deepcopy(bundle.module))
    for layer in encoder_layers(doctored.module):
        layer.attention.output.dense.weight.data[:, :16] = 0  # head 0 contributes nothing
    _, record = apply_pass(PruneHeads(ratio=0.5), doctored, ctx)
    assert record.stats["removed"] == [[0], [0]]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: PruneHeads(ratio=0.0), "ratio 0.0 of 2 heads per layer removes none"),
        (lambda: PruneFfn(ratio=0.001), "ratio 0.001 of 64 neurons per layer removes none"),
        (lambda: DropLayers(ratio=0.2), "ratio 0.2 of 2 layers drops none"),
        (lambda: PruneSchedule(heads=0.0, ffn=0.0), "heads 0.0 and ffn 0.0 remove no unit of any layer"),
    ],
)
def test_passes_do_not_fire_when_nothing_would_go(bundle, ctx, make, reason):
    result, record = apply_pass(make(), bundle, ctx)
    assert (result, record.fired, record.notes) == (bundle, False, [f"skipped: {reason}"])


def test_passes_skip_an_onnx_intake_bundle(bundle, ctx):
    onnx_bundle = dataclasses.replace(bundle, module=None)
    for p in (PruneHeads(), PruneFfn(), DropLayers(), TrimVocab(), PruneSchedule()):
        _, record = apply_pass(p, onnx_bundle, ctx)
        assert not record.fired and "came in as ONNX" in record.notes[0], p.name


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PruneHeads(ratio=1.0), "option 'ratio' of pass 'prune_heads' must be in [0, 1), got 1.0"),
        (lambda: PruneFfn(ratio=-0.1), "option 'ratio' of pass 'prune_ffn' must be in [0, 1), got -0.1"),
        (
            lambda: PruneHeads(ratio=0.8),
            "option 'ratio' of pass 'prune_heads' = 0.8 would remove all 2 heads "
            "of every layer; expected a ratio below 0.750",
        ),
        (lambda: PruneHeads(steps=0), "option 'steps' of pass 'prune_heads' must be positive, got 0"),
        (lambda: DropLayers(ratio=0.9), "option 'ratio' of pass 'drop_layers' = 0.9 would drop all 2 layers"),
        (
            lambda: DropLayers(strategy="random"),
            "unknown strategy 'random' for pass 'drop_layers'; hint: Known: every_other, importance",
        ),
        (lambda: PruneSchedule(ffn=1.5), "option 'ffn' of pass 'prune_schedule' must be in [0, 1), got 1.5"),
        (lambda: PruneSchedule(epochs=-1.0), "option 'epochs' of pass 'prune_schedule' must be 0 or more"),
    ],
)
def test_bad_options_are_user_errors_naming_the_option(bundle, ctx, make, message):
    with pytest.raises(UserError) as err:
        apply_pass(make(), bundle, ctx)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: DropLayers(strategy="importance"),
            "strategy 'importance' of pass 'drop_layers' measures the task "
            "loss; expected a classifier and labelled --train-data",
        ),
        (
            lambda: TrimVocab(),
            "pass 'trim_vocab' keeps the tokens of the task's texts, but none were given; "
            "expected --train-data or --calibration (--data only scores",
        ),
        (
            lambda: PruneSchedule(),
            "pass 'prune_schedule' fine-tunes the pruned model on training texts, but none "
            "were given; expected --train-data",
        ),
    ],
)
def test_passes_that_need_texts_say_which_option_gives_them(bundle, make, message):
    with pytest.raises(UserError) as err:
        apply_pass(make(), bundle, context(bundle))
    assert str(err.value).startswith(message)


# --- drop_layers ----------------------------------------------------------------------------------


def test_drop_layers_every_other_keeps_the_even_layers(bundle):
    ctx = context(bundle)
    dropped, record = apply_pass(DropLayers(), bundle, ctx)
    assert record.notes == ["dropped layers [1] of 2, evenly spaced (strategy every_other)"]
    assert (dropped.config["num_hidden_layers"], dropped.num_layers) == (1, 1)
    assert torch.equal(
        encoder_layers(dropped.module)[0].attention.self.query.weight,
        encoder_layers(bundle.module)[0].attention.self.query.weight,
    )


def test_drop_layers_by_importance_measures_the_loss(bundle, ctx):
    _, record = apply_pass(DropLayers(strategy="importance"), bundle, ctx)
    assert record.fired
    assert "least harmful first (strategy importance): loss on 12 training texts" in record.notes[0]
    assert len(record.stats["dropped"]) == 1


def test_every_other_spreads_the_dropped_layers():
    from edgecompress.compress.drop_layers import evenly_spaced

    assert (evenly_spaced(6, 3), evenly_spaced(12, 4), evenly_spaced(6, 2)) == ([1, 3, 5], [1, 4, 7, 10], [1, 4])


# --- trim_vocab -----------------------------------------------------------------------------------


def test_trim_vocab_gives_identical_logits_on_the_corpus_through_its_own_tokenizer(bundle, ctx):
    trimmed, record = apply_pass(TrimVocab(), bundle, ctx)
    vocab = len(bundle.tokenizer)
    kept = record.stats["vocab_after"]
    assert kept < vocab and trimmed.config["vocab_size"] == kept
    assert record.notes[0] == f"kept {kept} of {vocab} tokens: those in 12 training texts, and the special tokens"
    assert record.notes[1].startswith(f"word embeddings {vocab}x32 -> {kept}x32")
    torch.testing.assert_close(logits(trimmed), logits(bundle), atol=0, rtol=0)
    assert trimmed.tokenizer_settings.files == ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def test_trimmed_tokenizer_files_number_the_kept_tokens_in_their_old_order(bundle, ctx):
    from transformers import AutoTokenizer

    trimmed, _ = apply_pass(TrimVocab(), bundle, ctx)
    folder = trimmed.tokenizer_dir
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    old = bundle.tokenizer.get_vocab()
    assert [old[t] for t in lines] == sorted(old[t] for t in lines)  # the old order
    assert json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"] == {t: i for i, t in enumerate(lines)}
    reloaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = reloaded("a very good movie")["input_ids"]
    assert [lines[i] for i in ids] == ["[CLS]", "a", "very", "good", "movie", "[SEP]"]
    assert reloaded.pad_token_id == trimmed.tokenizer_settings.pad_token_id == lines.index("[PAD]")


def test_trim_vocab_counts_calibration_ids_and_splits_unseen_words_into_kept_pieces(bundle, ctx):
    calibration = tokenize(bundle.tokenizer, ["a plot twist"], seq_len=SEQ, input_names=bundle.input_names)
    trimmed, record = apply_pass(TrimVocab(), bundle, dataclasses.replace(ctx, calibration=calibration))
    assert "12 training texts and 1 calibration texts" in record.notes[0]
    # The encoder's states are bit-identical; the logits only to float rounding: the classifier's tiny GEMM
    # rounds by the memory alignment of the copied weights (3.7e-9 on this machine, 0 on others).
    torch.testing.assert_close(hidden(trimmed, ["a plot twist"]), hidden(bundle, ["a plot twist"]), atol=0, rtol=0)
    torch.testing.assert_close(logits(trimmed, ["a plot twist"]), logits(bundle, ["a plot twist"]), atol=1e-6, rtol=0)
    assert bundle.tokenizer.tokenize("fun twist") == ["fun", "t", "##w", "##i", "##s", "##t"]
    assert trimmed.tokenizer.tokenize("fun twist") == ["fun", "t", "##w", "##i", "##s", "##t"]  # seen in calibration
    assert trimmed.tokenizer.tokenize("zebra") == ["[UNK]"]  # no kept pieces spell it


def test_trim_vocab_does_not_fire_when_every_token_occurs(bundle, ctx):
    everything = {"input_ids": np.arange(len(bundle.tokenizer))[None, :]}
    result, record = apply_pass(TrimVocab(), bundle, dataclasses.replace(ctx, calibration=everything))
    assert (result, record.fired) == (bundle, False)
    assert record.notes == [f"skipped: all {len(bundle.tokenizer)} tokens occur in the task's texts: nothing to trim"]


def test_trimmed_tokenizer_folder_goes_with_its_tokenizer(bundle, ctx):
    trimmed, _ = apply_pass(TrimVocab(), bundle, ctx)
    folder = trimmed.tokenizer_dir
    assert folder.is_dir()
    del trimmed
    gc.collect()
    assert not folder.exists()


# --- prune_schedule -------------------------------------------------------------------------------


def test_prune_schedule_prunes_on_the_cubic_schedule_and_recovers(bundle, ctx, caplog):
    schedule = PruneSchedule(heads=0.5, ffn=0.5, steps=3, epochs=1.0, batch_size=4)
    with caplog.at_level(logging.INFO, logger="edgecompress"):
        pruned, record = apply_pass(schedule, bundle, ctx)
    rounds = record.stats["rounds"]
    # s_i = 0.5 * (1 - (1 - i/3)^3) of 2 heads and 64 neurons: 0.35, 0.48, 0.5
    assert [r["removed"] for r in rounds] == [
        {"head": 1, "neuron": 23},
        {"head": 1, "neuron": 31},
        {"head": 1, "neuron": 32},
    ]
    assert [r["steps"] for r in rounds] == [3, 3, 3]
    assert (pruned.config["num_attention_heads"], pruned.config["intermediate_size"]) == (1, 32)
    assert (pruned.num_heads, pruned.num_layers, pruned.attention_width) == (1, 2, 16)
    assert record.notes[1].startswith(
        "round 1: 1 head, 23 neurons removed; recovery 3 steps of distillation on 12 training texts in "
    )
    assert "prune_schedule round 3/3: step 3/3" in caplog.text
    assert not torch.allclose(logits(pruned), masked_logits(bundle, "head", record.stats["removed"]["head"]))


def test_prune_schedule_without_recovery_equals_the_masked_original(bundle, ctx):
    pruned, record = apply_pass(PruneSchedule(heads=0.5, ffn=0.0, steps=2, epochs=0.0), bundle, ctx)
    assert list(record.stats["removed"]) == ["head"]
    torch.testing.assert_close(
        logits(pruned), masked_logits(bundle, "head", record.stats["removed"]["head"]), atol=1e-6, rtol=0
    )


def test_prune_schedule_on_a_sentence_encoder_distils_the_embedding(tiny_encoder, train_csv):
    encoder = load_bundle(tiny_encoder)
    ctx = context(encoder, train_data=load_dataset(train_csv, require_labels=False))
    pruned, record = apply_pass(PruneSchedule(steps=1, batch_size=4), encoder, ctx)
    assert "importance: weight magnitude (a sentence encoder has no task loss to take gradients of)" in record.notes[0]
    assert record.stats["rounds"][0]["steps"] == 3
    assert logits(pruned).shape == logits(encoder).shape == (12, 32)


# --- end to end -----------------------------------------------------------------------------------

ONE_SHOT_RECIPE = (
    """
[[compress]]
pass = "drop_layers"
[[compress]]
pass = "prune_heads"
ratio = 0.5
[[compress]]
pass = "prune_ffn"
ratio = 0.5
[[compress]]
pass = "trim_vocab"
"""
    + FLOAT_GRAPH_STAGE
)


# the tiny model has 2 layers of 2 heads and 64 FFN neurons; pruned.toml removes 3/4 of the neurons
@pytest.mark.parametrize("recipe, layers, neurons", [("packaged pruned.toml", 2, 16), ("one-shot passes", 1, 32)])
def test_pruned_models_export_with_one_fused_attention_per_layer(
    tiny_checkpoint, tiny_device, tiny_data, train_csv, tmp_path, recipe, layers, neurons
):
    path = recipes_dir() / "pruned.toml"
    if recipe == "one-shot passes":
        path = tmp_path / "one_shot.toml"
        path.write_text(ONE_SHOT_RECIPE)
    result = run_export(
        ExportRequest(
            model=tiny_checkpoint,
            device=str(tiny_device),
            out_root=tmp_path / "dist",
            data=tiny_data,
            train_data=train_csv,
            recipe=str(path),
            measure=False,
        )
    )
    report = result.report
    assert all(p["fired"] for p in report.passes if p["stage"] == "compress")
    fused = next(p for p in report.passes if p["name"] == "fuse_transformer")["stats"]["fused"]
    assert fused["Attention"] == layers
    config = report.model["config"]
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["intermediate_size"]) == (
        layers,
        1,
        neurons,
    )
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert "vocab.txt" in manifest["tokenizer"]["files"]
    shipped = (result.out_dir / "vocab.txt").read_text().split("\n")[:-1]
    assert len(shipped) == config["vocab_size"] < 110


@pytest.mark.slow
def test_trim_vocab_on_minilm_at_least_halves_the_embeddings_and_keeps_logits(minilm_classifier):
    """The vocabulary and corpus decide the trim, not the head: MiniLM's vocabulary on Rotten Tomatoes."""
    import example_assets

    bundle = load_bundle(minilm_classifier)
    train = load_dataset(example_assets.rotten_tomatoes_dir() / "train.csv", require_labels=True)
    trimmed, record = apply_pass(TrimVocab(), bundle, context(bundle, seq_len=64, train_data=train))
    assert 2 * record.stats["vocab_after"] <= record.stats["vocab_before"]
    texts = train.texts[::100]  # a spread of real training texts
    torch.testing.assert_close(logits(trimmed, texts, 64), logits(bundle, texts, 64), atol=0, rtol=0)


def test_trimmed_vocabulary_then_static_int8_calibrates_on_the_new_token_ids(
    tiny_checkpoint, tiny_device, tiny_data, train_csv, tmp_path
):
    """--quantize int8 on a trimming recipe: calibration texts are re-tokenized with the trimmed vocabulary
    (old ids would index past the end of the smaller table)."""
    path = tmp_path / "trim_only.toml"
    path.write_text('[[compress]]\npass = "trim_vocab"\n')
    result = run_export(
        ExportRequest(
            model=tiny_checkpoint,
            device=str(tiny_device),
            out_root=tmp_path / "dist",
            data=tiny_data,
            train_data=train_csv,
            recipe=str(path),
            quantize="int8",
            measure=False,
        )
    )
    records = {p["name"]: p for p in result.report.passes}
    assert records["trim_vocab"]["fired"] and records["quantize_static"]["fired"]
    assert result.report.recipe["name"] == "trim_only+int8"
    assert all(a.parity["passed"] for a in result.report.artifacts)
