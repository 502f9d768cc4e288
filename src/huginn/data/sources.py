"""Resolve and validate parquet inputs: files, directories and globs, grouped into named sources.

Every check that can fail on user input happens here, before any output is written, so a bad
input leaves nothing behind: unreadable or non-parquet files, a missing column (the message
names the columns that exist), a column that is not text, and empty input. Text that is not valid
UTF-8 shows only when it is read; `decode_texts` turns it into a one-line error naming the file,
column and row.

Non-goals: remote filesystems (a cluster run reads shared paths; see `huginn.data.scaleout`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huginn.errors import HuginnError


@dataclass(frozen=True)
class InputFile:
    """One parquet input: its path, the source it belongs to, and its row-group sizes."""

    path: str
    source: str
    row_groups: tuple[int, ...]  # rows per row group
    text_bytes: tuple[int, ...]  # uncompressed size of the text column per row group (work estimate)

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


def open_parquet(path: str | Path, column: str | None = None):
    """Open a parquet file, turning every failure into one actionable line."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise HuginnError(f"input {path} does not exist; check the path")
    if p.is_dir():
        raise HuginnError(f"input {path} is a directory; pass parquet files or the directory itself as --input")
    try:
        pf = pq.ParquetFile(str(p))
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HuginnError(
            f"input {path} is not a readable parquet file ({reason}); convert it to parquet or drop it"
        ) from None
    if column is not None:
        names = pf.schema_arrow.names
        if column not in names:
            raise HuginnError(
                f"input {path} has no column {column!r}; available columns: {', '.join(names)} (pick one with --text-column)"
            )
        import pyarrow as pa

        typ = pf.schema_arrow.field(column).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise HuginnError(
                f"column {column!r} of {path} has type {typ}, not text; pick a text column with --text-column"
            )
    return pf


def decode_texts(column, path: str | Path, text_column: str, first_row: int) -> list:
    """Python strings (or None) of one record batch's text column; invalid UTF-8 becomes a
    one-line `HuginnError` naming the file, the column and the row (counted from 0 in the file)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        pass
    bad = first_row
    for i in range(len(column)):  # only on the error path: find the first bad row
        try:
            column[i].as_py()
        except UnicodeDecodeError:
            bad = first_row + i
            break
    raise HuginnError(
        f"input {path} has invalid UTF-8 in column {text_column!r} at row {bad}; re-encode the file as UTF-8 or drop that row"
    )


def _expand(spec: str) -> tuple[str | None, list[str]]:
    """`[NAME=]PATH` -> (NAME, files): a file, every *.parquet under a directory, or a glob."""
    name, path = None, spec
    if "=" in spec and not os.path.exists(spec):
        name, _, path = spec.partition("=")
        name = name or None
    if any(c in path for c in "*?["):
        files = sorted(glob.glob(path, recursive=True))
        if not files:
            raise HuginnError(f"--input {path} matches no files; check the pattern")
        return name, files
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if not files:
            raise HuginnError(f"--input directory {path} holds no *.parquet files")
        return name or p.name, files
    return name, [path]


def resolve_inputs(specs: Sequence[str], text_column: str) -> list[InputFile]:
    """Expand and validate inputs; the source of a file is `NAME=` if given, its directory for a
    directory input, else the file's stem. Raises `HuginnError` on any bad input."""
    if not specs:
        raise HuginnError("no --input given; pass one or more parquet files or directories")
    out: list[InputFile] = []
    seen: set[str] = set()
    for spec in specs:
        name, files = _expand(spec)
        for f in files:
            key = os.path.realpath(f)
            if key in seen:
                continue  # the same file twice would double its documents silently
            seen.add(key)
            pf = open_parquet(f, text_column)
            meta = pf.metadata
            col = pf.schema_arrow.names.index(text_column)
            rgs = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            sizes = tuple(
                max(1, meta.row_group(i).column(col).total_uncompressed_size) for i in range(meta.num_row_groups)
            )
            out.append(InputFile(str(f), name or Path(f).stem, rgs, sizes))
    if sum(f.num_rows for f in out) == 0:
        raise HuginnError(f"the input ({', '.join(specs)}) has no rows; pass non-empty parquet files")
    return out
