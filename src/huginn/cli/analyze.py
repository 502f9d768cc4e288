"""`huginn analyze`: the latent trajectories of a text, as figures, report.html and JSON.

    huginn analyze CHECKPOINT "text" [--num-steps 64] [--out DIR] [--threshold 1e-3] [--tail N]
                   [--tokens 3,7,-1] [--seed 0] [--init-scale X] [--tokenizer DIR] [--json]

A thin layer over `huginn.analysis` (`analyze_text`, `write_report`): checks the flags and the
output folder before anything loads, shows a progress bar over the core steps, writes DIR/*.png,
DIR/report.html and DIR/analysis.json (all or nothing), and prints a short summary (or, with
--json, the JSON itself). Non-goals: batches of texts, generation (use the Python API).
"""

from __future__ import annotations

import json
import sys

import click

from huginn.errors import HuginnError


def _positions(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise HuginnError(f"--tokens takes comma-separated positions such as 0,3,-1, got {spec!r}") from None
    if not values:
        raise HuginnError("--tokens lists no positions; give some, such as 0,3,-1")
    return values


@click.command()
@click.argument("checkpoint")
@click.argument("text")
@click.option("--num-steps", type=click.IntRange(min=1), default=64, show_default=True, help="Core steps to run.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="analysis",
    show_default=True,
    help="Folder for the PNGs, report.html and analysis.json.",
)
@click.option(
    "--threshold",
    type=float,
    default=1e-3,
    show_default=True,
    help="Relative change ||s_t - s_{t-1}|| / ||s_t|| under which a token counts as converged.",
)
@click.option(
    "--tail", type=int, default=None, help="Last states the classification and orbit PCA read (default: half)."
)
@click.option("--tokens", default=None, help="Positions for the orbit grid, e.g. 0,3,-1 (default: chosen by class).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial state's noise.")
@click.option(
    "--init-scale",
    type=click.FloatRange(min=0),
    default=None,
    help="Initial state noise; 0 = a zero state. Default: the model's state_init_scale.",
)
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False), help="Tokenizer folder.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON (every number behind the figures), not the summary."
)
def analyze(checkpoint, text, num_steps, out, threshold, tail, tokens, seed, init_scale, tokenizer_dir, dtype, as_json):
    """Trajectories of TEXT's tokens through the core of CHECKPOINT: convergence, orbits, logit lens."""
    from huginn.outdir import check_writable_out

    out_dir = check_writable_out(out)
    if num_steps < 3:
        raise HuginnError(
            f"--num-steps must be at least 3 for an analysis (a trajectory of a few states), got {num_steps}"
        )
    if not threshold > 0:
        raise HuginnError(f"--threshold must be > 0, got {threshold}")
    if tail is not None and not 3 <= tail <= num_steps + 1:
        raise HuginnError(f"--tail must lie in 3 .. {num_steps + 1} (num_steps + 1 states), got {tail}")
    orbit_positions = _positions(tokens)
    if not text:
        raise HuginnError("the text is empty; pass some text to analyze")

    from tqdm import tqdm

    from huginn.analysis.analyze import analyze_text
    from huginn.analysis.report import summary, write_report
    from huginn.cli.generate import load

    model, tok = load(checkpoint, tokenizer_dir, dtype)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise HuginnError("the text is empty after tokenization; pass some text")
    block = model.model_config.block_size
    if len(ids) > block:
        raise HuginnError(f"the text is {len(ids)} tokens, longer than the block size {block}; shorten it")
    bar = tqdm(total=num_steps, desc="core steps", unit="step", file=sys.stderr, disable=None, leave=False)

    def progress(step: int, total: int) -> None:
        bar.update(step - bar.n)

    try:
        analysis = analyze_text(
            model,
            ids,
            lambda i: tok.decode(i),
            num_steps=num_steps,
            threshold=threshold,
            tail=tail,
            orbit_positions=orbit_positions,
            init_scale=init_scale,
            seed=seed,
            progress=progress,
        )
    finally:
        bar.close()
    written = write_report(analysis, out_dir, title=f"huginn analyze {checkpoint}")
    if as_json:
        click.echo(json.dumps(analysis.to_json(), allow_nan=False))
    else:
        click.echo(summary(analysis))
        click.echo(f"wrote {len(written)} files to {out_dir}/ (open {out_dir / 'report.html'})")
