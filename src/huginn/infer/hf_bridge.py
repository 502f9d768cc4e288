"""`model.generate(...)` for the transformers shell: convert the model card's keyword arguments
(and the published code's) once into typed values and dispatch to `generate` or `speculative`.

Accepted besides a `GenerationConfig` and its fields: `num_steps`, `init_scale`, `criterion`,
`exit_threshold`, `exit_evaluator`, `min_steps`, `check_criterion_every_n_steps`,
`continuous_compute`, `cache_lookup_strategy` / `cache_kwargs={"lookup_strategy": ...}`,
`draft_steps`, `lookahead_for_draft`, `verification_threshold`, `attention_mask`, `streamer`,
`tokenizer` (for `stop_strings`), `generator`, `compile` (compiled decoding, `huginn.infer.compiled`:
True, or "frozen" with the weights compiled in).
Unknown keywords are an error, named.
Non-goals: beam search and transformers' logits processors (use plain transformers models for those).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

from huginn.errors import HuginnError
from huginn.infer.exits import make_criterion
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy
from huginn.infer.sampling import Sampling
from huginn.model.recurrent import check_token_inputs, normalize_steps

OUR_KWARGS = {
    "num_steps",
    "init_scale",
    "criterion",
    "exit_threshold",
    "exit_evaluator",
    "min_steps",
    "check_criterion_every_n_steps",
    "continuous_compute",
    "cache_lookup_strategy",
    "cache_kwargs",
    "draft_steps",
    "lookahead_for_draft",
    "verification_threshold",
    "attention_mask",
    "streamer",
    "tokenizer",
    "generator",
    "do_not_exit_in_prefill",
    "use_cache",
    "past_key_values",
    "compile",
}


# transformers renamed the outputs' `past_key_values` field to `cache` within 5.x (the old name then
# warns); the cache goes in whichever field the installed version has
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(GenerateDecoderOnlyOutput)} else "past_key_values"


@dataclass
class HuginnGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' decoder-only output plus `compute_steps` (B, new_tokens) and speculative stats."""

    compute_steps: Tensor | None = None
    acceptance_rate: float | None = None

    if CACHE_FIELD == "cache":

        @property
        def past_key_values(self):  # the model card's name, without transformers' deprecation warning
            return self.cache


def model_generate(model, input_ids: Tensor | None = None, generation_config: GenerationConfig | None = None, **kwargs):
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)
    if input_ids is None:
        raise HuginnError("generate needs input_ids (B, T)")
    ours = {k: kwargs.pop(k) for k in list(kwargs) if k in OUR_KWARGS}
    if isinstance(input_ids, Tensor) and input_ids.dim() == 1:  # one prompt (and its mask) without a batch dim
        input_ids = input_ids[None]
        mask = ours.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 1:
            ours["attention_mask"] = mask[None]
    gc = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unknown = gc.update(**kwargs)
    unknown = {k: v for k, v in unknown.items() if v is not None}
    if unknown:
        close = [m for k in sorted(unknown) for m in difflib.get_close_matches(k, OUR_KWARGS, n=1)]
        hint = f"did you mean {', '.join(repr(m) for m in close)}? " if close else ""
        raise HuginnError(f"generate got unknown argument(s) {', '.join(sorted(unknown))}; {hint}see docs/inference.md")
    if (gc.num_beams or 1) > 1:
        raise HuginnError("beam search is not supported for recurrent-depth models; use num_beams=1")
    mc = model.model_config
    # the forward's reading of num_steps; decoding runs without gradients, so a pair is its total
    num_steps = sum(normalize_steps(ours.get("num_steps"), mc.mean_recurrence))
    attention_mask = ours.get("attention_mask")
    check_token_inputs(input_ids, attention_mask, mc.vocab_size)
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise HuginnError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}; "
            "pass the tokenizer's mask for the same prompts"
        )
    strategy = ours.get("cache_lookup_strategy")
    if strategy is None and ours.get("cache_kwargs"):
        strategy = ours["cache_kwargs"].get("lookup_strategy")
    policy = CachePolicy.parse(strategy, mc.n_layers_in_recurrent_block)
    criterion = ours.get("exit_evaluator") or ours.get("criterion")
    if criterion is None and "exit_threshold" in ours:
        criterion = "entropy-diff"
    crit = make_criterion(criterion, ours.get("exit_threshold", "auto"))
    depth = Depth(
        num_steps=num_steps,
        criterion=crit,
        min_steps=ours.get("min_steps", 0),
        check_every=ours.get("check_criterion_every_n_steps", 1),
        continuous=bool(ours.get("continuous_compute", False)),
        init_scale=ours.get("init_scale", 1.0),
    )
    max_new = gc.max_new_tokens
    if max_new is None:
        max_new = (gc.max_length or 20) - input_ids.shape[1]
    if not isinstance(max_new, int) or max_new < 1:
        raise HuginnError(
            f"max_new_tokens must be >= 1, got {max_new!r} (max_length {gc.max_length} and a prompt of {input_ids.shape[1]})"
        )
    eos = gc.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    if isinstance(eos, Tensor):
        eos_ids = tuple(eos.flatten().tolist())
    stop_strings = None
    if gc.stop_strings:
        tok = ours.get("tokenizer")
        if tok is None:
            raise HuginnError("stop_strings need the tokenizer: pass generate(..., tokenizer=tokenizer)")
        from transformers.generation.stopping_criteria import StopStringCriteria

        stop_strings = StopStringCriteria(tok, gc.stop_strings)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    stopping = Stopping(max_new, eos_ids, stop_strings, int(pad))
    sampling = Sampling.from_generation_config(gc)
    generator = ours.get("generator")

    if any(k in ours for k in ("draft_steps", "lookahead_for_draft", "verification_threshold")):
        from huginn.infer.speculative import speculative_generate

        if crit is not None:
            raise HuginnError(
                "speculative decoding runs a fixed num_steps; drop criterion/exit_threshold or draft_steps"
            )
        result = speculative_generate(
            model,
            input_ids,
            depth,
            stopping,
            draft_steps=ours.get("draft_steps", max(1, num_steps // 4)),
            lookahead=ours.get("lookahead_for_draft", 4),
            verification_threshold=ours.get("verification_threshold", 1.0),
            sampling=sampling,
            attention_mask=attention_mask,
            policy=policy,
            streamer=ours.get("streamer"),
        )
    else:
        result = generate(
            model,
            input_ids,
            depth,
            stopping,
            sampling,
            attention_mask,
            policy,
            streamer=ours.get("streamer"),
            generator=generator,
            compile=ours.get("compile", False),
        )
    if gc.return_dict_in_generate:
        # the cache goes under the installed version's field name (typed as tuples there, hence Any)
        fields_: dict[str, Any] = {"sequences": result.sequences, CACHE_FIELD: result.cache}
        return HuginnGenerateOutput(
            **fields_, compute_steps=result.compute_steps, acceptance_rate=result.extras.get("acceptance_rate")
        )
    return result.sequences


@torch.no_grad()
def generate_with_adaptive_compute(
    model, input_ids: Tensor, generation_config: GenerationConfig | None = None, **kwargs
):
    """The model card's name; `criterion` defaults to "none" (fixed depth), as published."""
    kwargs.setdefault("criterion", "none")
    return model_generate(model, input_ids, generation_config, **kwargs)
