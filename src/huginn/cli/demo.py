"""`huginn demo`: run a tiny built-in model at several depths and show outputs and cost.

No download, no data: a randomly initialised model of a named shape. It shows what the recurrence
does mechanically: how the latent state settles as steps grow, how the prediction changes, and
what each depth costs. (`huginn train` with no config trains a model whose loss falls with depth.)
"""

from __future__ import annotations

import time

import click


@click.command()
@click.option("--shape", default="small", show_default=True, help="Named shape to build (see `huginn info`).")
@click.option("--steps", default="1,2,4,8,16,32", show_default=True, help="num_steps values to run.")
@click.option("--seq-len", type=click.IntRange(min=1), default=64, show_default=True, help="Tokens in the demo input.")
@click.option("--seed", default=0, show_default=True)
def demo(shape: str, steps: str, seq_len: int, seed: int) -> None:
    """Outputs and cost of a tiny built-in model at several depths."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from huginn.cli.info import parse_steps
    from huginn.config import named_shape
    from huginn.model.cost import flops_per_token
    from huginn.model.recurrent import RecurrentLM

    step_list = parse_steps(steps)
    cfg = named_shape(shape)
    torch.manual_seed(seed)
    model = RecurrentLM(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    deepest = max(step_list)
    with torch.no_grad():
        ref = model(tokens, deepest, init_scale=0.0, return_states=True)
    final = ref.logits.log_softmax(-1)
    table = Table(title=f"huginn demo: shape {shape} (random weights), {seq_len} tokens, zero initial state")
    for col in ("num_steps", "|Δstate| / |state|", f"KL to {deepest} steps", "top-1 agrees", "GFLOP/token", "ms/token"):
        table.add_column(col, justify="right")
    for r in step_list:
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(tokens, r, init_scale=0.0)
            ms = (time.perf_counter() - t0) * 1000 / seq_len
        states = ref.states
        prev = states[r - 2] if r > 1 else torch.zeros_like(states[0])
        change = ((states[r - 1] - prev).norm(dim=-1) / states[r - 1].norm(dim=-1)).mean().item()
        logp = out.logits.log_softmax(-1)
        kl = torch.sum(final.exp() * (final - logp), -1).mean().item()
        agree = (logp.argmax(-1) == final.argmax(-1)).float().mean().item()
        table.add_row(
            str(r),
            f"{change:.4f}",
            f"{kl:.5f}",
            f"{100 * agree:.0f}%",
            f"{flops_per_token(cfg, r, seq_len) / 1e9:.3f}",
            f"{ms:.2f}",
        )
    Console().print(table)
    click.echo("Next: `huginn info nebel-raven-3.5b` for the published model's cost; `huginn train` trains one.")
