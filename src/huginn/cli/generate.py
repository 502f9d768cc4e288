"""`huginn generate` and `huginn chat`: thin commands over `huginn.infer.options.generate_with`.

    huginn generate CHECKPOINT "prompt" [--num-steps N] [--exit kl:5e-4] [--cache compress-s16]
                    [--continuous] [--stream] [--draft-steps K] [--tokenizer DIR] ...
                    [--parallel [--wavefront W] [--inner-recurrence R] [--freeze-threshold T]]
    huginn chat CHECKPOINT [--tokenizer DIR] [--system TEXT] ...

Both print text to stdout only (no files, so nothing partial is left behind) and the compute spent
(core steps per token) to stderr. The tokenizer comes from the checkpoint folder or `--tokenizer`;
`chat` needs one with a chat template. The flags become `GenerationOptions` once, before anything
loads (a mistake is one line), and are checked against the model's config once it has loaded
(`--cache latest` is the reference's latest-mN for the model's own core). Non-goals: serving,
batching prompts from files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from huginn.errors import HuginnError


def load(checkpoint: str, tokenizer_dir: str | None, dtype: str):
    """(model, tokenizer) of a checkpoint folder, with one-line errors; what every command that
    runs a checkpoint on text loads it with."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from huginn.checkpoint import check_checkpoint, load_checkpoint

    hf_logging.disable_progress_bar()

    path = Path(checkpoint)
    check_checkpoint(path)  # config.json and weight files, before the tokenizer reads the folder
    tok_path = Path(tokenizer_dir) if tokenizer_dir else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    except Exception:  # transformers raises several types for "no tokenizer here"
        raise HuginnError(
            f"no tokenizer found in {tok_path}; pass --tokenizer DIR (a folder with tokenizer.json)"
        ) from None
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = load_checkpoint(path, dtype=torch_dtype)
    if len(tokenizer) > model.model_config.vocab_size:
        raise HuginnError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.model_config.vocab_size} (its vocab_size); "
            "pass the model's own tokenizer with --tokenizer"
        )
    return model, tokenizer


def _parse(
    num_steps,
    exit_spec,
    cache,
    continuous,
    temperature,
    top_k,
    top_p,
    min_p,
    repetition_penalty,
    draft_steps,
    lookahead,
    init_scale,
    compile,
    freeze,
    parallel=False,
    wavefront=None,
    inner_recurrence=None,
    freeze_threshold=None,
    **_,
):
    """The flags as `GenerationOptions`, parsed once, before anything loads (fail fast, one line);
    checked against the model by `generate_with`."""
    from huginn.infer.options import CacheSpec, ExitRule, GenerationOptions
    from huginn.infer.parallel import ParallelSampling
    from huginn.infer.sampling import Sampling
    from huginn.infer.speculative import Speculation

    knobs = {"wavefront": wavefront, "inner_steps": inner_recurrence, "freeze_threshold": freeze_threshold}
    sampler = None
    if parallel:
        # --continuous: new positions start from the previous position's state (the reference's meaning)
        init = {"init": "previous"} if continuous else {}
        sampler = ParallelSampling(**{k: v for k, v in knobs.items() if v is not None}, **init)
        continuous = False
    elif any(v is not None for v in knobs.values()):
        flag = {
            "wavefront": "--wavefront",
            "inner_steps": "--inner-recurrence",
            "freeze_threshold": "--freeze-threshold",
        }
        raise HuginnError(f"{flag[next(k for k, v in knobs.items() if v is not None)]} needs --parallel")

    sampling = Sampling(
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=top_k or None,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
    )
    return GenerationOptions(
        num_steps=num_steps,
        exit=ExitRule.parse(exit_spec) if exit_spec else ExitRule(),
        cache=CacheSpec.parse(cache),
        sampling=sampling,
        continuous=continuous,
        init_scale=init_scale,
        speculative=Speculation(draft_steps, lookahead) if draft_steps else None,
        compile="frozen" if freeze else compile,
        parallel=sampler,
    )


