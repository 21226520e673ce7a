"""Data: every bad --data file is one `error:` line with exit 2 naming file (and line), nothing is written;
good CSV/TSV/JSONL files map onto the model's labels exactly as the pipeline uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.intake.data import label_ids, load_dataset, tokenize

from conftest import user_error

LABELS = "['negative', 'positive']"


def run_export(model, device, data, out: Path):
    return CliRunner().invoke(
        main, ["export", str(model), "--device", str(device), "--data", str(data), "-o", str(out), "--no-measure"]
    )


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


@pytest.fixture(scope="module")
def classifier(tiny_checkpoint):
    from edgecompress.intake.model import load_bundle

    return load_bundle(tiny_checkpoint)


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    from edgecompress.intake.model import load_bundle

    return load_bundle(tiny_encoder)


def prepare(bundle, path: Path, seq_len: int = 16):
    """The pipeline's own data stage: load, check labels against the model, tokenize."""
    from edgecompress.intake.data import prepare_eval_data

    data = prepare_eval_data(bundle, path, seq_len)
    return data.dataset, data.feeds, data.gold


# ---- bad files, through the CLI ----------------------------------------------------------------------------------


def test_data_missing(tmp_path, tiny_checkpoint, tiny_device, out):
    line = user_error(run_export(tiny_checkpoint, tiny_device, tmp_path / "eval.csv", out), out)
    assert line == (
        f"error: {tmp_path / 'eval.csv'}: data file does not exist; "
        "expected a .csv, .tsv, .jsonl file with a text column"
    )


def test_data_unknown_format(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.txt", "text,label\nfun,positive\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == (
        f"error: {path}: unknown data format '.txt'; expected one of .csv, .tsv, .jsonl; hint: CoNLL files are "
        "token-classification data and SQuAD .json question-answering data"
    )


def test_data_empty_file(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}: data file has no rows; expected a header line and at least one row"


def test_data_header_only(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "text,label\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}: data file has no rows; expected a header line and at least one row"


def test_data_empty_jsonl(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.jsonl", "\n\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}: data file has no rows; expected one JSON object per line"


def test_no_text_column(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "body,label\nfun,positive\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == (
        f"error: {path}: no text column among ['body', 'label']; expected one of text, sentence, review, content"
    )


def test_no_label_column_for_a_classifier(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "text,score\nfun,5\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == (
        f"error: {path}: no label column among ['text', 'score']; expected one of label, labels, category, class"
    )


def test_labels_the_model_does_not_know(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "text,label\nfun,happy\nbad,sad\ngreat,positive\nmeh,happy\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == (
        f"error: {path}: labels ['happy', 'sad'] are not known to the model; "
        f"expected labels among {LABELS} (from config.json id2label)"
    )


def test_integer_labels_out_of_range(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "text,label\nfun,1\nbad,0\nodd,2\nodder,7\n")
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == (
        f"error: {path}: integer labels [2, 7] are out of range for the model's 2 labels; "
        f"expected 0..1 or names among {LABELS} (from config.json id2label)"
    )


@pytest.mark.parametrize(
    "text, line_no",
    [
        ("text,label\nfun,positive\nbad,\n", 3),  # blank label
        ("text,label\nfun,positive\nbad\n", 3),  # short row: no label field at all
        ('text,label\n"multi\nline",positive\nbad,\n', 4),  # line numbers count quoted newlines
    ],
)
def test_row_without_a_label_names_its_line(tmp_path, tiny_checkpoint, tiny_device, out, text, line_no):
    path = write(tmp_path / "eval.csv", text)
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}:{line_no}: row has no value in the 'label' column; expected a label on every row"


def test_jsonl_bad_line_names_the_line_number(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(
        tmp_path / "eval.jsonl",
        '{"text": "fun", "label": "positive"}\n\n{"text": "bad", "label": \n{"text": "ok", "label": "negative"}\n',
    )
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}:3: invalid JSON (Expecting value)"


def test_jsonl_line_that_is_not_an_object(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.jsonl", '{"text": "fun", "label": "positive"}\n["bad", "negative"]\n')
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}:2: each line must be a JSON object"


def test_jsonl_not_utf8_names_the_line(tmp_path, tiny_checkpoint, tiny_device, out):
    # Used to escape as a UnicodeDecodeError traceback.
    path = write(
        tmp_path / "eval.jsonl",
        b'{"text": "fun", "label": "positive"}\n' + '{"text": "caf\xe9", "label": "positive"}\n'.encode("latin-1"),
    )
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line == f"error: {path}:2: not UTF-8 text (invalid continuation byte at byte 13); expected UTF-8 text"


def test_csv_not_utf8(tmp_path, tiny_checkpoint, tiny_device, out):
    path = write(tmp_path / "eval.csv", "text,label\ncaf\xe9,positive\n".encode("latin-1"))
    line = user_error(run_export(tiny_checkpoint, tiny_device, path, out), out)
    assert line.startswith(f"error: {path}: cannot parse file (")
    assert line.endswith("; expected UTF-8 text")


# ---- good files, through the pipeline's data stage -----------------------------------------------------------


def test_csv_named_labels(classifier, tiny_data):
    dataset, feeds, labels = prepare(classifier, tiny_data)
    assert len(dataset) == 12
    assert labels.tolist() == [1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0]
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.shape == (12, 16) and v.dtype == np.int64 for v in feeds.values())


