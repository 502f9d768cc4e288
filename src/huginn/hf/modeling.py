"""`RavenForCausalLM`: the recurrent model with transformers' PreTrainedModel + GenerationMixin API.

This class *is* `huginn.model.RecurrentLM` (same modules, same computation, same parameter names as
the published checkpoint) plus: loading/saving in the published format, the model card's forward
arguments (`num_steps`, `init_scale`, `input_states`, `labels`, `attention_mask`, `use_cache`), and
outputs with `.latent_states`. Note: as in the published code, `labels` are already shifted (the
loss compares logits[:, t] with labels[:, t]; -100 is ignored).
Non-goals: generation strategies and fast caches (`huginn.infer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import ModelOutput

from huginn.errors import HuginnError
from huginn.hf.cache import HuginnDynamicCache
from huginn.hf.configuration import RavenConfig
from huginn.model.init import init_module
from huginn.model.layers import rope_table
from huginn.model.recurrent import RecurrentLM


@dataclass
class CausalLMOutputRecurrentLatents(ModelOutput):
    loss: Tensor | None = None
    log_ppl: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: Cache | None = None
    latent_states: Tensor | None = None  # ln_f(final state), detached, as published
    hidden_states: Tensor | None = None  # the final state before ln_f (feed back as input_states)
    states: tuple[Tensor, ...] | None = None  # the state after every step, with return_states=True
    attention_maps: dict | None = None
    stats: dict | None = None


class RavenPreTrainedModel(PreTrainedModel):
    config_class = RavenConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SandwichBlock", "PreNormBlock", "PostNormBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: torch.nn.Module) -> None:
        name = next((n for n, m in self.named_modules() if m is module), "")
        if name == "lm_head" and self.model_config.tie_embeddings:
            return
        init_module(module, name, self.model_config)


class RavenForCausalLM(RavenPreTrainedModel, RecurrentLM, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: RavenConfig):
        super().__init__(config)
        self.build(config.to_model_config())
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.transformer.wte

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.checkpoint_core = enable

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.checkpoint_core = True

    def gradient_checkpointing_disable(self) -> None:
        self.checkpoint_core = False

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        num_steps: int | tuple[int, int] | None = None,
        init_scale: float = 1.0,
        input_states: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_states: bool = False,
        return_dict: bool | None = None,
        cache_position: Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputRecurrentLatents:
        if input_ids is None:
            raise HuginnError("input_ids is required")
        cache = past_key_values
        if use_cache and (cache is None or (isinstance(cache, DynamicCache) and cache.get_seq_length() == 0)):
            cache = HuginnDynamicCache()
        elif cache is not None and not use_cache and use_cache is not None:
            cache = None
        if cache is not None and not hasattr(cache, "key_cache") and not getattr(cache, "is_huginn_cache", False):
            raise HuginnError(
                f"{type(cache).__name__} cannot hold a recurrent model's cache; pass a HuginnDynamicCache or none"
            )
        out = RecurrentLM.forward(
            self,
            input_ids,
            num_steps,
            input_states=input_states,
            init_scale=init_scale,
            generator=generator,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            return_states=return_states,
        )
        loss = log_ppl = None
        if labels is not None:
            logits = out.logits
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), ignore_index=-100
            )
            log_ppl = loss.detach().clone()
        return CausalLMOutputRecurrentLatents(
            loss=loss,
            log_ppl=log_ppl,
            logits=out.logits,
            past_key_values=cache if use_cache or past_key_values is not None else None,
            latent_states=out.latents.detach(),
            hidden_states=out.state,
            states=tuple(out.states) if out.states is not None else None,
        )

    # --- generation (huginn.infer does the work) ---------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, generation_config=None, **kwargs):  # type: ignore[override]
        """The model card's API: `generate(input_ids, generation_config, num_steps=..., criterion=...,
        exit_threshold=..., continuous_compute=..., cache_lookup_strategy=..., draft_steps=..., ...)`.
        With `return_dict_in_generate=True` the output carries `compute_steps` (B, new_tokens)."""
        from huginn.infer.hf_bridge import model_generate

        return model_generate(self, inputs, generation_config, **kwargs)

    @torch.no_grad()
    def generate_with_adaptive_compute(self, inputs: Tensor, generation_config=None, **kwargs):
        from huginn.infer.hf_bridge import generate_with_adaptive_compute

        return generate_with_adaptive_compute(self, inputs, generation_config, **kwargs)

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load a published-format checkpoint; missing or unexpected weights are an error, named."""
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        # let transformers finish loading, then report every problem in one line of our own
        model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        missing = sorted(k for k in info.get("missing_keys", ()) if k not in _OPTIONAL_KEYS)
        if model.model_config.tie_embeddings:
            missing = [k for k in missing if k != "lm_head.weight"]
        unexpected = sorted(k for k in info.get("unexpected_keys", ()) if k not in _OPTIONAL_KEYS)
        mismatched = () if allow_mismatch else info.get("mismatched_keys", ())
        if missing or unexpected or mismatched:
            parts = []
            if missing:
                parts.append(f"missing weights {_names(missing)}")
            if unexpected:
                parts.append(f"unexpected weights {_names(unexpected)}")
            if mismatched:
                parts.append(
                    f"weights of the wrong shape {_names([m[0] if isinstance(m, tuple) else m for m in mismatched])}"
                )
            raise HuginnError(f"checkpoint does not match its config.json: {'; '.join(parts)}")
        if "freqs_cis" in info.get("missing_keys", ()):
            mc = model.model_config
            model.freqs_cis = rope_table(mc.dim_head, mc.block_size, mc.rope_base, mc.rope_scaling).to(model.device)
        return (model, info) if want_info else model


_OPTIONAL_KEYS = {"freqs_cis", "lm_head.weight"}


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


HuginnForCausalLM = RavenForCausalLM