def _generate(model, tok, ids, options, max_new_tokens: int, seed: int | None, streamer=None):
    import torch

    from huginn.infer.generate import Stopping
    from huginn.infer.options import generate_with

    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    stopping = Stopping(max_new_tokens, () if eos is None else (eos,), None, 0 if pad is None else pad)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return generate_with(model, ids, options, stopping, streamer=streamer, generator=generator)


FLAGS = [
    click.option(
        "--tokenizer",
        "tokenizer_dir",
        type=click.Path(exists=True, file_okay=False),
        help="Tokenizer folder (default: the checkpoint's).",
    ),
    click.option(
        "--num-steps",
        type=click.IntRange(min=1),
        default=None,
        help="Core steps per token (the maximum, with --exit). Default: the model's mean_recurrence.",
    ),
    click.option(
        "--exit",
        "exit_spec",
        default=None,
        metavar="CRITERION[:THRESHOLD]",
        help="Adaptive compute: entropy-diff, latent-diff, kl, minp-kl, argmax-stability, cosine; e.g. kl:5e-4.",
    ),
    click.option(
        "--cache",
        default="latest",
        show_default=True,
        help="KV-cache policy, e.g. compress-s16, latest-compress-s16, skip; 'latest' is the reference's "
        "latest-mN for the model's N-layer core (an explicit N must match it).",
    ),
    click.option(
        "--continuous", is_flag=True, help="Start each token's recurrence from the previous token's final latent."
    ),
    click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True),
    click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 = greedy."),
    click.option("--top-k", type=click.IntRange(min=0), default=0),
    click.option("--top-p", type=click.FloatRange(0, 1), default=None),
    click.option("--min-p", type=click.FloatRange(0, 1), default=None),
    click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=None),
    click.option(
        "--draft-steps",
        type=click.IntRange(min=1),
        default=None,
        help="Self-speculative decoding: draft at this depth (greedy).",
    ),
    click.option(
        "--lookahead",
        type=click.IntRange(min=1),
        default=4,
        show_default=True,
        help="Drafted tokens per speculative round.",
    ),
    click.option("--seed", type=int, default=None, help="Seed for sampling."),
    click.option(
        "--init-scale",
        type=click.FloatRange(min=0),
        default=None,
        help="Initial state noise; 0 = deterministic zero state. Default: the model's state_init_scale (1.0, as published).",
    ),
    click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True),
    click.option(
        "--compile",
        is_flag=True,
        help="Decode through torch.compile'd graphs (about 2x faster after compiling for 30-70 s; cached on disk for later runs).",
    ),
    click.option(
        "--freeze",
        is_flag=True,
        help="Compiled decoding with the weights compiled in as constants: fastest for --dtype bfloat16 on CPUs with AMX (implies --compile; compiling takes 1-2 min).",
    ),
    click.option(
        "--parallel",
        is_flag=True,
        help="Parallel (diffusion-forcing) sampler: refine a wavefront of positions together, a new token every forward.",
    ),
    click.option(
        "--wavefront",
        type=click.IntRange(min=1),
        default=None,
        help="With --parallel: positions advanced together (default 16; 1 = one token at a time).",
    ),
    click.option(
        "--inner-recurrence",
        type=click.IntRange(min=1),
        default=None,
        help="With --parallel: core steps per forward (default 4; must divide --num-steps).",
    ),
    click.option(
        "--freeze-threshold",
        type=click.FloatRange(min=0),
        default=None,
        help="With --parallel: freeze a position once its relative latent change per forward is below this "
        "(default 0.03; 0 = only after --num-steps steps).",
    ),
]


def _flags(f):
    for opt in reversed(FLAGS):
        f = opt(f)
    return f


def _report(out, n_new: int, seconds: float) -> None:
    steps = out.compute_steps[0][:n_new]
    steps = steps[steps > 0]
    msg = f"[{n_new} tokens in {seconds:.2f}s, {n_new / max(seconds, 1e-9):.1f} tok/s"
    if steps.numel():
        msg += f"; core steps/token mean {steps.float().mean():.1f} (min {int(steps.min())}, max {int(steps.max())})"
    if "acceptance_rate" in out.extras:
        msg += f"; draft acceptance {out.extras['acceptance_rate']:.0%}"
    if "forwards" in out.extras and n_new > 0:
        msg += parallel_cost(out.extras, n_new, int(out.compute_steps[0, 0]))
    click.echo(msg + "]", err=True)


