"""The cache slot layout: which KV entry family each block call of a forward writes.

Every attention call of a forward is one *cache slot*, numbered as the published code numbers them:

    prelude layer i             -> i                          (0 .. P-1)
    core layer j at core step t -> P + t * R + j              (t = 0, 1, ...; j = 0 .. R-1)
    coda layer i                -> -(i + 1)                   (-1 .. -C)

Slot 0 is the first call of every forward (the first prelude layer, or the core's first layer at
step 0 when there is no prelude), so writing slot 0 is what *begins* a forward. This module is the
one place that knows the numbering: the model, every cache, compiled decoding and the vLLM plugin
read it from here. It imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Part = Literal["prelude", "core", "coda"]


@dataclass(frozen=True)
class SlotLayout:
    """The slot numbering of a model with P prelude, R core and C coda layers."""

    n_prelude: int
    n_core: int
    n_coda: int

    @classmethod
    def of(cls, config: Any) -> SlotLayout:
        """The layout of a model config (anything with the three `n_layers_in_*` counts)."""
        return cls(config.n_layers_in_prelude, config.n_layers_in_recurrent_block, config.n_layers_in_coda)

    # --- (part, step, layer) -> slot ---------------------------------------------------------
    def prelude(self) -> list[int]:
        """The slots of the prelude's layers, in order."""
        return list(range(self.n_prelude))

    def core(self, step: int) -> list[int]:
        """The slots of the core's layers at core step `step` (0-based), in order."""
        first = self.n_prelude + step * self.n_core
        return list(range(first, first + self.n_core))

    def coda(self) -> list[int]:
        """The slots of the coda's layers, in order."""
        return [-(i + 1) for i in range(self.n_coda)]

    def front(self, num_steps: int) -> int:
        """How many non-negative slots a forward of `num_steps` core steps writes (prelude + core)."""
        return self.n_prelude + num_steps * self.n_core

    # --- slot -> (part, step, layer) ---------------------------------------------------------
    def locate(self, slot: int) -> tuple[Part, int, int]:
        """(part, step, layer) of `slot`; step is 0 outside the core."""
        if slot < 0:
            if -slot > self.n_coda:
                raise ValueError(f"slot {slot} is past the coda's {self.n_coda} layers")
            return "coda", 0, -slot - 1
        if slot < self.n_prelude:
            return "prelude", 0, slot
        step, layer = divmod(slot - self.n_prelude, self.n_core)
        return "core", step, layer

    def is_core(self, slot: int) -> bool:
        return slot >= self.n_prelude

    def core_index(self, slot: int) -> int:
        """The position of a core slot among all core calls: step * R + layer."""
        return slot - self.n_prelude

    def starts_step(self, slot: int) -> int | None:
        """The 1-based count of core steps reached when `slot` is written, if `slot` is the first
        layer of a core step (else None): how caches record the depth of a forward."""
        if slot < self.n_prelude or (slot - self.n_prelude) % self.n_core:
            return None
        return (slot - self.n_prelude) // self.n_core + 1

    @staticmethod
    def begins_forward(slot: int) -> bool:
        """Slot 0 is the first block call of every forward."""
        return slot == 0
