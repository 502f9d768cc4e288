"""`huginn eval`: every task at every depth, one model load, a table, results.csv and depth.png.

    huginn eval CHECKPOINT --tasks T1,T2 --num-steps 1,2,4,8,16,32 [--exit CRITERION[:T1,T2]]
                [--limit N] [--out DIR] [--include-path DIR] [--num-fewshot N]
                [--apply-chat-template] [--system-instruction TEXT] [--fewshot-as-multiturn]
    huginn eval CHECKPOINT --text FILE.txt|FILE.parquet --num-steps 1,2,4,8

A thin command over `huginn.eval.sweep` (the cells, outputs and progress) and `huginn.eval.lm`
(the lm-eval model). Everything a user can get wrong is checked before the model loads and before
DIR is created (steps, exits, tasks, the checkpoint, the text file, DIR itself): one line, exit 2,
nothing written. A re-run with the same DIR skips the cells already done. Needs the `eval` extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from huginn.errors import HuginnError


def _metadata(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise HuginnError(
            f'--metadata is not JSON ({err.msg}); write e.g. --metadata \'{{"path": "x.jsonl"}}\''
        ) from None
    if not isinstance(value, dict):
        raise HuginnError('--metadata must be a JSON object, e.g. \'{"path": "x.jsonl"}\'')
    return value


def _limit(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise HuginnError(f"--limit {text!r} is not a number; pass a count (100) or a fraction (0.1)") from None
    if value <= 0:
        raise HuginnError(f"--limit must be > 0, got {text}")
    return int(value) if value >= 1 else value


@click.command()
@click.argument("checkpoint")
@click.option("--tasks", default=None, help="Comma-separated lm-eval tasks or groups, e.g. huginn_tasks,arc_easy.")
@click.option("--text", "text_file", default=None, help="Loss by depth on a local .txt or .parquet (text column).")
@click.option(
    "--num-steps",
    "num_steps",
    default=None,
    help="Depths to run, e.g. 1,2,4,8,16,32 (default: the model's mean_recurrence).",
)
@click.option(
    "--exit",
    "exit_spec",
    default=None,
    metavar="CRITERION[:T1,T2,...]",
    help="Also sweep an exit criterion's thresholds at the largest --num-steps, e.g. kl:1e-3,5e-4,1e-4.",
)
@click.option("--limit", default=None, help="Documents per task: a count, or a fraction below 1.")
@click.option("--out", default=None, help="Output folder (default: eval-<checkpoint name>); a re-run skips done cells.")
@click.option(
    "--include-path", "include_paths", multiple=True, help="A folder of your own lm-eval task YAMLs (repeatable)."
)
@click.option(
    "--num-fewshot", type=click.IntRange(min=0), default=None, help="Few-shot examples (default: the task's)."
)
@click.option("--apply-chat-template", is_flag=True, help="Wrap prompts in the tokenizer's chat template.")
@click.option("--system-instruction", default=None, help="A system prompt (with --apply-chat-template: a system turn).")
@click.option(
    "--fewshot-as-multiturn", is_flag=True, help="Few-shot examples as chat turns (needs --apply-chat-template)."
)
@click.option(
    "--metadata", default=None, help='JSON passed to tasks, e.g. \'{"path": "gsm8k_test.jsonl"}\' for huginn_gsm8k_cot.'
)
@click.option("--batch-size", default="8", show_default=True, help="Requests per forward, or 'auto'.")
@click.option("--tokenizer", "tokenizer_dir", default=None, help="Tokenizer folder (default: the checkpoint's).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float64"]), default="float32", show_default=True)
@click.option("--cache", default=None, help="KV-cache policy (as huginn generate --cache); default: exact.")
@click.option(
    "--init-scale",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Initial state noise (0: deterministic).",
)
@click.option("--device", default="cpu", show_default=True)
def eval_command(
    checkpoint,
    tasks,
    text_file,
    num_steps,
    exit_spec,
    limit,
    out,
    include_paths,
    num_fewshot,
    apply_chat_template,
    system_instruction,
    fewshot_as_multiturn,
    metadata,
    batch_size,
    tokenizer_dir,
    dtype,
    cache,
    init_scale,
    device,
):
    """Evaluate CHECKPOINT on lm-eval tasks (or the loss of --text) at several depths."""
    from huginn.checkpoint import check_checkpoint
    from huginn.eval import register
    from huginn.eval import sweep as sw
    from huginn.outdir import check_writable_out

    # lm-eval's own bars off (tqdm reads this when it is imported); ours is the one display
    os.environ.setdefault("TQDM_DISABLE", "1")
    # --- every check first: nothing is loaded or written before they pass ---------------------
    if (tasks is None) == (text_file is None):
        raise HuginnError("pass --tasks T1,T2 or --text FILE (one of them)")
    if fewshot_as_multiturn and not apply_chat_template:
        raise HuginnError("--fewshot-as-multiturn needs --apply-chat-template")
    register()
    given_steps = sw.parse_num_steps(num_steps) if num_steps is not None else None
    exits = sw.parse_exit_sweep(exit_spec) if exit_spec else []
    n_limit = _limit(limit)
    meta = _metadata(metadata)
    if batch_size != "auto" and not (batch_size.isdigit() and int(batch_size) >= 1):
        raise HuginnError(f"--batch-size must be an integer >= 1 or 'auto', got {batch_size!r}")
    docs: list[str] = []
    manager = None
    if text_file is not None:
        docs = sw.read_text_docs(text_file, int(n_limit) if isinstance(n_limit, int) else None)
        names = [f"text:{Path(text_file).name}"]
    else:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names:
            raise HuginnError("--tasks is empty; pass e.g. --tasks huginn_tasks")
        manager = sw.task_manager(names, include_paths, meta)
    config = check_checkpoint(checkpoint)
    assert config is not None
    steps = given_steps or [config.to_model_config().mean_recurrence]
    out_dir = check_writable_out(out or f"eval-{Path(checkpoint).resolve().name}")
    cells = sw.plan(names, steps, exits)

    # --- the model, once -------------------------------------------------------------------------
    from huginn.eval.lm import HuginnLM

    lm = HuginnLM(
        pretrained=checkpoint,
        tokenizer=tokenizer_dir,
        num_steps=steps[0],
        cache=cache,
        init_scale=init_scale,
        dtype=dtype,
        batch_size=batch_size,
        device=device,
    )
    settings = dict(
        limit=n_limit,
        num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template,
        system_instruction=system_instruction,
        fewshot_as_multiturn=fewshot_as_multiturn,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    from huginn.eval.progress import SweepProgress

    progress = SweepProgress(cells)
    lm.progress = progress.advance
    ran = skipped = 0
    try:
        for cell in cells:
            path = cell.path(out_dir)
            if path.is_file():
                progress.skip_cell(cell, sw.requests_of(json.loads(path.read_text())))
                skipped += 1
                continue
            progress.start_cell(cell)
            if text_file is not None:
                record = sw.run_text_cell(lm, cell, docs)
            else:
                record = sw.run_task_cell(lm, cell, manager, settings)
            record["requests"] = progress.cell_done
            record["checkpoint"] = str(checkpoint)
            progress.end_cell()
            sw.write_json(path, record)
            ran += 1
    finally:
        progress.close()
        rows = sw.collect(out_dir, cells)
        if rows:
            sw.write_csv(out_dir, rows)
    plot = sw.plot(out_dir, rows)
    click.echo(sw.table(rows))
    where = f"{out_dir}/results.csv" + (f", {plot}" if plot else "")
    click.echo(f"[{ran} cells run, {skipped} already done; {where}]", err=True)
