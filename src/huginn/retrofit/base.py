"""Loading a pretrained base model and describing its family.

A base is a transformers checkpoint folder or a `.gguf` file (read through transformers' GGUF
loader, which dequantizes to fp32; needs the optional `gguf` and `accelerate` packages). Supported
families, by `config.model_type`:
- `llama`: Llama 2 / 3.x (GQA, rope theta, llama3 rope scaling), TinyLlama, SmolLM2 (tied head);
- `olmo2`: OLMo-2 (QK-norm over whole q/k projections, norms after each sublayer).
`base_spec` reads everything the conversion needs from a config and rejects what the one model
cannot express (attention or MLP biases, other activations, other rope scalings) with one line.
Non-goals: the weight mapping itself (`huginn.retrofit.convert`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huginn.errors import HuginnError

FAMILIES: dict[str, str] = {
    "llama": "Llama 2/3.x, TinyLlama, SmolLM2",
    "olmo2": "OLMo-2",
}
SUPPORTED = ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())


@dataclass(frozen=True)
class BaseSpec:
    """What a conversion needs to know about a base, read from its transformers config."""

    family: str  # a key of FAMILIES
    n_layers: int
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    norm_eps: float
    tie_embeddings: bool
    token_ids: dict[str, Any]  # bos/eos/pad token ids, carried into the converted config

    @property
    def block_type(self) -> str:
        return "postnorm" if self.family == "olmo2" else "prenorm"

    @property
    def qk_norm(self) -> bool:
        return self.family == "olmo2"


def base_spec(config: Any) -> BaseSpec:
    """Read a transformers config of a supported family; unsupported features raise HuginnError."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or "?"
        raise HuginnError(f"unsupported base architecture {family!r} ({arch}); supported: {SUPPORTED}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise HuginnError(f"this {family} base has {flag}=True; only bias-free bases can be retrofitted")
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise HuginnError(f"this {family} base uses activation {act!r}; only SiLU-gated MLPs are supported")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None)  # transformers 4.x spelling
    if isinstance(legacy, dict):
        rope = {**legacy, **rope}
    theta = float(rope.pop("rope_theta", getattr(config, "rope_theta", 10_000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise HuginnError(f"this {family} base uses rope scaling {kind!r}; supported: default, llama3")
    scaling = None
    if kind == "llama3":
        keys = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {k: rope[k] for k in keys if k in rope}
        scaling["rope_type"] = "llama3"
    n_heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return BaseSpec(
        family=family,
        n_layers=int(config.num_hidden_layers),
        n_embd=int(config.hidden_size),
        n_heads=n_heads,
        n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
        head_dim=int(head_dim),
        intermediate_size=int(config.intermediate_size),
        vocab_size=int(config.vocab_size),
        max_positions=int(config.max_position_embeddings),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(config.rms_norm_eps),
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        token_ids={k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def require_gguf() -> None:
    """GGUF reading needs optional packages; say which, in one line."""
    missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise HuginnError(
            f"reading a .gguf base needs the {' and '.join(missing)} package{'s' * (len(missing) > 1)}: "
            "pip install 'huginn[gguf]'"
        )


def _from_pretrained_args(path: Path) -> tuple[str, dict[str, Any]]:
    if not path.exists():
        raise HuginnError(f"base {str(path)!r} does not exist; pass a transformers checkpoint folder or a .gguf file")
    if is_gguf(path):
        require_gguf()
        return str(path.parent), {"gguf_file": path.name}
    if path.is_file():
        raise HuginnError(
            f"base {str(path)!r} is a file but not a .gguf; pass a transformers checkpoint folder or a .gguf file"
        )
    if not (path / "config.json").exists():
        raise HuginnError(f"base folder {str(path)!r} has no config.json; pass a transformers checkpoint folder")
    return str(path), {}


def load_base_config(path: str | Path) -> Any:
    """The base's transformers config (cheap for a folder; a .gguf file is parsed). A folder's
    config.json is read first (`huginn.checkpoint`): bad JSON, no model_type (where transformers
    would ask about remote code on stdin) or an unsupported family are one-line errors."""
    from transformers import AutoConfig

    from huginn.checkpoint import read_config_json

    where, kwargs = _from_pretrained_args(Path(path))
    if not kwargs:  # a folder
        cfg_file = Path(where) / "config.json"
        family = read_config_json(cfg_file).get("model_type")
        if family is None:
            raise HuginnError(
                f'base config {cfg_file} has no model_type; add it (e.g. "model_type": "llama") or pass another base'
            )
        if family not in FAMILIES:
            raise HuginnError(f"unsupported base architecture {family!r} ({cfg_file}); supported: {SUPPORTED}")
    try:
        return AutoConfig.from_pretrained(where, **kwargs)
    except HuginnError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HuginnError(
            f"cannot read the config of base {str(path)!r} ({reason}); fix it or pass another base"
        ) from None


def load_base(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any | None]:
    """(model, tokenizer or None) of a base folder or .gguf file, in `dtype`, in eval mode.
    The family is checked from the config before any weight is read; a folder's weight files are
    checked (`huginn.checkpoint`), and missing or mis-shaped weights are one line, not random ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from huginn.checkpoint import check_weights, load_problems, quiet_load_report

    where, kwargs = _from_pretrained_args(Path(path))
    base_spec(load_base_config(path))
    if kwargs:  # a .gguf file: transformers parses it
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs).eval()
    else:
        check_weights(Path(where))
        with quiet_load_report():
            # (model, info) with output_loading_info=True, which the return annotation does not cover
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                where, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
            )
        model, info = loaded
        # a tied head is not a missing weight; unexpected extras (e.g. old rotary buffers) are harmless
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        parts = load_problems({**info, "unexpected_keys": ()}, optional=tied)
        if parts:
            raise HuginnError(
                f"base {str(path)!r} does not match its config.json: {'; '.join(parts)}; pass a complete checkpoint"
            )
        model = model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception:  # a bare weights folder: the converted model simply ships without one
        tokenizer = None
    return model, tokenizer
