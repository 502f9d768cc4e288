"""Deterministic global shuffle of packed rows across files, in bounded memory.

A two-pass external shuffle. Every output row ("copy" of an input row; mixing may repeat rows)
gets a position from one seeded permutation; output file j holds positions [j*R, (j+1)*R).
Pass 1 streams the inputs one row group at a time and appends each row to the spill file of
its output file; pass 2 loads one spill file at a time, orders it by position and writes the
parquet file. Memory: the spill buffer (`buffer_bytes`) plus one output file, plus 16 bytes of
bookkeeping per row; I/O: every row is read twice and written twice, whatever the seed.

Everything is written under `OUT/.tmp` and renamed into place at the end; on failure nothing is
left behind. The same seed and inputs give byte-identical files.

Non-goals: shuffling raw text (shuffle after `tokenize`), resuming a half-done shuffle.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from huginn.data.packing import COLUMN, rows_to_table, table_to_rows
from huginn.errors import HuginnError
from huginn.outdir import check_writable_out


def _input_files(dataset: str | Path) -> tuple[dict, list[tuple[str, int, str]]]:
    """(manifest, [(path, rows, source)]) of a finished dataset directory."""
    from huginn.data.tokenize import read_manifest

    m = read_manifest(dataset)
    return m, [(str(Path(dataset) / f["name"]), f["rows"], f.get("source", Path(dataset).name)) for f in m["files"]]


def check_compatible(manifests: Sequence[dict], names: Sequence[str]) -> dict:
    """All datasets must share row length and tokenizer; return the first manifest."""
    first = manifests[0]
    for m, n in zip(manifests[1:], names[1:]):
        if m["row_len"] != first["row_len"]:
            raise HuginnError(
                f"{n} has rows of {m['row_len']} ids but {names[0]} has {first['row_len']}; tokenize all sources with the same --seq-len"
            )
        if m["tokenizer"]["sha256"] != first["tokenizer"]["sha256"]:
            raise HuginnError(
                f"{n} and {names[0]} were tokenized with different tokenizers; re-tokenize with one tokenizer"
            )
    return first


def check_seed(seed: int) -> None:
    """numpy seeds are non-negative; say so in one line instead of numpy's traceback."""
    if seed < 0:
        raise HuginnError(f"--seed must be 0 or more, got {seed}")


