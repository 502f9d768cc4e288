"""`huginn serve`: a checkpoint behind vLLM's OpenAI-compatible server, through huginn's vLLM plugin.

    huginn serve CHECKPOINT [--num-steps N] [--kv-mode full|shared] [--host H] [--port P] [VLLM FLAGS...]

Binds 127.0.0.1 unless `--host` says otherwise. Every flag it does not know goes to `vllm serve`
unchanged (`--dtype float32`, `--max-num-seqs 64`, `--enforce-eager`, `--tensor-parallel-size 2`,
...). The checkpoint and the options are checked before vLLM starts. Needs vLLM installed (the
`vllm` extra); the work is in `huginn.serve.server`. Non-goals: per-request depth (vLLM fixes the
depth when it loads the model; see docs/serving.md).
"""

from __future__ import annotations

import click

from huginn.serve.options import KV_MODES


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True})
@click.argument("checkpoint")
@click.option(
    "--num-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Core steps per token, fixed for the server's lifetime. Default: the model's mean_recurrence.",
)
@click.option(
    "--kv-mode",
    type=click.Choice(KV_MODES),
    default="full",
    show_default=True,
    help="full: one KV cache per (core step, core layer), outputs equal `huginn generate --cache full`; "
    "shared: one per core layer, overwritten each step (the reference plugin's), equal to `--cache compress-sR`.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the vLLM command line and exit.")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(checkpoint, num_steps, kv_mode, host, port, dry_run, vllm_args):
    """Serve CHECKPOINT through vLLM's OpenAI-compatible server (extra flags go to `vllm serve`)."""
    from huginn.serve.server import prepare, require_vllm, run_server, server_args

    prepared = prepare(checkpoint, num_steps, kv_mode)
    args = server_args(prepared, host, port, vllm_args)
    if dry_run:
        import shlex

        click.echo(shlex.join(["vllm", *args]))
        return
    require_vllm()
    click.echo(
        f"huginn serve: {prepared.checkpoint} at {prepared.options.num_steps} steps, kv_mode {kv_mode}, "
        f"on http://{host}:{port}/v1",
        err=True,
    )
    run_server(args)
