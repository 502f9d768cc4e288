"""`model.generate(...)` for the transformers shell: the model card's keyword arguments (and the
published code's strings) become `GenerationOptions` once (`huginn.infer.options`), the generation
config becomes `Sampling` and `Stopping`, and `generate_with` runs them.

Accepted besides a `GenerationConfig` and its fields: the option keywords (`options.KWARGS`:
`num_steps`, `init_scale`, `criterion`, `exit_threshold`, `exit_evaluator`, `min_steps`,
`check_criterion_every_n_steps`, `do_not_exit_in_prefill`, `continuous_compute`,
`cache_lookup_strategy` / `cache_kwargs={"lookup_strategy": ...}`, `draft_steps`,
`lookahead_for_draft`, `verification_threshold`, `compile`; the parallel sampler's `sampler`,
`wavefront` / `max_wavefront`, `inner_recurrence`, `freeze_threshold` / `exit_t`,
`freeze_strategy`, `state_noise_mixing`, `headway`) and the inputs `attention_mask`,
`streamer`, `tokenizer` (for `stop_strings`), `generator`, `use_cache` (True: generation always
caches) and `past_key_values` (an empty `HuginnStaticCache` to decode into).
Unknown keywords, and generation-config fields this code does not implement (`num_return_sequences`,
`output_scores`, `min_new_tokens`, ...), are errors, named.
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
from huginn.infer.generate import Generation, Stopping
from huginn.infer.options import KWARGS, GenerationOptions, generate_with
from huginn.infer.sampling import Sampling
from huginn.model.recurrent import check_token_inputs

INPUTS = ("attention_mask", "streamer", "tokenizer", "generator", "use_cache", "past_key_values")

# generation-config fields read here; any other field must be unset (or at its neutral value)
READ_FIELDS = {
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",  # the prompt's business, not generation's
    "stop_strings",
    "return_dict_in_generate",
    "transformers_version",
    "_from_model_config",
}
NEUTRAL = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "use_cache": True,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "output_logits": False,
}

# transformers renamed the outputs' `past_key_values` field to `cache` within 5.x (the old name then
# warns); the cache goes in whichever field the installed version has
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(GenerateDecoderOnlyOutput)} else "past_key_values"


@dataclass
class HuginnGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' decoder-only output plus `compute_steps` (B, new_tokens), speculative stats and
    the parallel sampler's cost (`forwards`: model forwards, the prompt's included; `sampler_stats`:
    core_passes, position_steps, early_freezes)."""

    compute_steps: Tensor | None = None
    acceptance_rate: float | None = None
    forwards: int | None = None
    sampler_stats: dict | None = None

    if CACHE_FIELD == "cache":

        @property
        def past_key_values(self):  # the model card's name, without transformers' deprecation warning
            return self.cache


def model_generate(model, input_ids: Tensor | None = None, generation_config: GenerationConfig | None = None, **kwargs):
    """`model.generate`: see the module docstring."""
    input_ids, inputs = _prompt(model, input_ids, kwargs)
    ours = {k: kwargs.pop(k) for k in KWARGS if k in kwargs}
    gc = _generation_config(model, generation_config, kwargs)
    options = GenerationOptions.from_kwargs(ours, Sampling.from_generation_config(gc))
    result = generate_with(
        model,
        input_ids,
        options,
        _stopping(gc, input_ids.shape[1], inputs.get("tokenizer")),
        attention_mask=inputs.get("attention_mask"),
        cache=_cache(inputs),
        streamer=inputs.get("streamer"),
        generator=inputs.get("generator"),
    )
    return _output(gc, result)


@torch.no_grad()
def generate_with_adaptive_compute(
    model, input_ids: Tensor, generation_config: GenerationConfig | None = None, **kwargs
):
    """The model card's name; `criterion` defaults to "none" (fixed depth), as published."""
    kwargs.setdefault("criterion", "none")
    return model_generate(model, input_ids, generation_config, **kwargs)


