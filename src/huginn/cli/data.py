"""`huginn data ...`: train-tokenizer, tokenize, mix, shuffle, stats (thin layer over huginn.data).

Every command that writes `--out` checks it first (`huginn.outdir.check_writable_out`); counts
are checked by click (`click.IntRange`), so a mistake fails in one line before any work.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from huginn.errors import HuginnError
from huginn.outdir import check_writable_out

POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)

INPUT_HELP = (
    "Parquet file, directory (every *.parquet below it) or quoted glob ('data/*.parquet'). "
    "Several may follow one --input (--input a.parquet b.parquet), or repeat --input."
)


def spread_values(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """`--input a b c` -> `--input a --input b --input c` for the options in `names`.

    click options take one value each; this lets a `multiple=True` option take several after one
    flag. Values run up to the next token that starts with '-' (a value that starts with '-' can
    be passed as `--input=-name`); everything after `--` is left alone.
    """
    out: list[str] = []
    flag, taken = None, 0  # the option being filled, and how many values it got since its flag
    for i, arg in enumerate(args):
        if arg == "--":
            out += args[i:]
            break
        if arg.startswith("-") and arg != "-":
            name, eq, _ = arg.partition("=")
            flag, taken = (name, 1 if eq else 0) if name in names else (None, 0)
            out.append(arg)
        elif flag is not None:
            out += [arg] if taken == 0 else [flag, arg]
            taken += 1
        else:
            out.append(arg)
    return out


class ManyInputsCommand(click.Command):
    """A command whose `--input` takes one or more values per flag (see `spread_values`)."""

    many = ("--input",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_values(args, self.many))


class _LineProgress:
    """Progress off a terminal (a log file, a pipe): a plain line when another 5% is done or 10 s
    have passed, never one line per update (a bar redrawn into a file is one line per redraw)."""

    def __init__(self, description: str, interval: float = 10.0, step: float = 0.05):
        self.description, self.interval, self.step = description, interval, step
        self.total = self.done = 0
        self.start = self.last_time = time.monotonic()
        self.last_step = -1

    def begin(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.last_step = self._step()

    def _step(self) -> int:
        return int(self.done / max(1, self.total) / self.step)

    def advance(self, note: str = "") -> None:
        self.done += 1
        now = time.monotonic()
        if self.done < self.total and self._step() == self.last_step and now - self.last_time < self.interval:
            return
        self.last_time, self.last_step = now, self._step()
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - self.start))
        pct = 100 * self.done / max(1, self.total)
        line = f"{self.description}: {self.done}/{self.total} units ({pct:.0f}%)"
        click.echo(f"{line}, {note}, {elapsed} elapsed" if note else f"{line}, {elapsed} elapsed", err=True)


class _BarProgress:
    """Progress on a terminal: a rich bar on stderr."""

    def __init__(self, description: str, bar: Any):
        self.description, self.bar = description, bar
        self.task: Any = None

    def begin(self, total: int, done: int) -> None:
        self.task = self.bar.add_task(self.description, total=total, completed=done, rate="")

    def advance(self, note: str = "") -> None:
        self.bar.update(self.task, advance=1, rate=note)


@contextlib.contextmanager
def _progress(description: str) -> Iterator[_LineProgress | _BarProgress]:
    """A progress display on stderr: a bar on a terminal, periodic lines elsewhere.

    Kept local to the data commands (the training loop has its own display).
    """
    if not sys.stderr.isatty():
        yield _LineProgress(description)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        yield _BarProgress(description, bar)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a scheduler's time limit) stops the job as Ctrl-C does, so its
    cleanup runs (OUT/.tmp removed, finished units kept for a rerun)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fresh_out(out: str) -> None:
    p = Path(out)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise HuginnError(f"--out {out} exists and is not empty; pass a new directory")


@click.group()
def data() -> None:
    """Data pipeline: train-tokenizer, tokenize, mix, shuffle, stats."""


@data.command("train-tokenizer", cls=ManyInputsCommand)
@click.option("--input", "inputs", multiple=True, required=True, metavar="PATH...", help=INPUT_HELP)
@click.option("--text-column", default="text", show_default=True)
@click.option(
    "--vocab-size",
    type=int,
    default=512,
    show_default=True,
    help="Total ids incl. the 32 special tokens (Huginn: 65536).",
)
@click.option("--min-frequency", type=POSITIVE, default=2, show_default=True)
@click.option("--out", required=True, help="Directory to write (loads with AutoTokenizer.from_pretrained).")
def train_tokenizer_cmd(inputs, text_column, vocab_size, min_frequency, out) -> None:
    """Train a byte-level BPE tokenizer with Huginn's special tokens and chat template.

    Inputs: `--input a.parquet b.parquet`, `--input 'data/*.parquet'` (quoted: huginn expands
    it) and `--input a --input b` all work. Null and empty rows are skipped.
    """
    from huginn.data.sources import resolve_inputs
    from huginn.data.tokenizer import check_vocab_size, iter_texts, special_token_ids, train_tokenizer

    check_writable_out(out)
    _fresh_out(out)
    check_vocab_size(vocab_size)
    files = resolve_inputs(inputs, text_column)
    created = not Path(out).exists()
    try:
        train_tokenizer(
            iter_texts([f.path for f in files], text_column),
            vocab_size,
            out,
            min_frequency=min_frequency,
            length=sum(f.num_rows for f in files),
        )
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    ids = special_token_ids(vocab_size)
    click.echo(
        f"wrote {out}: vocab {vocab_size}, <|begin_text|>={ids['<|begin_text|>']}, <|end_text|>={ids['<|end_text|>']}, <|pad|>={ids['<|pad|>']}"
    )


@data.command("tokenize", cls=ManyInputsCommand)
@click.option("--tokenizer", "tokenizer_dir", required=True, help="Tokenizer directory (tokenizer.json).")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="[NAME=]PATH...",
    help=f"{INPUT_HELP} NAME= names the source.",
)
@click.option("--text-column", default="text", show_default=True)
@click.option("--seq-len", type=POSITIVE, default=4096, show_default=True, help="Rows hold seq-len + 1 ids.")
@click.option("--out", required=True, help="Output directory (rerun the same command to resume).")
@click.option("--workers", type=POSITIVE, default=1, show_default=True)
@click.option("--rows-per-file", type=POSITIVE, default=None, help="Rows per output file (default: about 256 MB).")
@click.option("--row-group-rows", type=POSITIVE, default=None, help="Rows per parquet row group (default: about 8 MB).")
@click.option("--no-bos", is_flag=True, help="Do not start documents with <|begin_text|>.")
def tokenize_cmd(
    tokenizer_dir, inputs, text_column, seq_len, out, workers, rows_per_file, row_group_rows, no_bos
) -> None:
    """Tokenize parquet text into packed rows of seq-len + 1 ids (lossless, parallel, resumable).

    Inputs: `--input a.parquet b.parquet`, `--input 'data/*.parquet'` (quoted: huginn expands
    it) and `--input a --input b` all work. Progress goes to stderr: a bar on a terminal, a line
    every 5% or 10 s otherwise. Ctrl-C or SIGTERM keeps finished units: rerun to resume.
    """
    from huginn.data.tokenize import tokenize_parquet

    check_writable_out(out)
    start = time.perf_counter()
    with _progress("tokenize") as bar, _sigterm_as_interrupt():
        state = {"tokens": 0}

        def on_event(ev: dict) -> None:
            if ev["event"] == "start":
                if ev["skipped"]:
                    click.echo(f"resuming: {ev['skipped']} of {ev['units']} units already done", err=True)
                bar.begin(ev["units"], ev["skipped"])
            else:
                state["tokens"] += ev["tokens"]
                rate = state["tokens"] / max(1e-9, time.perf_counter() - start)
                bar.advance(f"{rate / 1e6:.2f} M tok/s")

        # a user mistake (HuginnError) removes an output this run created; see tokenize_parquet
        m = tokenize_parquet(
            inputs,
            tokenizer_dir,
            out,
            text_column=text_column,
            seq_len=seq_len,
            workers=workers,
            rows_per_file=rows_per_file,
            row_group_rows=row_group_rows,
            add_bos=not no_bos,
            progress=on_event,
        )
    click.echo(
        f"wrote {out}: {m['documents']:,} documents, {m['tokens']:,} tokens, {m['rows']:,} rows of {m['row_len']} "
        f"in {len(m['files'])} files ({time.perf_counter() - start:.1f} s)"
    )


@data.command("mix")
@click.option(
    "--config", "config", default=None, help="YAML: sources: {name: {path: DIR, weight: W}}, val_fraction, seed."
)
@click.option("--source", "sources", multiple=True, help="[NAME=]DIR[:WEIGHT] of a tokenized dataset (repeatable).")
@click.option("--out", required=True, help="Output directory: train/ and val/ datasets.")
@click.option(
    "--val-fraction", type=float, default=None, help="Fraction of each source's rows held out (default 0.05)."
)
@click.option(
    "--seed", type=NON_NEGATIVE, default=None, help="Seed of the split, the sampling and the shuffle (default 0)."
)
@click.option("--rows-per-file", type=POSITIVE, default=None)
def mix_cmd(config, sources, out, val_fraction, seed, rows_per_file) -> None:
    """Mix tokenized sources with weights (up/down-sampling), split train/val, shuffle globally."""
    from huginn.data.mixing import MixConfig, load_mix_config, mix_sources, parse_source_spec

    check_writable_out(out)
    specs: MixConfig = load_mix_config(config) if config else {"sources": [], "val_fraction": 0.05, "seed": 0}
    specs["sources"] = specs["sources"] + [parse_source_spec(s) for s in sources]
    if not specs["sources"]:
        raise HuginnError("no sources; pass --config sources.yaml or --source DIR[:WEIGHT]")
    _fresh_out(out)
    res = mix_sources(
        specs["sources"],
        out,
        val_fraction=specs["val_fraction"] if val_fraction is None else val_fraction,
        seed=specs["seed"] if seed is None else seed,
        rows_per_file=rows_per_file,
    )
    for split, m in res.items():
        click.echo(f"{split}: {m['rows']:,} rows, {m['tokens']:,} tokens in {len(m['files'])} files")


@data.command("shuffle")
@click.option("--input", "inputs", multiple=True, required=True, help="Tokenized dataset directory (repeatable).")
@click.option("--out", required=True)
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--rows-per-file", type=POSITIVE, default=None)
def shuffle_cmd(inputs, out, seed, rows_per_file) -> None:
    """Deterministic global shuffle of packed rows across all files (bounded memory)."""
    from huginn.data.shuffle import shuffle_datasets

    check_writable_out(out)
    _fresh_out(out)
    m = shuffle_datasets(inputs, out, seed=seed, rows_per_file=rows_per_file)
    click.echo(f"wrote {out}: {m['rows']:,} rows in {len(m['files'])} files (seed {seed})")


@data.command("stats")
@click.argument("datasets", nargs=-1, required=True)
@click.option(
    "--tokenizer",
    "tokenizer_dir",
    default=None,
    help="Decode the most frequent ids with this tokenizer (checked against the one the data was packed with).",
)
@click.option("--top", type=NON_NEGATIVE, default=10, show_default=True, help="Most frequent ids to list (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_cmd(datasets, tokenizer_dir, top, as_json) -> None:
    """Token statistics of packed datasets: rows, tokens, documents, padding, id frequencies."""
    from huginn.data.stats import dataset_stats, format_stats

    res = [dataset_stats(d, tokenizer_dir=tokenizer_dir, top=top) for d in datasets]
    for r in res:
        for w in r["warnings"]:
            click.echo(f"huginn: warning: {w}", err=True)
    click.echo(json.dumps(res, indent=1) if as_json else "\n\n".join(format_stats(r) for r in res))
