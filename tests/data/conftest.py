"""Shared data fixtures: a small text corpus, a tokenizer trained on it, synthetic packed datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WORDS = ("the quick brown fox jumps over a lazy dog while 42 ravens count 1234567 stars; "
         "naïve café Ünïcödé 🦭 <|pad|> <|end_text|> tab\tand\nnewline {code} = x**2 // 7").split(" ")


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80))) for _ in range(n)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """Two parquet files (several row groups each, an extra column, a null and an empty row)."""
    d = tmp_path_factory.mktemp("corpus")
    a, b = make_docs(300, 1), make_docs(200, 2)
    a_col = a[:10] + [None, ""] + a[10:]
    pq.write_table(pa.table({"id": list(range(len(a_col))), "text": a_col}), d / "a.parquet", row_group_size=64)
    pq.write_table(pa.table({"text": b}), d / "b.parquet", row_group_size=50)
    return {"dir": d, "files": [str(d / "a.parquet"), str(d / "b.parquet")], "docs": {"a": a, "b": b}}


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory) -> str:
    from huginn.data.tokenizer import iter_texts, train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer(iter_texts(corpus["files"], "text"), 512, out)
    return str(out)


def make_packed(d: Path, n_rows: int, row_len: int = 5, rows_per_file=(7, 13, 4, 16), rg_rows: int = 3, tag: int = 0) -> Path:
    """A packed dataset whose row i is [tag*1e6 + i, i, i, ...]: every row identifiable."""
    from huginn.data.packing import rows_to_table

    d.mkdir(parents=True, exist_ok=True)
    files, start, k = [], 0, 0
    while start < n_rows:
        n = min(rows_per_file[k % len(rows_per_file)], n_rows - start)
        rows = np.repeat(np.arange(start, start + n, dtype=np.int32)[:, None], row_len, axis=1)
        rows[:, 0] += tag * 1_000_000
        name = f"f{k:03d}.parquet"
        pq.write_table(rows_to_table(rows), d / name, row_group_size=rg_rows)
        files.append({"name": name, "rows": n, "tokens": int(rows.size), "source": d.name})
        start += n
        k += 1
    manifest = {"format": "huginn-packed", "version": 1, "column": "input_ids", "seq_len": row_len - 1, "row_len": row_len,
                "tokenizer": {"path": "-", "sha256": "synthetic", "vocab_size": 2_000_000, "bos": None, "eos": 0, "pad": -1},
                "rows": n_rows, "tokens": n_rows * row_len, "documents": 0, "files": files, "sources": {}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def row_ids(batch) -> list[int]:
    """Identify rows of a batch from make_packed by their first id."""
    return [int(x) for x in np.asarray(batch)[:, 0]]