def _prompt(model, input_ids: Tensor | None, kwargs: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """(input_ids (B, T), the input keywords popped from `kwargs`); one prompt may come without a batch dim."""
    if input_ids is None:
        input_ids = kwargs.pop("inputs", None)
    if input_ids is None:
        raise HuginnError("generate needs input_ids (B, T)")
    inputs = {k: kwargs.pop(k) for k in INPUTS if k in kwargs}
    if isinstance(input_ids, Tensor) and input_ids.dim() == 1:
        input_ids = input_ids[None]
        mask = inputs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 1:
            inputs["attention_mask"] = mask[None]
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:  # named here; values are checked once, later
        check_token_inputs(input_ids, None, model.model_config.vocab_size)
    return input_ids, inputs


def _generation_config(model, generation_config: GenerationConfig | None, kwargs: dict[str, Any]) -> GenerationConfig:
    """The model's (or the given) generation config updated with `kwargs`; unknown keywords and
    fields this code does not implement are refused, named."""
    gc = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unknown = {k: v for k, v in gc.update(**kwargs).items() if v is not None}
    if unknown:
        close = [m for k in sorted(unknown) for m in difflib.get_close_matches(k, (*KWARGS, *INPUTS), n=1)]
        hint = f"did you mean {', '.join(repr(m) for m in close)}? " if close else ""
        raise HuginnError(f"generate got unknown argument(s) {', '.join(sorted(unknown))}; {hint}see docs/inference.md")
    if (gc.num_beams or 1) > 1:
        raise HuginnError("beam search is not supported for recurrent-depth models; use num_beams=1")
    default = GenerationConfig().to_dict()
    unsupported = sorted(
        k
        for k, v in gc.to_dict().items()
        if k not in READ_FIELDS and v is not None and v != default.get(k) and (k not in NEUTRAL or v != NEUTRAL[k])
    )
    if unsupported:
        raise HuginnError(
            f"generate does not implement {', '.join(f'{k}={getattr(gc, k)!r}' for k in unsupported)} for "
            "recurrent-depth models; unset it (e.g. pass it as None) or see docs/inference.md"
        )
    return gc


def _stopping(gc: GenerationConfig, prompt_len: int, tokenizer) -> Stopping:
    max_new = gc.max_new_tokens
    if max_new is None:
        max_new = (gc.max_length or 20) - prompt_len
    if not isinstance(max_new, int) or max_new < 1:
        raise HuginnError(
            f"max_new_tokens must be >= 1, got {max_new!r} (max_length {gc.max_length} and a prompt of {prompt_len})"
        )
    eos = gc.eos_token_id
    if isinstance(eos, Tensor):
        eos = eos.flatten().tolist()
    eos_ids = tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    stop_strings = None
    if gc.stop_strings:
        if tokenizer is None:
            raise HuginnError("stop_strings need the tokenizer: pass generate(..., tokenizer=tokenizer)")
        from transformers.generation.stopping_criteria import StopStringCriteria

        stop_strings = StopStringCriteria(tokenizer, gc.stop_strings)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    return Stopping(max_new, eos_ids, stop_strings, int(pad))


def _cache(inputs: dict[str, Any]):
    """`past_key_values`: None, or an empty HuginnStaticCache (checked by `generate`); `use_cache`
    must not be False (generation always caches)."""
    if inputs.get("use_cache") is False:
        raise HuginnError(
            "use_cache=False is not supported: generation always decodes with a KV cache "
            "(equal to uncached decoding, tested); drop use_cache"
        )
    return inputs.get("past_key_values")


def _output(gc: GenerationConfig, result: Generation):
    if not gc.return_dict_in_generate:
        return result.sequences
    # the cache goes under the installed version's field name (typed as tuples there, hence Any)
    fields_: dict[str, Any] = {"sequences": result.sequences, CACHE_FIELD: result.cache}
    stats = {k: v for k, v in result.extras.items() if k in ("core_passes", "position_steps", "early_freezes")}
    return HuginnGenerateOutput(
        **fields_,
        compute_steps=result.compute_steps,
        acceptance_rate=result.extras.get("acceptance_rate"),
        forwards=result.extras.get("forwards"),
        sampler_stats=stats or None,
    )
