"""Pack token streams into fixed rows of L+1 ids and write them as bounded parquet files.

Every document becomes `<|begin_text|> tokens <|end_text|>`; documents are concatenated and cut
into rows of L+1 ids, a document continuing into the next row where it does not fit (no token
is dropped: the reference's "every token is sacred" mode). Only the last row of a file can be
short; it is filled with the pad id. Rows are a `list<int32>` column `input_ids`.

Non-goals: per-document masks or document-start alignment (the reference's "incinerate ends"
mode drops tokens, which would break losslessness).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

COLUMN = "input_ids"


def frame_documents(id_lists: list[list[int]], bos: int | None, eos: int) -> np.ndarray:
    """Concatenate documents as `[bos] ids [eos]` into one int32 array (vectorized)."""
    n = len(id_lists)
    if n == 0:
        return np.empty(0, np.int32)
    lens = np.fromiter(map(len, id_lists), np.int64, n)
    extra = 2 if bos is not None else 1
    total = int(lens.sum()) + extra * n
    out = np.empty(total, np.int32)
    ends = np.cumsum(lens + extra)  # one past each document's eos
    eos_at = ends - 1
    mask = np.ones(total, bool)
    mask[eos_at] = False
    out[eos_at] = eos
    if bos is not None:
        bos_at = ends - lens - extra
        mask[bos_at] = False
        out[bos_at] = bos
    out[mask] = np.fromiter((i for ids in id_lists for i in ids), np.int32, int(lens.sum()))
    return out


class RowPacker:
    """Accumulates token ids and hands out full rows of `row_len`; keeps the remainder."""

    def __init__(self, row_len: int):
        self.row_len = row_len
        self._parts: list[np.ndarray] = []
        self._n = 0

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Add ids; return the full rows now available, shape (rows, row_len)."""
        self._parts.append(ids)
        self._n += len(ids)
        rows = self._n // self.row_len
        if rows == 0:
            return np.empty((0, self.row_len), np.int32)
        flat = np.concatenate(self._parts)
        cut = rows * self.row_len
        self._parts = [flat[cut:]]
        self._n = len(flat) - cut
        return flat[:cut].reshape(rows, self.row_len)

    def finish(self, pad: int) -> np.ndarray:
        """The remainder as one padded row (shape (0 or 1, row_len))."""
        if self._n == 0:
            return np.empty((0, self.row_len), np.int32)
        row = np.full(self.row_len, pad, np.int32)
        row[: self._n] = np.concatenate(self._parts)
        self._parts, self._n = [], 0
        return row[None]


def rows_to_table(rows: np.ndarray):
    """(n, row_len) int32 -> arrow table with one `list<int32>` column."""
    import pyarrow as pa

    n, width = rows.shape
    flat = pa.array(np.ascontiguousarray(rows, np.int32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.table({COLUMN: pa.ListArray.from_arrays(offsets, flat)})


def table_to_rows(table, column: str = COLUMN) -> np.ndarray:
    """Arrow table of equal-length id lists -> (n, row_len) int32 array."""
    col = table.column(column).combine_chunks()
    n = len(col)
    if n == 0:
        return np.empty((0, 0), np.int32)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return values.reshape(n, -1)


class ShardWriter:
    """Writes rows into parquet files of at most `rows_per_file` rows, each under a temporary
    name that becomes final only in `commit()` (so a crash never leaves a half-written file)."""

    def __init__(self, out_dir: Path, prefix: str, row_len: int, rows_per_file: int, row_group_rows: int, pad: int):
        self.out_dir, self.prefix = out_dir, prefix
        self.row_len, self.rows_per_file, self.row_group_rows, self.pad = row_len, rows_per_file, row_group_rows, pad
        self.tmp_dir = out_dir / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.files: list[dict] = []  # finished files: name, rows, tokens (non-pad)
        self._writer: Any = None  # the open pyarrow ParquetWriter (untyped library), or None
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def _open(self):
        import pyarrow.parquet as pq

        name = f"{self.prefix}-{len(self.files):04d}.parquet"
        tmp = self.tmp_dir / f"{name}.{os.getpid()}"
        schema = rows_to_table(np.zeros((1, self.row_len), np.int32)).schema
        self._writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
        self.files.append({"name": name, "tmp": str(tmp), "rows": 0, "tokens": 0})

    def _flush(self, rows: np.ndarray) -> None:
        if self._writer is None:
            self._open()
        self._writer.write_table(rows_to_table(rows), row_group_size=self.row_group_rows)
        self.files[-1]["rows"] += len(rows)
        # special tokens in text are encoded as text, so the pad id only ever marks padding
        self.files[-1]["tokens"] += int((rows != self.pad).sum())
        if self.files[-1]["rows"] >= self.rows_per_file:
            self._writer.close()
            self._writer = None

    def write(self, rows: np.ndarray) -> None:
        """Queue rows; write whole row groups, never crossing the per-file row limit."""
        if len(rows):
            self._pending.append(rows)
            self._pending_rows += len(rows)
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        if not self._pending_rows:
            return
        allrows = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        start = 0
        while start < len(allrows):
            room = self.rows_per_file - (self.files[-1]["rows"] if self._writer is not None else 0)
            take = min(self.row_group_rows, room, len(allrows) - start)
            if take < min(self.row_group_rows, room) and not final:
                break  # wait for a full row group
            self._flush(allrows[start : start + take])
            start += take
        rest = allrows[start:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> None:
        self._drain(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self) -> list[dict]:
        """Rename every temporary file to its final name; return the file records."""
        self.close()
        for f in self.files:
            os.replace(f.pop("tmp"), self.out_dir / f["name"])
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for f in self.files:
            if "tmp" in f and os.path.exists(f["tmp"]):
                os.remove(f["tmp"])
