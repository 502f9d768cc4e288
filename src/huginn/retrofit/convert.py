"""Weight mapping: a Llama-family or OLMo-2 transformers model -> a recurrent-depth `RavenForCausalLM`.

The converted model is the one `huginn` model with the base's options switched on (pre-norm or
post-norm blocks, grouped-query attention, QK-norm, llama3 RoPE scaling, embed scale 1, no norm
before the coda). Each mapped base layer is copied into its prelude / core / coda slot:

    q_proj, k_proj, v_proj -> attn.Wqkv  rows [Q | K | V]; Q and K rows permuted per head (below)
    o_proj                 -> attn.proj
    gate_proj, up_proj     -> mlp.fc     rows [gate | up]
    down_proj              -> mlp.proj
    Llama:  input_layernorm -> norm_1, post_attention_layernorm -> norm_2   (pre-norm)
    OLMo-2: post_attention_layernorm -> norm_1, post_feedforward_layernorm -> norm_2, q_norm/k_norm
    embed_tokens -> wte, norm -> ln_f, lm_head -> lm_head (unless tied)

RoPE: transformers' Llama/OLMo rotate the pair (i, i + hd/2) of each head by frequency i; huginn
rotates (2i, 2i+1). Permuting every head's Q and K rows (and QK-norm weights) so that new row 2i is
old row i and new row 2i+1 is old row i + hd/2 turns one convention into the other and leaves
q.k unchanged, so there is one RoPE implementation and the conversion is exact.

Injection: `linear` keeps the adapter's random init (Huginn's std), `identity` sets it to [0 | I]
(the core sees the prelude output; the state is ignored until training changes that), `add` has no
adapter. The choice, the layer map and the base are recorded in the config under `retrofit`.
Non-goals: loading files (`huginn.retrofit.base`), training (`huginn.train`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor

from huginn.config import ModelConfig
from huginn.errors import HuginnError, one_of
from huginn.retrofit.base import BaseSpec, base_spec
from huginn.retrofit.layer_map import LayerMap

if TYPE_CHECKING:
    from huginn.model.recurrent import RecurrentLM

Injection = Literal["identity", "linear", "add"]
INJECTIONS: tuple[Injection, ...] = get_args(Injection)


def model_config_for(
    spec: BaseSpec,
    layer_map: LayerMap,
    injection: Injection = "identity",
    *,
    mean_recurrence: int = 4,
    mean_backprop_depth: int = 4,
    block_size: int | None = None,
) -> ModelConfig:
    """The recurrent model's shape for a base and a map."""
    if injection not in INJECTIONS:
        raise one_of("injection", injection, INJECTIONS)
    layer_map.validate(spec.n_layers)
    p, r, c = layer_map.shape
    return ModelConfig(
        n_embd=spec.n_embd,
        n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        padding_multiple=1,  # logits keep the base's vocabulary exactly
        block_size=block_size or spec.max_positions,
        rope_base=spec.rope_theta,
        rope_scaling=spec.rope_scaling,
        n_layers_in_prelude=p,
        n_layers_in_recurrent_block=r,
        n_layers_in_coda=c,
        mean_recurrence=mean_recurrence,
        mean_backprop_depth=mean_backprop_depth,
        injection_type="add" if injection == "add" else "linear",
        qk_bias=False,
        qk_norm=spec.qk_norm,
        tie_embeddings=spec.tie_embeddings,
        embed_scale=1.0,
        norm_eps=spec.norm_eps,
        block_type=spec.block_type,  # type: ignore[arg-type]
        coda_input_norm=False,
    )


