"""Helpers for data tests: synthetic packed datasets with identifiable rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def make_packed(
    d: Path, n_rows: int, row_len: int = 5, rows_per_file=(7, 13, 4, 16), rg_rows: int = 3, tag: int = 0
) -> Path:
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
    manifest = {
        "format": "huginn-packed",
        "version": 1,
        "column": "input_ids",
        "seq_len": row_len - 1,
        "row_len": row_len,
        "tokenizer": {"path": "-", "sha256": "synthetic", "vocab_size": 2_000_000, "bos": None, "eos": 0, "pad": -1},
        "rows": n_rows,
        "tokens": n_rows * row_len,
        "documents": 0,
        "files": files,
        "sources": {},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def row_ids(batch) -> list[int]:
    """Identify rows of a batch from make_packed by their first id."""
    return [int(x) for x in np.asarray(batch)[:, 0]]
