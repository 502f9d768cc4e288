"""`huginn train` and `huginn export`: thin command-line layers over `huginn.train`.

    huginn train [CONFIG.yaml] --out DIR [--max-steps N] [--set section.key=value ...] [--section.key value ...]
    huginn export RUN_DIR OUT

Re-running `train` with the same --out resumes from the newest checkpoint. Under
`torchrun --nproc_per_node=K -m huginn train ...` the run is data-parallel (config `parallel.kind`).
"""

from __future__ import annotations

from pathlib import Path

import click

from huginn.errors import HuginnError


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """(CONFIG, overrides) from ['c.yaml', '--optim.lr', '1e-3', '--train.seed=2']."""
    config, out, i = None, [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-") and config is None:
            config = a
            i += 1
            continue
        if not a.startswith("--") or "." not in a.split("=", 1)[0]:
            raise HuginnError(f"unexpected argument {a!r}; overrides look like --set optim.lr=1e-3 or --optim.lr 1e-3")
        if "=" in a:
            out.append(a[2:])
            i += 1
        else:
            if i + 1 >= len(args):
                raise HuginnError(f"{a} needs a value")
            out.append(f"{a[2:]}={args[i + 1]}")
            i += 2
    return config, out


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[CONFIG.yaml] [--section.key VALUE]...")
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Run directory (re-running resumes it)."
)
@click.option("--max-steps", type=int, default=None, help="Optimizer steps in total (train.max_steps).")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. optim.lr=1e-3 (repeatable).",
)
def train(args: tuple[str, ...], out: str, max_steps: int | None, sets: tuple[str, ...]) -> None:
    """Pretrain or fine-tune from CONFIG.yaml (without one: a tiny model on the built-in corpus)."""
    from huginn.train.config import load_config
    from huginn.train.loop import train as run_training

    config, flags = _split_args(list(args))
    overrides = list(sets) + flags
    cfg = load_config(config, overrides, **{"train.max_steps": max_steps})
    result = run_training(cfg, Path(out))
    if result.scaling_table:
        what = (
            "answer accuracy (%) by difficulty and test-time depth"
            if cfg.data.kind == "builtin"
            else "validation loss by test-time depth"
        )
        click.echo(f"\n{what} (table: {Path(out) / 'scaling.md'}, plot: {Path(out) / 'scaling.png'}):")
        click.echo(result.scaling_table)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
def export(run_dir: str, out: str) -> None:
    """Write the newest checkpoint of RUN_DIR as a published-format Huginn checkpoint in OUT."""
    from huginn.train.export import export_run

    path = export_run(Path(run_dir), Path(out))
    click.echo(f"wrote {path} (load with AutoModelForCausalLM.from_pretrained after `import huginn`)")
