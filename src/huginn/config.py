"""Typed model configuration and the named shapes.

`ModelConfig` describes one recurrent-depth transformer: prelude, core (iterated), coda. It is a
frozen dataclass validated at construction; bad shapes raise `HuginnError` with one line. The
published Huginn-0125 field names (RavenConfig) are mapped onto it at the transformers boundary
(`huginn.hf.configuration`), not here. Non-goal: training or inference settings (see `huginn.train`
and `huginn.infer`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from huginn.errors import HuginnError, one_of

BlockType = Literal["sandwich", "prenorm", "postnorm"]
InjectionType = Literal["linear", "add"]
BLOCK_TYPES: tuple[BlockType, ...] = get_args(BlockType)
INJECTION_TYPES: tuple[InjectionType, ...] = get_args(InjectionType)
# The default of the `ModelConfig` fields computed from the others (n_kv_heads, head_dim,
# embed_scale, init_std): passed as None or left out, such a field gets its derived value at
# construction, so every `ModelConfig` holds a number there (hence the plain `int` / `float` type).
DERIVED: Any = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a recurrent-depth model. Defaults are nebel-raven-3.5b (Huginn-0125)."""

    n_embd: int = 5280
    n_heads: int = 55
    n_kv_heads: int = DERIVED  # n_heads (multi-head attention)
    head_dim: int = DERIVED  # n_embd // n_heads
    intermediate_size: int = 17920  # GLU width
    vocab_size: int = 65536
    padding_multiple: int = 4096  # the embedding has padded_vocab_size rows
    block_size: int = 4096  # longest sequence (size of the RoPE table)
    rope_base: float = 50_000.0
    rope_scaling: dict[str, Any] | None = None  # e.g. {"rope_type": "llama3", ...} for retrofitted bases
    n_layers_in_prelude: int = 2
    n_layers_in_recurrent_block: int = 4
    n_layers_in_coda: int = 2
    mean_recurrence: int = 32
    mean_backprop_depth: int = 8
    injection_type: InjectionType = "linear"
    qk_bias: bool = True
    qk_norm: bool = False  # OLMo-2 style RMSNorm over the whole q and k projections
    tie_embeddings: bool = True
    embed_scale: float = DERIVED  # sqrt(n_embd), as Huginn
    norm_eps: float = 1e-6
    block_type: BlockType = "sandwich"
    coda_input_norm: bool = True  # ln_f on the state before the coda (Huginn); retrofitted bases have no norm there
    init_std: float = DERIVED  # sqrt(2 / (5 n_embd)) (Takase init, Huginn's "std")
    state_init_scale: float = 1.0  # scale of the initial state's noise; 0 gives a zero state
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown published fields, kept for round trips

    def __post_init__(self) -> None:
        for name in (
            "n_embd",
            "n_heads",
            "intermediate_size",
            "vocab_size",
            "block_size",
            "n_layers_in_recurrent_block",
            "mean_recurrence",
            "padding_multiple",
        ):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise HuginnError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("n_layers_in_prelude", "n_layers_in_coda", "mean_backprop_depth"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise HuginnError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("n_kv_heads", "head_dim"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise HuginnError(f"{name} must be a positive integer (or unset), got {value!r}")
        if self.head_dim is None and self.n_embd % self.n_heads:
            raise HuginnError(
                f"n_embd {self.n_embd} is not divisible by n_heads {self.n_heads}; "
                "pick a width that is a multiple of the head count, or set head_dim"
            )
        # resolve the derived defaults once, so equal shapes compare equal
        for name, value in self._derived_defaults().items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.n_heads % self.n_kv_heads:
            raise HuginnError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise HuginnError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.qk_bias and self.n_kv_heads != self.n_heads:
            raise HuginnError("qk_bias needs n_kv_heads == n_heads (grouped-query bases have no qk bias)")
        if self.block_type not in BLOCK_TYPES:
            raise one_of("block_type", self.block_type, BLOCK_TYPES)
        if self.injection_type not in INJECTION_TYPES:
            raise one_of("injection_type", self.injection_type, INJECTION_TYPES)
        if self.state_init_scale < 0:
            raise HuginnError(f"state_init_scale must be >= 0, got {self.state_init_scale}")

    # derived values -------------------------------------------------------------------------
    def _derived_defaults(self) -> dict[str, Any]:
        """The values of the `DERIVED` fields when they are not given."""
        return {
            "n_kv_heads": self.n_heads,
            "head_dim": self.n_embd // self.n_heads,
            "embed_scale": math.sqrt(self.n_embd),
            "init_std": math.sqrt(2 / (5 * self.n_embd)),
        }

    @property
    def padded_vocab_size(self) -> int:
        return find_multiple(self.vocab_size, self.padding_multiple)

    @property
    def n_layers(self) -> int:
        return self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda

    @property
    def effective_expected_depth(self) -> int:
        return (
            self.n_layers_in_prelude + self.n_layers_in_coda + self.n_layers_in_recurrent_block * self.mean_recurrence
        )

    @property
    def out_proj_std(self) -> float:
        return self.init_std / math.sqrt(2 * self.effective_expected_depth)

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise HuginnError(
                f"unknown model config field(s) {sorted(unknown)}; valid: {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        # fields still at their derived default follow their base (a new width gets a new head_dim)
        for name, value in self._derived_defaults().items():
            if name not in changes and getattr(self, name) == value:
                changes[name] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise HuginnError(
                f"unknown model config field(s) {sorted(unknown)}; valid: {', '.join(sorted(names - {'extra'}))}"
            )
        return cls(**d)


# Named shapes. Parameter counts are printed by `huginn info NAME` (and tested).
SHAPES: dict[str, ModelConfig] = {
    # the published Huginn-0125 model: 3,564,976,800 parameters (tied matrix counted once)
    "nebel-raven-3.5b": ModelConfig(),
    # the shape of the reference fixture: 2+4+2 layers, width 64
    "tiny": ModelConfig(
        n_embd=64,
        n_heads=4,
        intermediate_size=128,
        vocab_size=256,
        padding_multiple=64,
        block_size=128,
        mean_recurrence=4,
        mean_backprop_depth=2,
    ),
    # the built-in training default: half the tiny shape's layers (1+2+1), so twice the steps fit in
    # its CPU minutes (and depth has to come from the recurrence)
    "demo": ModelConfig(
        n_embd=64,
        n_heads=4,
        intermediate_size=128,
        vocab_size=256,
        padding_multiple=64,
        block_size=128,
        n_layers_in_prelude=1,
        n_layers_in_recurrent_block=2,
        n_layers_in_coda=1,
        mean_recurrence=4,
        mean_backprop_depth=2,
    ),
    # `make run`'s shape (the built-in parity task): the demo's 1+2+1 layers at twice the width,
    # 0.70M parameters; block_size 128 leaves room for problems 4x longer than the 64-token rows
    # it trains on. Width 64 found a shallow, length-specific solution in one seed of two.
    "quickstart": ModelConfig(
        n_embd=128,
        n_heads=4,
        intermediate_size=256,
        vocab_size=48,
        padding_multiple=16,
        block_size=128,
        n_layers_in_prelude=1,
        n_layers_in_recurrent_block=2,
        n_layers_in_coda=1,
        mean_recurrence=8,
        mean_backprop_depth=4,
    ),
    # the benchmark shape of the inference and training issues: 2+4+2 layers, width 256
    "small": ModelConfig(
        n_embd=256,
        n_heads=4,
        intermediate_size=768,
        vocab_size=4096,
        padding_multiple=64,
        block_size=1024,
        mean_recurrence=8,
        mean_backprop_depth=4,
    ),
    # a CPU-trainable model with a byte-sized vocabulary of a real tokenizer
    "base": ModelConfig(
        n_embd=512,
        n_heads=8,
        intermediate_size=1536,
        vocab_size=32768,
        padding_multiple=256,
        block_size=2048,
        mean_recurrence=16,
        mean_backprop_depth=4,
    ),
}


def named_shape(name: str, **overrides: Any) -> ModelConfig:
    """The named shape `name`, with optional field overrides."""
    if name not in SHAPES:
        raise one_of("model shape", name, SHAPES)
    return SHAPES[name].replace(**overrides) if overrides else SHAPES[name]
