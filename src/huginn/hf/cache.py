"""A simple, correct KV cache for the transformers shell: one growing (keys, values) pair per slot.

Slots are numbered by `huginn.model.slots.SlotLayout` (the reference's numbering), so a forward at
any `num_steps` finds its own entries. It appends with
`torch.cat` (a copy per token): fine for tests and short prompts. The preallocated cache with
sharing policies and per-token step records is `huginn.infer.kv_cache`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache


class HuginnDynamicCache(Cache):
    is_compileable = False

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.key_cache: dict[int, Tensor] = {}
        self.value_cache: dict[int, Tensor] = {}

    def update(self, key: Tensor, value: Tensor, slot: int, *args, **kwargs) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        if slot in self.key_cache:
            key = torch.cat([self.key_cache[slot], key], dim=2)  # (B, KVH, S_past + S, hd)
            value = torch.cat([self.value_cache[slot], value], dim=2)
        self.key_cache[slot], self.value_cache[slot] = key, value
        return key, value, None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # slot 0 (first prelude layer, or the core's first layer at step 0) sees every token
        return self.key_cache[0].shape[2] if 0 in self.key_cache else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def __len__(self) -> int:
        return len(self.key_cache)

    @property
    def is_initialized(self) -> bool:
        return bool(self.key_cache)

    def reset(self) -> None:
        self.key_cache.clear()
        self.value_cache.clear()

    def crop(self, max_length: int) -> None:
        for d in (self.key_cache, self.value_cache):
            for slot in d:
                d[slot] = d[slot][:, :, :max_length]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for d in (self.key_cache, self.value_cache):
            for slot in d:
                d[slot] = d[slot].index_select(0, beam_idx.to(d[slot].device))

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.key_cache, self.value_cache) for t in d.values())