def parallel_cost(extras: dict, n_new: int, num_steps: int) -> str:
    """The parallel sampler's cost against one token at a time: forwards per token, and how many
    core steps run one after another (the prompt's forward, then inner steps per forward) against
    sequential decoding's num_steps per token."""
    forwards, serial = extras["forwards"], extras["core_passes"]
    sequential = n_new * num_steps  # the prompt's forward plus one forward of num_steps per later token
    return (
        f"; parallel: {forwards} forwards, {forwards / n_new:.2f}/token (one at a time: 1.00); "
        f"{serial} core steps in sequence against {sequential}, x{sequential / max(serial, 1):.2f}"
    )


class _Streamer:
    """Prints decoded text as tokens arrive (skips the prompt); decodes the whole reply each time so
    multi-byte characters come out whole."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.shown, self.skip = tokenizer, [], 0, True

    def put(self, value) -> None:
        if self.skip:
            self.skip = False
            return
        self.ids.extend(value.flatten().tolist())
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        click.echo(text[self.shown :], nl=False)
        sys.stdout.flush()
        self.shown = len(text)

    def end(self) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        click.echo(text[self.shown :])


@click.command()
@click.argument("checkpoint")
@click.argument("prompt")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated.")
@click.option(
    "--engine",
    type=click.Choice(["huginn", "vllm"]),
    default="huginn",
    show_default=True,
    help="vllm: generate through vLLM (the vllm extra): fixed depth, zero initial state, --cache full or compress-sR.",
)
@_flags
def generate(checkpoint, prompt, stream, engine, tokenizer_dir, dtype, **opts):
    """Generate a continuation of PROMPT with the checkpoint in CHECKPOINT."""
    import torch

    if engine == "vllm":
        from huginn.serve.server import generate_for_cli

        text, n_new, seconds, steps = generate_for_cli(checkpoint, prompt, tokenizer_dir, dtype, stream, opts)
        click.echo(prompt + text)
        click.echo(f"[{n_new} tokens in {seconds:.2f}s through vLLM, {steps} core steps/token]", err=True)
        return
    options = _parse(**opts)
    model, tok = load(checkpoint, tokenizer_dir, dtype)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], dtype=torch.long)
    if ids.shape[1] == 0:
        raise HuginnError("the prompt is empty after tokenization; pass some text")
    if stream:
        click.echo(prompt, nl=False)
    t0 = time.perf_counter()
    streamer = _Streamer(tok) if stream else None
    out = _generate(model, tok, ids, options, opts["max_new_tokens"], opts["seed"], streamer)
    dt = time.perf_counter() - t0
    n_new = out.sequences.shape[1] - ids.shape[1]
    if not stream:
        click.echo(prompt + tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True))
    _report(out, n_new, dt)


@click.command()
@click.argument("checkpoint")
@click.option("--system", default=None, help="System prompt.")
@_flags
def chat(checkpoint, system, tokenizer_dir, dtype, **opts):
    """Chat with the checkpoint in CHECKPOINT through its chat template (Ctrl-D or /exit to leave)."""
    import torch

    options = _parse(**opts)
    model, tok = load(checkpoint, tokenizer_dir, dtype)
    if not getattr(tok, "chat_template", None):
        raise HuginnError(
            "the tokenizer has no chat template; pass --tokenizer DIR with one (or use `huginn generate`)"
        )
    messages = [{"role": "system", "content": system}] if system else []
    stdin = click.get_text_stream("stdin")
    while True:
        click.echo("you> ", nl=False, err=True)
        line = stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            click.echo("", err=True)
            return
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)
        if ids.shape[1] + opts["max_new_tokens"] > model.model_config.block_size:
            raise HuginnError(
                f"the conversation ({ids.shape[1]} tokens) no longer fits the block size {model.model_config.block_size}; start a new chat"
            )
        t0 = time.perf_counter()
        out = _generate(model, tok, ids, options, opts["max_new_tokens"], opts["seed"], _Streamer(tok))
        dt = time.perf_counter() - t0
        reply = tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})
        _report(out, out.sequences.shape[1] - ids.shape[1], dt)
