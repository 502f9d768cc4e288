"""Shared data fixtures: a small text corpus, a tokenizer trained on it, synthetic packed datasets."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "42",
    "ravens",
    "count",
    "1234567",
    "stars;",
    "naïve",
    "café",
    "Ünïcödé",
    "🦭",
    "<|pad|>",
    "<|end_text|>",
    "tab\tand\nnewline",
    "{code}",
    "=",
    "x**2",
    "//",
    "7",
]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80))) for _ in range(n)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """Two parquet files (several row groups each, an extra column, a null and an empty row)."""
    d = tmp_path_factory.mktemp("corpus")
    a, b = make_docs(300, 1), make_docs(200, 2)
    a_col = [*a[:10], None, "", *a[10:]]
    pq.write_table(pa.table({"id": list(range(len(a_col))), "text": a_col}), d / "a.parquet", row_group_size=64)
    pq.write_table(pa.table({"text": b}), d / "b.parquet", row_group_size=50)
    return {"dir": d, "files": [str(d / "a.parquet"), str(d / "b.parquet")], "docs": {"a": a, "b": b}}


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory) -> str:
    from huginn.data.tokenizer import iter_texts, train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer(iter_texts(corpus["files"], "text"), 512, out)
    return str(out)
