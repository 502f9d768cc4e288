"""`RavenForCausalLM`: the recurrent model with transformers' PreTrainedModel + GenerationMixin API.

This class *is* `huginn.model.RecurrentLM` (same modules, same computation, same parameter names as
the published checkpoint) plus: loading/saving in the published format, the model card's forward
arguments (`num_steps`, `init_scale`, `input_states`, `labels`, `attention_mask`, `use_cache`), and
outputs with `.latent_states`. Note: as in the published code, `labels` are already shifted (the
loss compares logits[:, t] with labels[:, t]; -100 is ignored).
Non-goals: generation strategies and fast caches (`huginn.infer`).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import ModelOutput

from huginn.config import ModelConfig
from huginn.errors import HuginnError
from huginn.hf.cache import HuginnDynamicCache
from huginn.hf.configuration import RavenConfig
from huginn.model.init import init_module
from huginn.model.layers import KVCache, rope_table
from huginn.model.recurrent import RecurrentLM, Steps, check_forward_kwargs


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
    model_config: ModelConfig
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
    accepts_loss_kwargs = False  # the Trainer must not pass num_items_in_batch: the loss is a mean

    def __init__(self, config: RavenConfig):
        super().__init__(config)
        self.build(config.to_model_config())
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.transformer.wte

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    # transformers' gradient checkpointing switches: the forward passes the flag to the recurrence,
    # which checkpoints each core step with gradients (the model itself holds no training state)
    gradient_checkpointing = False

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = None, every_n_layers: int = 1
    ) -> None:
        self.gradient_checkpointing = enable

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Any = None, **kwargs: Any) -> None:
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        num_steps: Steps | None = None,
        init_scale: float | None = None,
        input_states: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_states: bool = False,
        return_dict: bool | None = None,
        cache_position: Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputRecurrentLatents:
        check_forward_kwargs({k: v for k, v in kwargs.items() if k not in HF_FORWARD_KWARGS}, FORWARD_NAMES)
        if kwargs.get("inputs_embeds") is not None:
            raise HuginnError("inputs_embeds is not supported by recurrent-depth models; pass input_ids")
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
            cache=cast(KVCache | None, cache),  # a huginn cache (checked above)
            return_states=return_states,
            checkpoint_core=self.gradient_checkpointing,
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
    def generate(self, inputs: Tensor | None = None, generation_config=None, **kwargs):
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
        """Load a published-format checkpoint; missing or unexpected weights are an error, named.
        A local folder is checked first (`huginn.checkpoint`): a broken config.json or weight file
        is a one-line error, and transformers' multi-line load report is not printed."""
        from huginn.checkpoint import check_checkpoint, load_problems, quiet_load_report

        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        where = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        local = where is not None and os.path.isdir(where)
        if local and not any(kwargs.get(k) for k in ("subfolder", "variant", "gguf_file", "state_dict")):
            check_checkpoint(where, read_config=kwargs.get("config") is None)
        # let transformers finish loading, then report every problem in one line of our own
        with quiet_load_report(enabled=not allow_mismatch):
            model, info = super().from_pretrained(
                *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        # the RoPE table may be absent (it is rebuilt), and so may a tied head; a stored copy of a tied head is fine
        optional = _OPTIONAL_KEYS if model.model_config.tie_embeddings else {"freqs_cis"}
        parts = load_problems(info, optional, mismatched=not allow_mismatch, extra_ok=_OPTIONAL_KEYS)
        if parts:
            fix = "fix the shape fields of config.json or use the checkpoint's own config"
            raise HuginnError(f"checkpoint {where} does not match its config.json: {'; '.join(parts)}; {fix}")
        if "freqs_cis" in info.get("missing_keys", ()):
            mc = model.model_config
            model.freqs_cis = rope_table(mc.head_dim, mc.block_size, mc.rope_base, mc.rope_scaling).to(model.device)
        return (model, info) if want_info else model


_OPTIONAL_KEYS = {"freqs_cis", "lm_head.weight"}
# what transformers' own machinery (pipelines, tokenizers' outputs, Trainer, generation utilities)
# may pass to forward besides the named arguments; accepted, and they change nothing here
HF_FORWARD_KWARGS = {"output_attentions", "output_hidden_states", "token_type_ids", "inputs_embeds"}
FORWARD_NAMES = sorted(
    {*inspect.signature(RavenForCausalLM.forward).parameters, *HF_FORWARD_KWARGS} - {"self", "kwargs"}
)
