"""Tokenize parquet text into packed parquet rows of L+1 ids: parallel, bounded, resumable.

The job is split into work units: runs of consecutive row groups of one input file (about
`unit_bytes` of text each). Units run in `workers` processes; each streams its row groups in
small record batches, encodes them, packs rows (`huginn.data.packing`) and writes its own
output files under temporary names. A unit becomes final in two atomic steps: its files are
renamed, then its record `.progress/unit-NNNNN.json` is written. A rerun of the same command
skips every unit with a record, so an interrupted job resumes where it stopped. `manifest.json`
is written last, once every unit is done; readers (`PackedLoader`, `mix`, `shuffle`) refuse a
directory without it.

All inputs are validated before anything is written (`huginn.data.sources`), so bad input
leaves no output at all; a user mistake found later (text that is not UTF-8) removes the output
of a job the same call started, so a rerun after fixing the input starts clean. Temporary files
live in OUT/.tmp, which is removed on every exit (error, Ctrl-C, and SIGTERM from the command
line) and at the start of a rerun. Memory per worker is bounded by one record batch plus one row
group.

Non-goals: cross-machine scheduling (see `huginn.data.scaleout`, which runs these same units
on datatrove executors).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from huginn.data.packing import COLUMN, RowPacker, ShardWriter, frame_documents
from huginn.data.sources import InputFile, decode_texts, open_parquet, resolve_inputs
from huginn.errors import HuginnError
from huginn.outdir import check_writable_out

MANIFEST = "manifest.json"
PROGRESS = ".progress"
TMP = ".tmp"  # temporary files of units in flight (`huginn.data.packing.ShardWriter`)
FORMAT = "huginn-packed"
MIN_UNITS = 16  # split small inputs at least this finely (by row group) so workers share them


@dataclass(frozen=True)
class PackSettings:
    """Everything that determines the output bytes (a resumed job must use the same)."""

    tokenizer_dir: str
    tokenizer_sha256: str
    text_column: str
    seq_len: int
    rows_per_file: int
    row_group_rows: int
    bos: int | None
    eos: int
    pad: int
    vocab_size: int


@dataclass(frozen=True)
class Unit:
    """A run of consecutive row groups of one input file; it writes `{index:05d}-NNNN.parquet`."""

    index: int
    path: str
    source: str
    row_groups: tuple[int, ...]


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def default_rows_per_file(seq_len: int, target_bytes: int = 256 << 20) -> int:
    """Rows per output file so that a file holds about `target_bytes` of int32 ids."""
    return max(1, target_bytes // (4 * (seq_len + 1)))


def default_row_group_rows(seq_len: int, target_bytes: int = 8 << 20) -> int:
    """Rows per row group (the loader's unit of reading) of about `target_bytes`."""
    return max(1, target_bytes // (4 * (seq_len + 1)))


def check_count(flag: str, value: int | None) -> None:
    """Raise a one-line `HuginnError` if an optional count (None: the default) is below 1."""
    if value is not None and value < 1:
        raise HuginnError(f"{flag} must be at least 1, got {value}; leave it out for the default")


def make_settings(
    tokenizer_dir: str | Path,
    text_column: str,
    seq_len: int,
    *,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
    add_bos: bool = True,
) -> PackSettings:
    from huginn.data.tokenizer import load_tokenizer, tokenizer_ids

    if seq_len < 1:
        raise HuginnError(f"--seq-len must be at least 1, got {seq_len}")
    check_count("--rows-per-file", rows_per_file)
    check_count("--row-group-rows", row_group_rows)
    tok = load_tokenizer(tokenizer_dir)
    ids = tokenizer_ids(tok)
    sha = hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()
    rpf = rows_per_file or default_rows_per_file(seq_len)
    rgr = min(row_group_rows or default_row_group_rows(seq_len), rpf)
    return PackSettings(
        str(Path(tokenizer_dir).resolve()),
        sha,
        text_column,
        seq_len,
        rpf,
        rgr,
        ids["bos"] if add_bos else None,
        ids["eos"],
        ids["pad"],
        tok.get_vocab_size(with_added_tokens=True),
    )


def plan_units(files: Sequence[InputFile], unit_bytes: int = 64 << 20, min_units: int = 1) -> list[Unit]:
    """Group row groups into units of about `unit_bytes` of text; split finer (down to one row
    group) when that gives fewer than `min_units` units, so every worker gets work."""
    total = sum(sum(f.text_bytes) for f in files)
    target = max(1, min(unit_bytes, total // max(1, min_units)))
    units: list[Unit] = []
    for f in files:
        run: list[int] = []
        size = 0
        for rg, (nrows, nbytes) in enumerate(zip(f.row_groups, f.text_bytes)):
            if nrows == 0:
                continue
            if run and size + nbytes > target:
                units.append(Unit(len(units), f.path, f.source, tuple(run)))
                run, size = [], 0
            run.append(rg)
            size += nbytes
        if run:
            units.append(Unit(len(units), f.path, f.source, tuple(run)))
    return units


# ----------------------------------------------------------------------------- one unit

_TOK = None  # the worker process's tokenizer, loaded once


def _worker_init(tokenizer_dir: str, parallel: bool):
    """Load this process's tokenizer (once) and return it."""
    global _TOK
    # Workers are processes; the tokenizer's own thread pool would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    from huginn.data.tokenizer import load_tokenizer

    _TOK = load_tokenizer(tokenizer_dir)
    _TOK.encode_special_tokens = True  # "<|pad|>" inside a document is text, not a control id
    return _TOK


def _pool_worker_init(tokenizer_dir: str) -> None:
    # a forked worker inherits the command line's SIGTERM handler (which stops the parent's job
    # loop); the worker itself just ends, and the parent removes what it left in OUT/.tmp
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_init(tokenizer_dir, parallel=False)


def run_unit(unit: Unit, settings: PackSettings, out_dir: str, batch_bytes: int = 8 << 20) -> dict:
    """Tokenize and pack one unit; returns (and records) its output files and counts."""
    tok = _TOK if _TOK is not None else _worker_init(settings.tokenizer_dir, parallel=True)
    out = Path(out_dir)
    pf = open_parquet(unit.path, settings.text_column)
    meta = pf.metadata
    col = pf.schema_arrow.names.index(settings.text_column)
    row_len = settings.seq_len + 1
    packer = RowPacker(row_len)
    writer = ShardWriter(
        out, f"{unit.index:05d}", row_len, settings.rows_per_file, settings.row_group_rows, settings.pad
    )
    docs = chars = 0
    try:
        for rg in unit.row_groups:
            r = meta.row_group(rg)
            row = sum(meta.row_group(i).num_rows for i in range(rg))  # first row of rg in the file
            avg = max(1, r.column(col).total_uncompressed_size // max(1, r.num_rows))
            batch_rows = max(16, min(8192, batch_bytes // avg))  # bounded bytes per batch
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=[settings.text_column]):
                # null and empty documents have no tokens
                texts = [t for t in decode_texts(batch.column(0), unit.path, settings.text_column, row) if t]
                row += batch.num_rows
                if not texts:
                    continue
                docs += len(texts)
                chars += sum(map(len, texts))
                encs = tok.encode_batch_fast(texts, add_special_tokens=False)
                writer.write(packer.add(frame_documents([e.ids for e in encs], settings.bos, settings.eos)))
        writer.write(packer.finish(settings.pad))
        files = writer.commit()
    except BaseException:
        writer.abort()
        raise
    for f in files:
        f["source"] = unit.source
    record = {
        "unit": asdict(unit),
        "files": files,
        "documents": docs,
        "chars": chars,
        "rows": sum(f["rows"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
    }
    _atomic_write_json(out / PROGRESS / f"unit-{unit.index:05d}.json", record)
    return record


# ----------------------------------------------------------------------------- the job


def _job_record(settings: PackSettings, units: Sequence[Unit]) -> dict:
    return {"settings": asdict(settings), "units": [asdict(u) for u in units]}


def prepare_job(
    inputs: Sequence[str],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    text_column: str = "text",
    seq_len: int = 4096,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
    unit_bytes: int = 64 << 20,
    add_bos: bool = True,
) -> tuple[PackSettings, list[Unit], list[InputFile]]:
    """Validate everything, plan the units and record the job in OUT/.progress/job.json (or check
    that a job found there is this one). Nothing is written when any input is bad."""
    out = check_writable_out(out_dir)
    files = resolve_inputs(inputs, text_column)  # validates everything before writing anything
    settings = make_settings(
        tokenizer_dir, text_column, seq_len, rows_per_file=rows_per_file, row_group_rows=row_group_rows, add_bos=add_bos
    )
    # the plan must not depend on --workers: output bytes and resume are the same for any count
    units = plan_units(files, unit_bytes, min_units=MIN_UNITS)
    job = _job_record(settings, units)
    job_path = out / PROGRESS / "job.json"
    if job_path.exists():
        if json.loads(job_path.read_text()) != json.loads(json.dumps(job)):
            raise HuginnError(
                f"{out} holds a tokenize job with other inputs or settings; use a new --out or delete {out}"
            )
    elif out.exists() and any(out.iterdir()):
        raise HuginnError(f"--out {out} is not empty and holds no tokenize job; use a new directory")
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    _atomic_write_json(job_path, job)
    return settings, units, files


def load_job(out_dir: str | Path) -> tuple[PackSettings, list[Unit], dict[int, dict]]:
    """(settings, units, records of finished units) of the job recorded in `out_dir`."""
    out = Path(out_dir)
    job_path = out / PROGRESS / "job.json"
    if not job_path.is_file():
        raise HuginnError(f"{out} holds no tokenize job; start one with `huginn data tokenize`")
    job = json.loads(job_path.read_text())
    settings = PackSettings(**job["settings"])
    units = [Unit(u["index"], u["path"], u["source"], tuple(u["row_groups"])) for u in job["units"]]
    records: dict[int, dict] = {}
    for u in units:
        p = out / PROGRESS / f"unit-{u.index:05d}.json"
        if p.exists():
            records[u.index] = json.loads(p.read_text())
    return settings, units, records


def finalize_job(out_dir: str | Path) -> dict:
    """Write manifest.json once every unit has its record; return the manifest."""
    out = Path(out_dir)
    settings, units, records = load_job(out)
    missing = [u.index for u in units if u.index not in records]
    if missing:
        raise HuginnError(f"{len(missing)} of {len(units)} units of {out} are unfinished; rerun the job to finish them")
    manifest = build_manifest(settings, [records[u.index] for u in units])
    _atomic_write_json(out / MANIFEST, manifest)
    return manifest


def tokenize_parquet(
    inputs: Sequence[str],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    text_column: str = "text",
    seq_len: int = 4096,
    workers: int = 1,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
    unit_bytes: int = 64 << 20,
    add_bos: bool = True,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Tokenize and pack `inputs` into `out_dir`; returns the manifest. Resumes a stopped job.

    An interruption (an exception, KeyboardInterrupt) keeps the finished units for a rerun; a user
    mistake (`HuginnError`, e.g. text that is not UTF-8) removes `out_dir` when this call created it.
    """
    out = Path(out_dir)
    created = not out.exists()
    try:
        settings, units, files = prepare_job(
            inputs,
            tokenizer_dir,
            out,
            text_column=text_column,
            seq_len=seq_len,
            rows_per_file=rows_per_file,
            row_group_rows=row_group_rows,
            unit_bytes=unit_bytes,
            add_bos=add_bos,
        )
        _, _, records = load_job(out)
        todo = [u for u in units if u.index not in records]
        try:
            shutil.rmtree(out / TMP, ignore_errors=True)  # left by a killed run; never reused
            if progress:
                progress(
                    {
                        "event": "start",
                        "units": len(units),
                        "todo": len(todo),
                        "skipped": len(records),
                        "bytes": sum(sum(f.text_bytes) for f in files),
                    }
                )
            # closing: the worker pool is shut down before OUT/.tmp goes, so no worker recreates it
            with contextlib.closing(_run_units(todo, settings, str(out), workers)) as results:
                for rec in results:
                    if progress:
                        progress({"event": "unit", **rec})
        finally:
            shutil.rmtree(out / TMP, ignore_errors=True)
        return finalize_job(out)
    except HuginnError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_units(todo: Sequence[Unit], settings: PackSettings, out: str, workers: int):
    if workers <= 1 or len(todo) <= 1:
        for u in todo:
            yield run_unit(u, settings, out)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # fork where there is one: a spawned worker would re-import torch and transformers (seconds
    # each, via `import huginn`); workers never touch torch, and they switch the tokenizer's
    # thread pool off, so the usual fork hazards do not apply.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context(method), initializer=_pool_worker_init, initargs=(settings.tokenizer_dir,)
    ) as pool:
        futures = [pool.submit(run_unit, u, settings, out) for u in todo]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            # units not started are dropped; units in flight finish (their records count on resume)
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def build_manifest(settings: PackSettings, records: Sequence[dict]) -> dict:
    """The dataset description readers rely on: files in order with rows, tokens and source."""
    out_files = [f for r in records for f in r["files"]]
    sources: dict[str, dict] = {}
    for r in records:
        s = sources.setdefault(r["unit"]["source"], {"inputs": [], "rows": 0, "tokens": 0, "documents": 0})
        if r["unit"]["path"] not in s["inputs"]:
            s["inputs"].append(r["unit"]["path"])
        s["rows"] += r["rows"]
        s["tokens"] += r["tokens"]
        s["documents"] += r["documents"]
    return {
        "format": FORMAT,
        "version": 1,
        "column": COLUMN,
        "seq_len": settings.seq_len,
        "row_len": settings.seq_len + 1,
        "tokenizer": {
            "path": settings.tokenizer_dir,
            "sha256": settings.tokenizer_sha256,
            "vocab_size": settings.vocab_size,
            "bos": settings.bos,
            "eos": settings.eos,
            "pad": settings.pad,
        },
        "rows": sum(f["rows"] for f in out_files),
        "tokens": sum(f["tokens"] for f in out_files),
        "documents": sum(r["documents"] for r in records),
        "chars": sum(r.get("chars", 0) for r in records),
        "files": out_files,
        "sources": sources,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def read_manifest(path: str | Path) -> dict:
    """Load a finished dataset's manifest, or explain why the directory is not one."""
    p = Path(path)
    m = p / MANIFEST
    if not m.is_file():
        if (p / PROGRESS).is_dir():
            raise HuginnError(
                f"{p} is an unfinished tokenize job; rerun the same `huginn data tokenize` command to finish it"
            )
        raise HuginnError(
            f"{p} has no {MANIFEST}; pass a directory written by `huginn data tokenize`, `mix` or `shuffle`"
        )
    manifest = json.loads(m.read_text())
    if manifest.get("format") != FORMAT:
        raise HuginnError(f"{m} is not a huginn packed-data manifest")
    return manifest
