"""`huginn retrofit BASE OUT`: convert a pretrained transformer into a recurrent-depth model.

A thin layer over `huginn.retrofit.retrofit` (argument parsing, progress, the summary line).
"""

from __future__ import annotations

import time

import click

from huginn.retrofit.convert import INJECTIONS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("base", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option(
    "--map",
    "map_name",
    metavar="NAME",
    help="A published layer map: tinyllama (4,8,4: 0-3|10-17|18-21), olmo2-1b (4,6,4: 0-3|6-11|12-15).",
)
@click.option(
    "--shape",
    metavar="P,R,C",
    help="First P layers as prelude, the R layers before the last C as core, the last C as coda.",
)
@click.option("--prelude", metavar="LAYERS", help="Base layers for the prelude, e.g. 0-3 or 0,1,3 (default: none).")
@click.option("--core", metavar="LAYERS", help="Base layers for the recurrent core, e.g. 10-17.")
@click.option("--coda", metavar="LAYERS", help="Base layers for the coda, e.g. 18-21 (default: none).")
@click.option(
    "--injection",
    type=click.Choice(INJECTIONS),
    default="identity",
    show_default=True,
    help="identity: adapter [0|I] (num_steps=1 reproduces the base cut to the map); "
    "linear: random adapter (Huginn's init, as the paper); add: state + prelude output.",
)
@click.option(
    "--mean-recurrence",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Default num_steps of the saved model (and the training depth's mean).",
)
@click.option(
    "--backprop-depth",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="mean_backprop_depth of the saved config (grad steps in training).",
)
@click.option(
    "--block-size",
    type=click.IntRange(1),
    default=None,
    help="Longest sequence (RoPE table length); default: the base's max_position_embeddings.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Weight dtype of the saved checkpoint.",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Check that num_steps=1 reproduces the base cut to the mapped layers (fp32, 1e-4).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the random adapter (--injection linear).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it already holds a checkpoint.")
def retrofit(
    base,
    out,
    map_name,
    shape,
    prelude,
    core,
    coda,
    injection,
    mean_recurrence,
    backprop_depth,
    block_size,
    dtype,
    check,
    seed,
    overwrite,
) -> None:
    """Convert the pretrained transformer BASE (a transformers folder or a .gguf file; Llama family or
    OLMo-2) into a recurrent-depth huginn checkpoint in the folder OUT.

    Name the layers with exactly one of --map, --shape or --prelude/--core/--coda; base layers not
    named are dropped.

    \b
    Examples:
      huginn retrofit TinyLlama-1.1B/ out/tinyllama-rec --map tinyllama
      huginn retrofit SmolLM2-135M-Instruct.Q4_1.gguf out/smol-rec --shape 4,8,4
      huginn retrofit base/ out/rec --prelude 0-3 --core 10-17 --coda 18-21 --injection linear
    """
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from huginn.outdir import check_writable_out
    from huginn.retrofit import retrofit as run

    check_writable_out(out, "OUT")

    hf_logging.disable_progress_bar()  # the status line below is the progress display
    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("retrofitting") as status:
        result = run(
            base,
            out,
            prelude=prelude,
            core=core,
            coda=coda,
            shape=shape,
            map_name=map_name,
            injection=injection,
            mean_recurrence=mean_recurrence,
            mean_backprop_depth=backprop_depth,
            block_size=block_size,
            dtype=dtype,
            check=check,
            overwrite=overwrite,
            seed=seed,
            progress=lambda msg: status.update(msg),
        )
    lm = result.layer_map
    dropped = lm.dropped(result.base_layers)
    click.echo(f"layers: {lm.describe()}; dropped {len(dropped)} of {result.base_layers}")
    if result.check is not None:
        click.echo(
            f"check: num_steps=1 vs base cut to the map: max |logit diff| {result.check.max_abs_diff:.2e} "
            f"(logits up to {result.check.max_abs_logit:.1f}, {result.check.n_tokens} tokens)"
        )
    click.echo(
        f"wrote {result.out} ({result.n_params / 1e6:.1f}M parameters, injection {injection}) "
        f"in {time.perf_counter() - start:.1f}s"
    )