def test_tsv_works(classifier, tmp_path):
    path = write(tmp_path / "eval.tsv", "sentence\tlabel\na good, fun movie\tpositive\nthe worst film\tnegative\n")
    dataset, feeds, labels = prepare(classifier, path)
    assert dataset.texts == ["a good, fun movie", "the worst film"]
    assert labels.tolist() == [1, 0]
    assert feeds["input_ids"].shape == (2, 16)


def test_integer_labels_work(classifier, tmp_path):
    path = write(tmp_path / "eval.csv", "text,label\nfun,1\nbad,0\ngreat, 1 \n")
    _, _, labels = prepare(classifier, path)
    assert labels.tolist() == [1, 0, 1]


def test_jsonl_works_with_integer_labels_and_blank_lines(classifier, tmp_path):
    path = write(tmp_path / "eval.jsonl", '{"review": "fun", "category": 1}\n\n{"review": "bad", "category": 0}\n')
    dataset, _, labels = prepare(classifier, path)
    assert dataset.texts == ["fun", "bad"]
    assert labels.tolist() == [1, 0]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_utf8_byte_order_mark_is_skipped(classifier, tmp_path, suffix):
    # Excel's "CSV UTF-8" starts with a BOM; the header used to read '\ufefftext' -> "no text column".
    body = "text,label\nfun,positive\n" if suffix == ".csv" else '{"text": "fun", "label": "positive"}\n'
    path = write(tmp_path / f"eval{suffix}", b"\xef\xbb\xbf" + body.encode())
    dataset, _, labels = prepare(classifier, path)
    assert dataset.texts == ["fun"] and labels.tolist() == [1]


def test_header_names_are_case_and_space_insensitive(tmp_path):
    path = write(tmp_path / "eval.csv", " Text ,LABEL\nfun,positive\n")
    dataset = load_dataset(path, require_labels=True)
    assert dataset.texts == ["fun"] and dataset.labels == ["positive"]


def test_embedding_model_needs_no_label_column(encoder, tmp_path):
    path = write(tmp_path / "texts.csv", "text\nfun\nbad\n")
    dataset, feeds, labels = prepare(encoder, path)
    assert labels is None and len(dataset) == 2
    assert feeds["input_ids"].shape == (2, 16)


def test_unlabelled_rows_are_fine_when_labels_are_not_required(tmp_path):
    path = write(tmp_path / "calibration.csv", "text,label\nfun,\nbad,negative\n")
    assert load_dataset(path, require_labels=False).texts == ["fun", "bad"]


def test_built_in_samples_without_data(classifier):
    dataset, feeds, labels = prepare(classifier, None)
    assert labels is None and len(dataset) > 0
    assert feeds["input_ids"].shape == (len(dataset), 16)


def test_seq_len_longer_than_the_model_allows(classifier, tiny_data):
    from edgecompress.errors import UserError

    with pytest.raises(UserError, match=r"device seq_len 128 exceeds the model's maximum length 64"):
        prepare(classifier, tiny_data, seq_len=128)


def test_tokenize_pads_truncates_and_fills_token_types(classifier):
    long = " ".join(["good"] * 40)
    feeds = tokenize(classifier.tokenizer, ["fun", long], seq_len=8, input_names=classifier.input_names)
    assert feeds["input_ids"].shape == (2, 8)
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1] * 8]
    assert feeds["input_ids"][0, 0] == classifier.tokenizer.cls_token_id
    assert feeds["input_ids"][1, -1] == classifier.tokenizer.sep_token_id
    assert not feeds["token_type_ids"].any()


def test_label_ids_prefers_names_and_reports_unknown_ones():
    from edgecompress.errors import UserError
    from edgecompress.intake.data import TextDataset

    data = TextDataset(Path("x.csv"), ["a", "b"], ["positive", "negative"])
    assert label_ids(data, ["negative", "positive"]).tolist() == [1, 0]
    # Labels named "0"/"1" in the model are names, not indices.
    assert label_ids(TextDataset(Path("x.csv"), ["a"], ["1"]), ["1", "0"]).tolist() == [0]
    many = TextDataset(Path("x.csv"), list("abcdefg"), list("abcdefg"))
    with pytest.raises(UserError, match=r"labels \['a', 'b', 'c', 'd', 'e'\] and 2 more are not known"):
        label_ids(many, ["negative", "positive"])
