"""`huginn data ...`: train-tokenizer, tokenize, mix, shuffle, stats (thin layer over huginn.data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from huginn.errors import HuginnError


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def _fresh_out(out: str) -> None:
    p = Path(out)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise HuginnError(f"--out {out} exists and is not empty; pass a new directory")


@click.group()
def data() -> None:
    """Data pipeline: train-tokenizer, tokenize, mix, shuffle, stats."""


@data.command("train-tokenizer")
@click.option("--input", "inputs", multiple=True, required=True, help="Parquet file, directory or glob (repeatable).")
@click.option("--text-column", default="text", show_default=True)
@click.option(
    "--vocab-size",
    type=int,
    default=512,
    show_default=True,
    help="Total ids incl. the 32 special tokens (Huginn: 65536).",
)
@click.option("--min-frequency", type=int, default=2, show_default=True)
@click.option("--out", required=True, help="Directory to write (loads with AutoTokenizer.from_pretrained).")
def train_tokenizer_cmd(inputs, text_column, vocab_size, min_frequency, out) -> None:
    """Train a byte-level BPE tokenizer with Huginn's special tokens and chat template."""
    from huginn.data.sources import resolve_inputs
    from huginn.data.tokenizer import iter_texts, special_token_ids, train_tokenizer

    files = resolve_inputs(inputs, text_column)
    _fresh_out(out)
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


@data.command("tokenize")
@click.option("--tokenizer", "tokenizer_dir", required=True, help="Tokenizer directory (tokenizer.json).")
@click.option(
    "--input", "inputs", multiple=True, required=True, help="[NAME=]parquet file, directory or glob (repeatable)."
)
@click.option("--text-column", default="text", show_default=True)
@click.option("--seq-len", type=int, default=4096, show_default=True, help="Rows hold seq-len + 1 ids.")
@click.option("--out", required=True, help="Output directory (rerun the same command to resume).")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--rows-per-file", type=int, default=None, help="Rows per output file (default: about 256 MB).")
@click.option("--row-group-rows", type=int, default=None, help="Rows per parquet row group (default: about 8 MB).")
@click.option("--no-bos", is_flag=True, help="Do not start documents with <|begin_text|>.")
def tokenize_cmd(
    tokenizer_dir, inputs, text_column, seq_len, out, workers, rows_per_file, row_group_rows, no_bos
) -> None:
    """Tokenize parquet text into packed rows of seq-len + 1 ids (lossless, parallel, resumable)."""
    import time

    from huginn.data.tokenize import tokenize_parquet

    if workers < 1:
        raise HuginnError(f"--workers must be at least 1, got {workers}")
    created = not Path(out).exists()
    start = time.perf_counter()
    with _progress() as bar:
        task = None
        state = {"tokens": 0}

        def on_event(ev: dict) -> None:
            nonlocal task
            if ev["event"] == "start":
                task = bar.add_task("tokenize", total=ev["units"], completed=ev["skipped"], rate="")
                if ev["skipped"]:
                    click.echo(f"resuming: {ev['skipped']} of {ev['units']} units already done")
            else:
                state["tokens"] += ev["tokens"]
                rate = state["tokens"] / max(1e-9, time.perf_counter() - start)
                bar.update(task, advance=1, rate=f"{rate / 1e6:.2f} M tok/s")

        try:
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
        except HuginnError:
            # a user mistake found before any work: leave nothing behind
            if created and Path(out).exists() and not any(Path(out, ".progress").glob("unit-*.json")):
                shutil.rmtree(out, ignore_errors=True)
            raise
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
@click.option("--seed", type=int, default=None, help="Seed of the split, the sampling and the shuffle (default 0).")
@click.option("--rows-per-file", type=int, default=None)
def mix_cmd(config, sources, out, val_fraction, seed, rows_per_file) -> None:
    """Mix tokenized sources with weights (up/down-sampling), split train/val, shuffle globally."""
    from huginn.data.mixing import load_mix_config, mix_sources, parse_source_spec

    specs = load_mix_config(config) if config else {"sources": [], "val_fraction": 0.05, "seed": 0}
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rows-per-file", type=int, default=None)
def shuffle_cmd(inputs, out, seed, rows_per_file) -> None:
    """Deterministic global shuffle of packed rows across all files (bounded memory)."""
    from huginn.data.shuffle import shuffle_datasets

    _fresh_out(out)
    m = shuffle_datasets(inputs, out, seed=seed, rows_per_file=rows_per_file)
    click.echo(f"wrote {out}: {m['rows']:,} rows in {len(m['files'])} files (seed {seed})")


@data.command("stats")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--tokenizer", "tokenizer_dir", default=None, help="Decode the most frequent ids with this tokenizer.")
@click.option("--top", type=int, default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_cmd(datasets, tokenizer_dir, top, as_json) -> None:
    """Token statistics of packed datasets: rows, tokens, documents, padding, id frequencies."""
    from huginn.data.stats import dataset_stats, format_stats

    res = [dataset_stats(d, tokenizer_dir=tokenizer_dir, top=top) for d in datasets]
    click.echo(json.dumps(res, indent=1) if as_json else "\n\n".join(format_stats(r) for r in res))
