"""`huginn info CHECKPOINT_OR_SHAPE`: shape, parameters by part, and cost per token at several depths."""

from __future__ import annotations

import json

import click

from huginn.errors import HuginnError


def parse_steps(text: str) -> list[int]:
    """`--steps 1,4,8` as [1, 4, 8] (also read by `huginn demo`)."""
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise HuginnError(f"--steps must be comma-separated integers, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise HuginnError(f"--steps must list integers >= 1, got {text!r}")
    return steps


@click.command()
@click.argument("checkpoint_or_shape")
@click.option("--steps", default="1,4,8,16,32,64", show_default=True, help="num_steps values to cost.")
@click.option(
    "--context",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Tokens attended to (at least the token itself), for attention FLOPs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(checkpoint_or_shape: str, steps: str, context: int, as_json: bool) -> None:
    """Shape, parameters by part (embedding, prelude, core, coda) and materialized parameters and
    FLOPs per token for several num_steps, of a checkpoint directory or a named shape."""
    from huginn.checkpoint import resolve_model_config
    from huginn.model.cost import flops_per_token, param_counts

    cfg, what = resolve_model_config(checkpoint_or_shape)
    step_list = parse_steps(steps)
    pc = param_counts(cfg)
    parts = {
        "embedding": pc.embedding,
        "prelude": pc.prelude,
        "adapter": pc.adapter,
        "core": pc.core,
        "coda": pc.coda,
        "final_norm": pc.final_norm,
        "head": pc.head,
        "total": pc.total,
    }
    cost = [
        {"num_steps": r, "materialized_params": pc.materialized(r), "flops_per_token": flops_per_token(cfg, r, context)}
        for r in step_list
    ]
    shape = {
        "layers (prelude/core/coda)": f"{cfg.n_layers_in_prelude}/{cfg.n_layers_in_recurrent_block}/{cfg.n_layers_in_coda}",
        "width": cfg.n_embd,
        "heads (kv)": f"{cfg.n_heads} ({cfg.n_kv_heads})",
        "head_dim": cfg.head_dim,
        "GLU width": cfg.intermediate_size,
        "vocab (padded)": f"{cfg.vocab_size} ({cfg.padded_vocab_size})",
        "block size": cfg.block_size,
        "rope base": cfg.rope_base,
        "block": cfg.block_type,
        "injection": cfg.injection_type,
        "qk bias": cfg.qk_bias,
        "tied embeddings": cfg.tie_embeddings,
        "embed scale": round(cfg.embed_scale, 4),
        "mean recurrence": cfg.mean_recurrence,
        "backprop depth": cfg.mean_backprop_depth,
    }
    if as_json:
        click.echo(json.dumps({"source": what, "shape": shape, "parameters": parts, "cost": cost, "context": context}))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"huginn model: {what}", show_header=False)
    for k, v in shape.items():
        t.add_row(k, str(v))
    console.print(t)
    p = Table(title="parameters by part")
    p.add_column("part")
    p.add_column("parameters", justify="right")
    p.add_column("share", justify="right")
    for k, v in parts.items():
        p.add_row(k, f"{v:,}", f"{100 * v / pc.total:.1f}%")
    console.print(p)
    c = Table(title=f"cost per token (attention over {context} tokens)")
    for col in ("num_steps", "materialized params", "GFLOP / token", "vs 1 step"):
        c.add_column(col, justify="right")
    for row in cost:
        c.add_row(
            str(row["num_steps"]),
            f"{row['materialized_params']:,}",
            f"{row['flops_per_token'] / 1e9:,.3f}",
            f"{row['flops_per_token'] / flops_per_token(cfg, 1, context):.1f}x",
        )
    console.print(c)