class _Spill:
    """Pass 1's buffer: rows bound for output file j (by position) are appended to `j.ids` and
    `j.pos` under `tmp` whenever more than `buffer_bytes` of rows are held. Also counts the
    non-pad ids of every output file (`tokens`)."""

    def __init__(self, tmp: Path, rows_per_file: int, n_out: int, buffer_bytes: int):
        self.tmp, self.rows_per_file, self.buffer_bytes = tmp, rows_per_file, buffer_bytes
        self.tokens = np.zeros(n_out, np.int64)  # non-pad ids per output file
        self.buffers: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.buffered = 0

    def paths(self, j: int) -> tuple[Path, Path]:
        """The spill files of output file j: its rows and their positions."""
        return self.tmp / f"{j:05d}.ids", self.tmp / f"{j:05d}.pos"

    def add(self, pos: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> None:
        """Rows `rows` go to output positions `pos`; `tokens` are their non-pad counts."""
        bucket = pos // self.rows_per_file
        np.add.at(self.tokens, bucket, tokens)
        for j in np.unique(bucket):
            m = bucket == j
            self.buffers.setdefault(int(j), []).append((pos[m], rows[m]))
        self.buffered += rows.nbytes
        if self.buffered > self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        for j, parts in self.buffers.items():
            ids_path, pos_path = self.paths(j)
            with open(ids_path, "ab") as fi, open(pos_path, "ab") as fp:
                for pos, rows in parts:
                    rows.astype(np.int32).tofile(fi)
                    pos.astype(np.int64).tofile(fp)
        self.buffers.clear()
        self.buffered = 0


def _selected_rows(path: str, rows_sel: np.ndarray, pos_sel: np.ndarray, row_len: int):
    """Yield (rows, their output positions) of the rows `rows_sel` of parquet file `path`, read
    one row group at a time (only the groups that hold a selected row)."""
    import pyarrow.parquet as pq

    order = np.argsort(rows_sel, kind="stable")
    rows_sorted, pos_sorted = rows_sel[order], pos_sel[order]
    pf = pq.ParquetFile(path)
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        a, b = np.searchsorted(rows_sorted, [start, start + n])
        if b > a:
            data = table_to_rows(pf.read_row_group(g, columns=[COLUMN]))
            if data.shape[1] != row_len:
                raise HuginnError(
                    f"{path} has rows of {data.shape[1]} ids, expected {row_len}; its manifest does not match"
                )
            yield data[rows_sorted[a:b] - start], pos_sorted[a:b]
        start += n


def _spill_inputs(
    files: Sequence[tuple[str, str]],
    copies: Sequence[np.ndarray],
    positions: np.ndarray,
    spill: _Spill,
    row_len: int,
    pad: int,
) -> dict[str, dict[str, int]]:
    """Pass 1: every selected row into the spill file of its output file (`positions` holds the
    output positions of all copies, file after file); returns rows and tokens per source."""
    sources: dict[str, dict[str, int]] = {}
    offset = 0
    for (path, source), rows_sel in zip(files, copies):
        pos_sel = positions[offset : offset + len(rows_sel)]
        offset += len(rows_sel)
        if len(rows_sel) == 0:
            continue
        counts = sources.setdefault(source, {"rows": 0, "tokens": 0})
        for rows, pos in _selected_rows(path, rows_sel, pos_sel, row_len):
            tokens = (rows != pad).sum(axis=1)
            counts["rows"] += len(rows)
            counts["tokens"] += int(tokens.sum())
            spill.add(pos, rows, tokens)
    spill.flush()
    return sources


def _write_parts(spill: _Spill, row_len: int, row_group_rows: int) -> list[dict]:
    """Pass 2: each output file's spilled rows, ordered by position, as `part-j.parquet` in the
    spill folder; returns the manifest's file records."""
    import pyarrow.parquet as pq

    records: list[dict] = []
    for j in range(len(spill.tokens)):
        ids_path, pos_path = spill.paths(j)
        ids = np.fromfile(ids_path, np.int32).reshape(-1, row_len)
        pos = np.fromfile(pos_path, np.int64)
        name = f"part-{j:05d}.parquet"
        pq.write_table(
            rows_to_table(ids[np.argsort(pos)]), spill.tmp / name, row_group_size=row_group_rows, compression="zstd"
        )
        os.remove(ids_path)
        os.remove(pos_path)
        records.append({"name": name, "rows": len(ids), "tokens": int(spill.tokens[j])})
    return records


def write_shuffled(
    files: Sequence[tuple[str, str]],
    copies: Sequence[np.ndarray],
    out_dir: str | Path,
    *,
    base_manifest: dict,
    seed: int,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
    buffer_bytes: int = 256 << 20,
    extra: dict | None = None,
) -> dict:
    """Write `copies[i]` (row indices of input file `files[i] = (path, source)`, repeats allowed)
    in one seeded random order as a packed dataset in `out_dir`; returns its manifest."""
    from huginn.data.tokenize import (
        MANIFEST,
        _atomic_write_json,
        check_count,
        default_row_group_rows,
        default_rows_per_file,
    )

    check_count("--rows-per-file", rows_per_file)
    check_count("--row-group-rows", row_group_rows)
    check_seed(seed)
    row_len = base_manifest["row_len"]
    R = rows_per_file or default_rows_per_file(row_len - 1)
    G = min(row_group_rows or default_row_group_rows(row_len - 1), R)
    total = int(sum(len(c) for c in copies))
    if total == 0:
        raise HuginnError(f"nothing to write to {out_dir}: the selection has no rows (check weights and val_fraction)")
    out = Path(out_dir)
    created = not out.exists()
    tmp = out / ".tmp"
    positions = np.random.default_rng(seed).permutation(total)
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        spill = _Spill(tmp, R, -(-total // R), buffer_bytes)
        sources = _spill_inputs(files, copies, positions, spill, row_len, base_manifest["tokenizer"]["pad"])
        records = _write_parts(spill, row_len, G)
        for r in records:
            os.replace(tmp / r["name"], out / r["name"])
        manifest = {k: base_manifest[k] for k in ("format", "version", "column", "seq_len", "row_len", "tokenizer")}
        manifest.update(
            {
                "rows": total,
                "tokens": int(spill.tokens.sum()),
                "files": records,
                "sources": sources,
                "shuffle_seed": seed,
                **(extra or {}),
            }
        )
        _atomic_write_json(out / MANIFEST, manifest)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def shuffle_datasets(
    datasets: Sequence[str | Path],
    out_dir: str | Path,
    *,
    seed: int = 0,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
    buffer_bytes: int = 256 << 20,
) -> dict:
    """Every row of `datasets`, once, in one seeded global order across all files."""
    check_writable_out(out_dir)
    manifests, files = [], []
    for d in datasets:
        m, fs = _input_files(d)
        manifests.append(m)
        files += fs
    base = check_compatible(manifests, [str(d) for d in datasets])
    return write_shuffled(
        [(p, s) for p, _, s in files],
        [np.arange(n) for _, n, _ in files],
        out_dir,
        base_manifest=base,
        seed=seed,
        rows_per_file=rows_per_file,
        row_group_rows=row_group_rows,
        buffer_bytes=buffer_bytes,
    )
