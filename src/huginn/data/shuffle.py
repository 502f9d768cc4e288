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
    import pyarrow.parquet as pq

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
    pad = base_manifest["tokenizer"]["pad"]
    seq_len = row_len - 1
    R = rows_per_file or default_rows_per_file(seq_len)
    G = min(row_group_rows or default_row_group_rows(seq_len), R)
    total = int(sum(len(c) for c in copies))
    if total == 0:
        raise HuginnError(f"nothing to write to {out_dir}: the selection has no rows (check weights and val_fraction)")
    out = Path(out_dir)
    created = not out.exists()
    tmp = out / ".tmp"
    positions = np.random.default_rng(seed).permutation(total)
    n_out = -(-total // R)
    file_tokens = np.zeros(n_out, np.int64)  # non-pad ids per output file
    source_stats: dict[str, dict[str, int]] = {}
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        buffers: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        buffered = 0

        def flush() -> None:
            nonlocal buffered
            for j, parts in buffers.items():
                with open(tmp / f"{j:05d}.ids", "ab") as fi, open(tmp / f"{j:05d}.pos", "ab") as fp:
                    for pos, rows in parts:
                        rows.astype(np.int32).tofile(fi)
                        pos.astype(np.int64).tofile(fp)
            buffers.clear()
            buffered = 0

        offset = 0
        for (path, source), rows_sel in zip(files, copies):
            pos_sel = positions[offset : offset + len(rows_sel)]
            offset += len(rows_sel)
            if len(rows_sel) == 0:
                continue
            order = np.argsort(rows_sel, kind="stable")
            rows_sorted, pos_sorted = rows_sel[order], pos_sel[order]
            pf = pq.ParquetFile(path)
            start = 0
            src = source_stats.setdefault(source, {"rows": 0, "tokens": 0})
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                a, b = np.searchsorted(rows_sorted, [start, start + n])
                if b > a:
                    data = table_to_rows(pf.read_row_group(g, columns=[COLUMN]))
                    if data.shape[1] != row_len:
                        raise HuginnError(
                            f"{path} has rows of {data.shape[1]} ids, expected {row_len}; its manifest does not match"
                        )
                    picked, pos = data[rows_sorted[a:b] - start], pos_sorted[a:b]
                    toks = (picked != pad).sum(axis=1)
                    src["rows"] += len(picked)
                    src["tokens"] += int(toks.sum())
                    bucket = pos // R
                    np.add.at(file_tokens, bucket, toks)
                    for j in np.unique(bucket):
                        m = bucket == j
                        buffers.setdefault(int(j), []).append((pos[m], picked[m]))
                    buffered += picked.nbytes
                    if buffered > buffer_bytes:
                        flush()
                start += n
        flush()
        records: list[dict] = []
        for j in range(n_out):
            ids = np.fromfile(tmp / f"{j:05d}.ids", np.int32).reshape(-1, row_len)
            pos = np.fromfile(tmp / f"{j:05d}.pos", np.int64)
            name = f"part-{j:05d}.parquet"
            pq.write_table(rows_to_table(ids[np.argsort(pos)]), tmp / name, row_group_size=G, compression="zstd")
            os.remove(tmp / f"{j:05d}.ids")
            os.remove(tmp / f"{j:05d}.pos")
            records.append({"name": name, "rows": len(ids), "tokens": int(file_tokens[j])})
        for r in records:
            os.replace(tmp / r["name"], out / r["name"])
        manifest = {k: base_manifest[k] for k in ("format", "version", "column", "seq_len", "row_len", "tokenizer")}
        manifest.update(
            {
                "rows": total,
                "tokens": int(file_tokens.sum()),
                "files": records,
                "sources": source_stats,
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
