"""Preallocated KV cache for recurrent-depth models, with slot-sharing and lookup policies.

One contiguous buffer `(n_slots, B, kv_heads, capacity, head_dim)` for keys and one for values; a
forward writes its new tokens in place and attends to a view of the first `length` columns, so
decoding never copies the past (the reference keeps a tensor per token in dicts and re-stacks them
at every layer call). Slots are numbered by `huginn.model.slots.SlotLayout` (prelude i -> i; core
layer j at step t -> P + t*R + j; coda i -> -(i+1)); a `CachePolicy` maps core slots onto fewer
storage slots:

- `share="none"`: every (step, layer) pair has its own slot (the reference's "full");
- `share="cycle", n=N`: core index c = slot - P is stored at c % N ("compress-sN": later steps
  overwrite earlier ones; N = R keeps only the latest step, like vLLM);
- `share="run", n=N`: N consecutive core-layer calls share one slot ("compress-rN").

Per batch row and token the cache records how many core steps were computed. When a token exited
early (adaptive compute), later tokens that run deeper need its entries for steps it never ran:
`lookup="latest"` fills them, once, when the token is finished, with the entry of the latest step
that token computed with the same core layer (the reference's "latest-m4" for a 4-layer core;
"available-m4" gives the same entries); `lookup="skip"` masks them out of attention instead.
Rows can be frozen (`set_active_rows`) so that a row that exited keeps exactly the entries it would
have alone, while the rest of the batch iterates on.

The cache's API for its writers: `begin(S)` starts a forward of S new tokens (attention calls it
when slot 0 is written; compiled decoding calls it before its graph), `claim(slot)` maps a slot to
its storage and records the core step it starts, `update(k, v, slot)` writes and returns the
slot's entries, `set_active_rows(rows)` freezes rows, `finish()` records the forward's steps per
token. Nothing outside touches its private state.

Non-goals: paged storage, beam search bookkeeping beyond `reorder_cache`, cross-device sharding.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from transformers.cache_utils import Cache

from huginn.errors import HuginnError
from huginn.model.slots import SlotLayout

Share = Literal["none", "cycle", "run"]
Lookup = Literal["latest", "skip"]
SHARES: tuple[Share, ...] = get_args(Share)
LOOKUPS: tuple[Lookup, ...] = get_args(Lookup)
REFERENCE_STRATEGIES = (
    "full",
    "latest-m{R}",
    "available-m{R}",
    "skip",
    "compress-s{N}",
    "compress-r{N}",
    "latest-m{R}-compress-s{N}",
    "skip-compress-r{N}",
)


@dataclass(frozen=True)
class CachePolicy:
    """How core-step KV entries share storage, and how a missing (early-exit) entry is looked up."""

    share: Share = "none"
    n: int = 0  # slots (cycle) or consecutive calls per slot (run); unused for "none"
    lookup: Lookup = "latest"

    def __post_init__(self) -> None:
        if self.share not in SHARES:
            raise HuginnError(f"unknown cache sharing {self.share!r}; valid: {', '.join(SHARES)}")
        if self.lookup not in LOOKUPS:
            raise HuginnError(f"unknown cache lookup {self.lookup!r}; valid: {', '.join(LOOKUPS)}")
        if self.share != "none" and (not isinstance(self.n, int) or self.n < 1):
            raise HuginnError(f"cache sharing {self.share!r} needs n >= 1, got {self.n!r}")

    @classmethod
    def parse(cls, spec: str | CachePolicy | None, n_core_layers: int = 4) -> CachePolicy:
        """Convert the reference's strings once, at the boundary: "full", "latest-m4", "available-m4",
        "skip", "compress-s16", "compress-r2", "latest-m4-compress-s16", ... (m must equal the core's
        layer count). Our own short form "s8" / "r2" / "latest" / "skip" is accepted too."""
        if spec is None:
            return cls()
        if isinstance(spec, CachePolicy):
            return spec
        if not isinstance(spec, str):
            raise HuginnError(
                f"cache policy must be a string like 'compress-s16' or a CachePolicy, got {type(spec).__name__}"
            )
        text = spec.strip().lower()
        share, n, lookup = "none", 0, "latest"
        m = re.search(r"(?:^|-)(?:compress-)?([sr])(\d+)$", text)
        if m and (text.startswith("compress-") or "-compress-" in text or re.fullmatch(r"[sr]\d+", text)):
            share, n = ("cycle" if m.group(1) == "s" else "run"), int(m.group(2))
            text = text[: m.start()].rstrip("-")
            text = text[: -len("-compress")] if text.endswith("-compress") else text
            text = "" if text == "compress" else text
        if text in ("", "full"):
            # the reference's bare "full" attends only to the entries that exist (= skip) when some are missing
            lookup = "skip" if text == "full" else "latest"
        elif text == "skip":
            lookup = "skip"
        else:
            m2 = re.fullmatch(r"(latest|available)(?:-m(\d+))?", text)
            if not m2:
                raise HuginnError(
                    f"unknown cache lookup strategy {spec!r}; valid: "
                    + ", ".join(v.replace("{R}", str(n_core_layers)) for v in REFERENCE_STRATEGIES)
                )
            if m2.group(2) is not None and int(m2.group(2)) != n_core_layers:
                raise HuginnError(
                    f"lookup strategy {spec!r} assumes a {m2.group(2)}-layer core but this model's core has "
                    f"{n_core_layers} layers; use 'latest-m{n_core_layers}'"
                )
        return cls(share=share, n=n, lookup=lookup)  # type: ignore[arg-type]

    def n_core_slots(self, max_steps: int, n_core_layers: int) -> int:
        calls = max_steps * n_core_layers
        if self.share == "cycle":
            return min(self.n, calls)
        if self.share == "run":
            return math.ceil(calls / self.n)
        return calls

    def core_slot(self, core_index: int) -> int:
        """Storage index (within the core's slots) of core call `core_index` = step * R + layer."""
        if self.share == "cycle":
            return core_index % self.n
        if self.share == "run":
            return core_index // self.n
        return core_index


class HuginnStaticCache(Cache):
    """Preallocated cache; see the module docstring. `update(k, v, slot)` is called by attention."""

    is_compileable = False
    is_huginn_cache = True

    def __init__(
        self,
        n_prelude: int,
        n_core: int,
        n_coda: int,
        kv_heads: int,
        head_dim: int,
        batch_size: int,
        max_steps: int,
        capacity: int,
        policy: CachePolicy | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(layers=[])
        self.policy = policy or CachePolicy()
        self.layout = SlotLayout(n_prelude, n_core, n_coda)
        self.P, self.R, self.C = n_prelude, n_core, n_coda
        self.rows, self.kv_heads, self.head_dim = batch_size, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.max_steps = max_steps
        self.n_core_slots = self.policy.n_core_slots(max_steps, n_core)
        shape = (self.P + self.n_core_slots + self.C, batch_size, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        # core steps computed per row and token (0 for columns not written yet)
        self.steps = torch.zeros(batch_size, capacity, dtype=torch.long, device=self.device)
        self.length = 0  # columns holding tokens
        self._start = 0  # first column of the forward in progress
        self._fwd_steps = 0  # deepest core step reached by the forward in progress
        self._row_steps: Tensor | None = None  # per-row steps of the forward in progress (frozen rows)
        self._min_finished_steps = max_steps  # shallowest finished token (skip masks are needed below it)
        self.active_rows: Tensor | None = None  # (B,) bool: rows whose writes count; None = all
        self._fill_plans: dict[int, tuple[Tensor, Tensor]] = {}
        self._first_step: dict[int, int] = {}

    @classmethod
    def for_model(
        cls,
        model,
        batch_size: int,
        max_steps: int,
        capacity: int,
        policy: CachePolicy | None = None,
        dtype: torch.dtype | None = None,
    ) -> HuginnStaticCache:
        cfg = model.model_config
        param = next(model.parameters())
        return cls(
            cfg.n_layers_in_prelude,
            cfg.n_layers_in_recurrent_block,
            cfg.n_layers_in_coda,
            cfg.n_kv_heads,
            cfg.head_dim,
            batch_size,
            max_steps,
            capacity,
            policy,
            dtype or param.dtype,
            param.device,
        )

    # --- slot mapping -------------------------------------------------------------------------
    def storage_index(self, slot: int) -> int:
        """Where `slot`'s entries are stored: prelude slots first, then the policy's core slots,
        then the coda's."""
        part, step, layer = self.layout.locate(slot)
        if part == "prelude":
            return layer
        if part == "coda":
            return self.P + self.n_core_slots + layer
        if step >= self.max_steps:
            self._grow_steps(step + 1)
        return self.P + self.policy.core_slot(self.layout.core_index(slot))

    def claim(self, slot: int) -> int:
        """The storage index of a block call's `slot`, recording a core step when the slot is the
        first core layer of that step (every writer of the cache goes through here)."""
        i = self.storage_index(slot)
        step = self.layout.starts_step(slot)
        if step is not None:
            self._record_step(step)
        return i

    def set_active_rows(self, rows: Tensor | None) -> None:
        """(B,) bool: only these rows' writes count from now on (rows that exited keep their
        entries); None: every row."""
        self.active_rows = rows

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    # --- the attention-facing API ------------------------------------------------------------
    def update(self, key: Tensor, value: Tensor, slot: int, *args, **kwargs) -> tuple[Tensor, Tensor, Tensor | None]:  # type: ignore[override]
        S = key.shape[2]
        if self.layout.begins_forward(slot):
            self.begin(S)
        i = self.claim(slot)
        start, end = self._start, self._start + S
        rows = self.active_rows
        if rows is None:
            self.k[i, :, :, start:end] = key
            self.v[i, :, :, start:end] = value
        else:
            keep = rows[:, None, None, None]
            self.k[i, :, :, start:end] = torch.where(keep, key, self.k[i, :, :, start:end])
            self.v[i, :, :, start:end] = torch.where(keep, value, self.v[i, :, :, start:end])
        valid = None
        if slot >= self.P and self.policy.lookup == "skip":
            first = self._first_step_of(i)
            if first >= self._min_finished_steps:
                valid = self._skip_mask(first)
        return self.k[i, :, :, : self.length], self.v[i, :, :, : self.length], valid

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.capacity

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0

    def __len__(self) -> int:
        return self.k.shape[0]

    @property
    def is_initialized(self) -> bool:
        return self.length > 0

    # --- bookkeeping --------------------------------------------------------------------------
    def begin(self, S: int) -> None:
        """A new forward of `S` tokens starts (slot 0 is always its first call): finish the previous one."""
        self.finish()
        self.reserve(self.length + S)
        self._start, self.length = self.length, self.length + S
        self._fwd_steps = 0
        self._row_steps = None

    def _record_step(self, n: int) -> None:
        if self.active_rows is None:
            self._fwd_steps = max(self._fwd_steps, n)
            if self._row_steps is not None:
                self._row_steps.fill_(self._fwd_steps)
        else:
            if self._row_steps is None:
                self._row_steps = torch.full((self.rows,), self._fwd_steps, dtype=torch.long, device=self.device)
            self._row_steps = torch.where(self.active_rows, torch.full_like(self._row_steps, n), self._row_steps)
            self._fwd_steps = max(self._fwd_steps, n)

    def finish(self) -> None:
        """Record the steps of the forward in progress and, for `latest`, fill the entries of rows
        that stopped early with their latest computed step. Idempotent."""
        start, end = self._start, self.length
        if end <= start or self._fwd_steps == 0:
            self._start = end
            return
        if self._row_steps is None:
            self.steps[:, start:end] = self._fwd_steps
            shallow: list[tuple[int, int | None]] = (
                [(self._fwd_steps, None)] if self._fwd_steps < self.max_steps else []
            )
        else:
            self.steps[:, start:end] = self._row_steps[:, None]
            per_row = self._row_steps.tolist()
            shallow = [(n, b) for b, n in enumerate(per_row) if n < self.max_steps]
        self._min_finished_steps = min([self._min_finished_steps] + [n for n, _ in shallow])
        if self.policy.lookup == "latest":
            for n, b in shallow:
                if n > 0:
                    self._fill(n, b, start, end)
        self._start = end
        self._fwd_steps, self._row_steps = 0, None

    def _fill_plan(self, n: int) -> tuple[Tensor, Tensor]:
        """(destination, source) storage indices that give a token with n steps its latest entries."""
        if n not in self._fill_plans:
            written = {self.policy.core_slot(t * self.R + j) for t in range(n) for j in range(self.R)}
            dst, src = [], []
            for t in range(n, self.max_steps):
                for j in range(self.R):
                    d = self.policy.core_slot(t * self.R + j)
                    if d not in written and d not in dst:
                        dst.append(d)
                        src.append(self.policy.core_slot((n - 1) * self.R + j))
            self._fill_plans[n] = (
                torch.tensor(dst, dtype=torch.long, device=self.device) + self.P,
                torch.tensor(src, dtype=torch.long, device=self.device) + self.P,
            )
        return self._fill_plans[n]

    def _fill(self, n: int, row: int | None, start: int, end: int) -> None:
        dst, src = self._fill_plan(n)
        if dst.numel() == 0:
            return
        b = slice(None) if row is None else row
        for buf in (self.k, self.v):
            buf[dst, b, :, start:end] = buf[src, b, :, start:end]

    def _first_step_of(self, i: int) -> int:
        """The earliest core step whose calls write storage slot i (a token that ran more steps holds it)."""
        if i not in self._first_step:
            core = i - self.P
            self._first_step[i] = min(
                t for t in range(self.max_steps) for j in range(self.R) if self.policy.core_slot(t * self.R + j) == core
            )
        return self._first_step[i]

    def _skip_mask(self, first: int) -> Tensor:
        """(B, length) bool: keys present in a slot first written at core step `first` (the forward's
        own columns always are)."""
        valid = self.steps[:, : self.length] > first
        valid[:, self._start : self.length] = True
        return valid

    def reserve(self, length: int) -> None:
        """Make room for `length` columns (growing, at least doubling the capacity)."""
        if length > self.capacity:
            self._grow_capacity(max(length, 2 * self.capacity))

    def _grow_capacity(self, new_cap: int) -> None:
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.zeros(*old.shape[:3], new_cap, old.shape[4], dtype=old.dtype, device=old.device)
            new[:, :, :, : old.shape[3]] = old
            setattr(self, name, new)
        steps = torch.zeros(self.rows, new_cap, dtype=torch.long, device=self.device)
        steps[:, : self.steps.shape[1]] = self.steps
        self.steps = steps

    def _grow_steps(self, new_max: int) -> None:
        """A forward runs deeper than the cache was sized for: add core slots; tokens already
        finished get their latest entries in them (or are masked, for skip)."""
        old_max, old_slots = self.max_steps, self.n_core_slots
        self.max_steps = new_max
        self.n_core_slots = self.policy.n_core_slots(new_max, self.R)
        if self.n_core_slots != old_slots:
            for name in ("k", "v"):
                old = getattr(self, name)
                new = torch.zeros(
                    self.P + self.n_core_slots + self.C, *old.shape[1:], dtype=old.dtype, device=old.device
                )
                new[: self.P + old_slots] = old[: self.P + old_slots]
                new[self.P + self.n_core_slots :] = old[self.P + old_slots :]
                setattr(self, name, new)
        self._fill_plans.clear()
        self._first_step.clear()
        if self._start > 0:
            self._min_finished_steps = min(self._min_finished_steps, old_max)
            if self.policy.lookup == "latest":  # rare (a forward deeper than the cache was sized for)
                done = self.steps[:, : self._start].tolist()
                for b, row in enumerate(done):
                    for c, n in enumerate(row):
                        if 0 < n < new_max:
                            self._fill(n, b, c, c + 1)

    # --- transformers' Cache API and utilities ------------------------------------------------
    def reset(self) -> None:
        self.length = self._start = self._fwd_steps = 0
        self._row_steps, self.active_rows = None, None
        self._min_finished_steps = self.max_steps
        self.steps.zero_()

    def crop(self, max_length: int) -> None:
        """Forget every token from column `max_length` on (speculative decoding's rollback)."""
        self.finish()
        if max_length < 0:
            max_length = self.length + max_length
        self.length = self._start = min(self.length, max_length)
        self.steps[:, self.length :] = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.k = self.k.index_select(1, beam_idx.to(self.device))
        self.v = self.v.index_select(1, beam_idx.to(self.device))
        self.steps = self.steps.index_select(0, beam_idx.to(self.device))

    def token_steps(self) -> Tensor:
        """(B, length) core steps computed per token (finishes the forward in progress)."""
        self.finish()
        return self.steps[:, : self.length]

    def entries(self, slot: int) -> tuple[Tensor, Tensor]:
        """Keys and values (B, KVH, length, hd) stored for a reference slot number (for tests and analysis)."""
        self.finish()
        i = self.storage_index(slot)
        return self.k[i, :, :, : self.length], self.v[i, :, :, : self.length]

    def memory_bytes(self, part: Literal["all", "core"] = "all") -> int:
        """Bytes held by the key and value buffers (their full preallocated capacity)."""
        per_slot = self.k[0].numel() * self.k.element_size() * 2
        slots = self.n_core_slots if part == "core" else self.k.shape[0]
        return per_slot * slots