def rope_permutation(head_dim: int) -> Tensor:
    """Index p with new[j] = old[p[j]]: [0, hd/2, 1, hd/2 + 1, ...] (half-split -> interleaved pairs)."""
    return torch.arange(head_dim).view(2, head_dim // 2).t().reshape(-1)


def permute_heads(w: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """Apply `rope_permutation` within every head of a (n_heads * head_dim, ...) tensor's rows."""
    return w.reshape(n_heads, head_dim, *w.shape[1:])[:, rope_permutation(head_dim)].reshape(w.shape)


def _layer_weights(sd: dict[str, Tensor], i: int, spec: BaseSpec) -> dict[str, Tensor]:
    """One base layer's tensors under huginn's block parameter names."""
    pre = f"model.layers.{i}."

    def get(name: str) -> Tensor:
        if pre + name not in sd:
            raise HuginnError(f"base checkpoint lacks {pre + name}; is it a complete {spec.family} model?")
        return sd[pre + name]

    H, KV, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
    q = permute_heads(get("self_attn.q_proj.weight"), H, hd)
    k = permute_heads(get("self_attn.k_proj.weight"), KV, hd)
    out = {
        "attn.Wqkv.weight": torch.cat([q, k, get("self_attn.v_proj.weight")], dim=0),
        "attn.proj.weight": get("self_attn.o_proj.weight"),
        "mlp.fc.weight": torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")], dim=0),
        "mlp.proj.weight": get("mlp.down_proj.weight"),
    }
    if spec.family == "olmo2":
        out["norm_1.weight"] = get("post_attention_layernorm.weight")
        out["norm_2.weight"] = get("post_feedforward_layernorm.weight")
        out["attn.q_norm.weight"] = permute_heads(get("self_attn.q_norm.weight"), H, hd)
        out["attn.k_norm.weight"] = permute_heads(get("self_attn.k_norm.weight"), KV, hd)
    else:
        out["norm_1.weight"] = get("input_layernorm.weight")
        out["norm_2.weight"] = get("post_attention_layernorm.weight")
    return out


def map_weights(sd: dict[str, Tensor], spec: BaseSpec, layer_map: LayerMap) -> dict[str, Tensor]:
    """The converted model's state dict (without adapter and RoPE table) from a base state dict."""
    out: dict[str, Tensor] = {
        "transformer.wte.weight": sd["model.embed_tokens.weight"],
        "transformer.ln_f.weight": sd["model.norm.weight"],
    }
    if not spec.tie_embeddings:
        if "lm_head.weight" not in sd:
            raise HuginnError("base has an untied head but no lm_head.weight; is the checkpoint complete?")
        out["lm_head.weight"] = sd["lm_head.weight"]
    for part, layers in (("prelude", layer_map.prelude), ("core_block", layer_map.core), ("coda", layer_map.coda)):
        for slot, i in enumerate(layers):
            for name, w in _layer_weights(sd, i, spec).items():
                out[f"transformer.{part}.{slot}.{name}"] = w
    return out


def init_injection(model: RecurrentLM, injection: Injection) -> None:
    """Set the adapter for `injection`: `identity` -> [0 | I]; `linear` keeps its random init."""
    if injection != "identity":
        return
    adapter = model.transformer.adapter.weight  # (d, 2d), input columns [state | e]
    d = adapter.shape[0]
    with torch.no_grad():
        adapter.zero_()
        adapter[:, d:].copy_(torch.eye(d, dtype=adapter.dtype))


def convert(
    base: Any,
    layer_map: LayerMap,
    injection: Injection = "identity",
    *,
    mean_recurrence: int = 4,
    mean_backprop_depth: int = 4,
    block_size: int | None = None,
    seed: int = 0,
    source: str | None = None,
):
    """A `RavenForCausalLM` (fp32, eval mode) holding `base`'s mapped layers.

    `base` is a transformers Llama-family or OLMo-2 causal LM; `seed` fixes the random parts (the
    `linear` adapter); `source` is recorded in the config as where the base came from."""
    from huginn.hf import RavenConfig, RavenForCausalLM

    spec = base_spec(base.config)
    mc = model_config_for(
        spec,
        layer_map,
        injection,
        mean_recurrence=mean_recurrence,
        mean_backprop_depth=mean_backprop_depth,
        block_size=block_size,
    )
    record = {
        "base": source or getattr(base.config, "_name_or_path", "") or "",
        "base_model_type": spec.family,
        "base_num_layers": spec.n_layers,
        **layer_map.to_dict(),
        "injection": injection,
    }
    config = RavenConfig.from_model_config(
        mc, retrofit=record, **{k: v for k, v in spec.token_ids.items() if v is not None}
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RavenForCausalLM(config)
    weights = map_weights(base.state_dict(), spec, layer_map)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    allowed = {"transformer.adapter.weight", "freqs_cis", "lm_head.weight"}
    if unexpected or set(missing) - allowed:  # a mapping bug, not a user mistake
        raise RuntimeError(
            f"weight mapping mismatch: missing {sorted(set(missing) - allowed)}, unexpected {unexpected}"
        )
    if mc.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    init_injection(model, injection)
    return model.float().eval()
