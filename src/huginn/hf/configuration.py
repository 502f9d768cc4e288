"""`RavenConfig`: the published Huginn-0125 config (model_type `huginn_raven`) and its mapping to
`huginn.config.ModelConfig`.

Field names, defaults and the derived `init_values` follow the published `raven_config_minimal.py`,
so a `config.json` written by the reference loads here and ours loads there. Fields that only our
extensions use (llama3 RoPE scaling, QK-norm, a non-Huginn embedding scale or init std, no coda
input norm) are written only when they differ from Huginn's.

This is the one place where the published names meet ours (`to_model_config`, `from_model_config`):

    published (config.json)                  ModelConfig
    num_key_value_heads                      n_kv_heads
    head_dim                                 head_dim
    init_values["embed_scale"], embed_scale  embed_scale
    init_values["std"], init_std             init_std
    block_class_name ("SandwichBlock", ...)  block_type ("sandwich", ...)
    rope_scaling_config                      rope_scaling

Non-goal: any modelling code.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from huginn.config import BlockType, ModelConfig
from huginn.errors import HuginnError

BLOCK_CLASS_NAMES: dict[BlockType, str] = {
    "sandwich": "SandwichBlock",
    "prenorm": "PreNormBlock",
    "postnorm": "PostNormBlock",
}
BLOCK_TYPES_BY_CLASS: dict[str, BlockType] = {v: k for k, v in BLOCK_CLASS_NAMES.items()}

# the published fields, in the published order, with the published defaults (nebel-raven-3.5b)
PUBLISHED_DEFAULTS: dict[str, Any] = {
    "n_embd": 5280,
    "n_heads": 55,
    "n_layers": 8,
    "block_size": 4096,
    "vocab_size": 65536,
    "padding_multiple": 4096,
    "tie_embeddings": True,
    "intermediate_size": 17920,
    "bias": False,
    "architecture_class_name": "RecurrentGPT",
    "block_class_name": "SandwichBlock",
    "norm_class_name": "RMSNorm_llama",
    "norm_eps": 1e-6,
    "mlp_class_name": "GatedMLP",
    "nonlin_name": "SiLU",
    "init_strategy": "takase",
    "init_orthogonal": False,
    "state_init": "like-init",
    "injection_type": "linear",
    "n_layers_in_recurrent_block": 4,
    "mean_recurrence": 32,
    "sampling_scheme": "poisson-lognormal-filling",
    "mean_backprop_depth": 8,
    "n_layers_in_prelude": 2,
    "n_layers_in_coda": 2,
    "qk_bias": True,
    "activation_checkpoint_impl": "per-iteration",
}
# our extensions: written only when set
EXTENSION_DEFAULTS: dict[str, Any] = {
    "rope_scaling_config": None,
    "qk_norm": False,
    "embed_scale": None,
    "init_std": None,
    "coda_input_norm": True,
}


class RavenConfig(PretrainedConfig):
    model_type = "huginn_raven"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_attention_heads": "n_heads",
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layers",
        "tie_word_embeddings": "tie_embeddings",
    }

    def __init__(self, **kwargs: Any):
        for key, default in {**PUBLISHED_DEFAULTS, **EXTENSION_DEFAULTS}.items():
            setattr(self, key, kwargs.pop(key, default))
        for alias, name in self.attribute_map.items():
            if alias in kwargs:  # e.g. a retrofitted config carrying tie_word_embeddings
                setattr(self, name, kwargs.pop(alias))
        self.rope_base = kwargs.pop("rope_base", 50_000)
        self.num_key_value_heads = kwargs.pop("num_key_value_heads", self.n_heads)
        self.head_dim = (
            kwargs.pop("head_dim") if "head_dim" in kwargs else _divide(self.n_embd, self.n_heads, floor=True)
        )
        self.padded_vocab_size = kwargs.pop("padded_vocab_size", None) or _find_multiple(
            self.vocab_size, self.padding_multiple
        )
        self.test_time_noise = kwargs.pop("test_time_noise", 0)
        self.test_time_noise_type = kwargs.pop("test_time_noise_type", "fixed")
        self.effective_expected_depth = (
            self.n_layers_in_prelude + self.n_layers_in_coda + self.n_layers_in_recurrent_block * self.mean_recurrence
        )
        # derived values; an invalid shape gives NaN here and a one-line error in to_model_config
        std = _sqrt(_divide(2, 5 * self.n_embd)) if self.init_std is None else self.init_std
        init_values = kwargs.pop("init_values", None) or {}
        self.init_values = {
            "std": std,
            "out_proj": _divide(std, _sqrt(2 * self.effective_expected_depth)),
            "embedding": std,
            "embed_scale": _sqrt(self.n_embd) if self.embed_scale is None else self.embed_scale,
        }
        if init_values.get("embed_scale") is not None and self.embed_scale is None:
            self.init_values["embed_scale"] = init_values["embed_scale"]  # a retrofitted model's 1.0
        kwargs.pop("auto_map", None)  # the reference's remote-code pointers: we are the code
        super().__init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        if self.padded_vocab_size != _find_multiple(self.vocab_size, self.padding_multiple):
            raise HuginnError(
                f"padded_vocab_size {self.padded_vocab_size} is not vocab_size {self.vocab_size} rounded up to "
                f"padding_multiple {self.padding_multiple}; fix config.json"
            )
        if self.block_class_name not in BLOCK_TYPES_BY_CLASS:
            raise HuginnError(
                f"unsupported block_class_name {self.block_class_name!r}; supported: {', '.join(BLOCK_TYPES_BY_CLASS)}"
            )
        return ModelConfig(
            n_embd=self.n_embd,
            n_heads=self.n_heads,
            n_kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            padding_multiple=self.padding_multiple,
            block_size=self.block_size,
            rope_base=float(self.rope_base),
            rope_scaling=self.rope_scaling_config,
            n_layers_in_prelude=self.n_layers_in_prelude,
            n_layers_in_recurrent_block=self.n_layers_in_recurrent_block,
            n_layers_in_coda=self.n_layers_in_coda,
            mean_recurrence=self.mean_recurrence,
            mean_backprop_depth=self.mean_backprop_depth,
            injection_type=self.injection_type,
            qk_bias=self.qk_bias,
            qk_norm=self.qk_norm,
            tie_embeddings=self.tie_embeddings,
            embed_scale=float(self.init_values["embed_scale"]),
            norm_eps=self.norm_eps,
            block_type=BLOCK_TYPES_BY_CLASS[self.block_class_name],
            coda_input_norm=bool(self.coda_input_norm),
            init_std=float(self.init_values["std"]),
        )

    @classmethod
    def from_model_config(cls, mc: ModelConfig, **kwargs: Any) -> RavenConfig:
        fields = dict(
            n_embd=mc.n_embd,
            n_heads=mc.n_heads,
            num_key_value_heads=mc.n_kv_heads,
            head_dim=mc.head_dim,
            n_layers=mc.n_layers,
            block_size=mc.block_size,
            vocab_size=mc.vocab_size,
            padding_multiple=mc.padding_multiple,
            tie_embeddings=mc.tie_embeddings,
            intermediate_size=mc.intermediate_size,
            norm_eps=mc.norm_eps,
            block_class_name=BLOCK_CLASS_NAMES[mc.block_type],
            injection_type=mc.injection_type,
            n_layers_in_prelude=mc.n_layers_in_prelude,
            n_layers_in_recurrent_block=mc.n_layers_in_recurrent_block,
            n_layers_in_coda=mc.n_layers_in_coda,
            mean_recurrence=mc.mean_recurrence,
            mean_backprop_depth=mc.mean_backprop_depth,
            qk_bias=mc.qk_bias,
            qk_norm=mc.qk_norm,
            rope_base=mc.rope_base if mc.rope_base != int(mc.rope_base) else int(mc.rope_base),
            rope_scaling_config=mc.rope_scaling,
            # written only where they differ from Huginn's derived values
            embed_scale=None if math.isclose(mc.embed_scale, math.sqrt(mc.n_embd)) else mc.embed_scale,
            init_std=None if math.isclose(mc.init_std, math.sqrt(2 / (5 * mc.n_embd))) else mc.init_std,
            coda_input_norm=mc.coda_input_norm,
        )
        fields.update(kwargs)
        return cls(**fields)

    def to_diff_dict(self) -> dict[str, Any]:
        # Write every published field (as the reference does), not only those that differ from defaults.
        out = super().to_diff_dict()
        full = self.to_dict()
        for key in [
            *PUBLISHED_DEFAULTS,
            "rope_base",
            "num_key_value_heads",
            "head_dim",
            "padded_vocab_size",
            "effective_expected_depth",
            "init_values",
            "test_time_noise",
            "test_time_noise_type",
        ]:
            out[key] = full[key]
        for key, default in EXTENSION_DEFAULTS.items():
            if full.get(key) == default:
                out.pop(key, None)
            else:
                out[key] = full[key]
        out.pop("tie_word_embeddings", None)  # published configs carry tie_embeddings only
        return dict(sorted(out.items()))


def _find_multiple(n: int, k: int) -> int:
    if not isinstance(n, int) or not isinstance(k, int) or k < 1:
        return n  # an invalid shape: to_model_config names it
    return n if n % k == 0 else n + k - (n % k)


def _divide(a: Any, b: Any, floor: bool = False) -> Any:
    """a / b (or a // b), or NaN where the config's numbers make no sense (to_model_config names them)."""
    try:
        return a // b if floor else a / b
    except (ArithmeticError, TypeError):
        return math.nan


def _sqrt(x: Any) -> float:
    return math.sqrt(x) if isinstance(x, (int, float)) and x >= 0 else math.nan
