"""Compiled single-token decoding: a fixed-depth token is one graph; an adaptive one, a graph per
group of blocks.

Decoding a token of the benchmark shape makes 36 block calls (2 + 4 x 8 + 2), and in eager PyTorch
each is about 40 small operators whose dispatch costs more than the matrix-vector products.
- Fixed depth (`decode_token`): embedding, prelude, every core step, coda and head are one
  compiled call per token. Inductor fuses the norms, RoPE, residuals, SiLU, injections and cache
  writes into a few kernels; the matmuls stay library calls; Python runs once per token. The graph
  is specialised to the depth (a new `num_steps` compiles a new one).
- Adaptive exits (batch 1) check a criterion between steps, so the prelude, each core step and the
  coda are one compiled call each (`CompiledRunner`, the `BlockRunner` generation passes to the
  model's `embed`/`recur`/`predict`). Blocks
  are instances of one class, so dynamo lifts their weights to graph inputs: one graph serves all
  core steps.
Inside the graphs single-query attention is written out (`single_query_attention`) so inductor
fuses it, and while `generate` decodes, fp32 linears run huginn's own kernel on a packed copy of
their weights (`huginn.infer.packed_linear`); other dtypes hold their weights column-major, the
layout BLAS matrix-vector products read fastest (`decode_layout`).
`compile="frozen"` (`FrozenGraph`) compiles one model's weights into the fixed-depth graph as
constants, which inductor prepacks for its own GEMM kernels (AMX for bf16): the fast path for bf16.
A new batch size or cache capacity recompiles once; dynamo then treats it as dynamic. Inductor
keeps compiled graphs on disk, so a later process starts faster.

Attention gets views of its slot's preallocated keys/values and the mask of filled columns (the
forward writes the last ones) instead of the cache object: the graph reads the filled columns only, their
number being a dynamic dimension (one graph serves every context length), and none of the cache's
Python bookkeeping is traced. That bookkeeping (begin a token, map slots to storage, record its
steps) runs in Python before the graph, exactly as the eager cache does it.

The parallel sampler's wavefront forward (several positions, each continuing its own state for
a few core steps, logits at every position) is one graph too (`decode_span`), its width and
context length dynamic dimensions.

Used by `generate(..., compile=True)` for single-token forwards when no row is frozen and the
lookup is not `skip`, and by `parallel_generate(..., compile=True)` for wavefront forwards of two
or more positions; every other forward runs eagerly. Results equal eager decoding up to float
rounding (tests: compiled == eager in tokens, KV entries and step counts). Non-goals: compiling the
prefill (one call per prompt, already matmul-bound); training (`train.compile` compiles its blocks).
"""

from __future__ import annotations

import logging
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from huginn.infer import packed_linear
from huginn.model.layers import AttentionContext
from huginn.model.recurrence import Schedule

log = logging.getLogger(__name__)


class SlotKV:
    """The KV-cache protocol for one storage slot, traced into a group graph."""

    def __init__(self, k: Tensor, v: Tensor, valid: Tensor) -> None:
        self.k, self.v, self.valid = k, v, valid

    def update(self, key: Tensor, value: Tensor, slot: int) -> tuple[Tensor, Tensor, Tensor]:
        n = self.valid.shape[1]  # the filled columns (a dynamic size: one graph serves every length)
        col = torch.arange(n - key.shape[2], n, device=key.device)  # this forward's: the last ones
        self.k.index_copy_(2, col, key)
        self.v.index_copy_(2, col, value)
        return self.k.narrow(2, 0, n), self.v.narrow(2, 0, n), self.valid

    def get_seq_length(self) -> int:  # positions are resolved before the graph runs
        return 0


class TokenKV:
    """The KV-cache protocol for a whole token, traced into the token graph: `kvs[i]` is the i-th
    block call's slot (prelude, core steps in order, then the coda), so a slot number maps to a
    list position without the cache's Python state (slot s >= 0 -> s, coda slot -(i + 1) -> n_front + i)."""

    def __init__(self, kvs: list[SlotKV], n_front: int) -> None:
        self.kvs, self.n_front = kvs, n_front

    def update(self, key: Tensor, value: Tensor, slot: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.kvs[slot if slot >= 0 else self.n_front - slot - 1].update(key, value, slot)

    def get_seq_length(self) -> int:
        return 0


def _blocks_call(blocks: nn.ModuleList, x: Tensor, rope: Tensor, kvs: list[SlotKV]) -> Tensor:
    for block, kv in zip(blocks, kvs):
        x = block(x, AttentionContext(rope, None, False, kv, written_out=True), 0)
    return x


def _token_call(model, ids: Tensor, state: Tensor, rope: Tensor, kv: TokenKV, num_steps: int) -> tuple[Tensor, Tensor]:
    ctx = AttentionContext(rope, None, False, kv, written_out=True)
    e = model.embed(ids, ctx)
    state = model.recur(state, e, ctx, Schedule.plain(num_steps)).state  # the plain path: one traced loop
    return model.predict(state, ctx, last_only=True)


def _span_call(model, ids: Tensor, state: Tensor, rope: Tensor, kv: TokenKV, num_steps: int, then, args: tuple):
    ctx = AttentionContext(rope, None, False, kv, written_out=True)
    e = model.embed(ids, ctx)
    state = model.recur(state, e, ctx, Schedule.plain(num_steps)).state
    return then(model.predict(state, ctx)[0], state, *args)


_compiled: dict[str, object] = {}


def compiled_graph(name: str):
    """The process-wide compiled function `name` ("blocks", "token" or "span"), compiled lazily on first use."""
    if name not in _compiled:
        # cpp_wrapper: the graph's ~300 kernel and matmul calls per token are made from C++, not Python
        # (measured +15% tokens/s at batch 1, +5-10% at batch 8, for ~10 s more compilation)
        fn = {"blocks": _blocks_call, "token": _token_call, "span": _span_call}[name]
        _compiled[name] = torch.compile(fn, fullgraph=True, options={"cpp_wrapper": True})  # type: ignore[call-overload]  # stub: fn is a plain function
    return _compiled[name]


def _frozen_token_call(
    model, ids: Tensor, state: Tensor, rope: Tensor, kv: TokenKV, num_steps: int
) -> tuple[Tensor, Tensor]:
    return _token_call(model, ids, state, rope, kv, num_steps)  # its own code object: its own dynamo cache


# Inductor options of a frozen graph: its constant weights are prepacked for inductor's own GEMM
# kernels (AMX tiles for bf16 where the CPU has them). Autotuning tables are not printed: they
# would land in the middle of a CLI's output.
FROZEN: dict[str, Any] = {
    "cpp_wrapper": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "max_autotune_report_choices_stats": False,
    "autotune_num_choices_displayed": 0,
}


class FrozenGraph:
    """The token graph with one model's weights compiled in as constants (`compile="frozen"`).

    Dynamo guards a frozen graph on the identity of each parameter, not on its values, so a weight
    changed in place (an optimizer step, `load_state_dict`, `p.mul_`) would silently keep its old
    value in the graph. `weights_key` (every parameter's storage and version counter) is taken when
    the graph is built and checked before every `generate`; on a change the graph is built anew."""

    def __init__(self, model: nn.Module) -> None:
        self.key = weights_key(model)
        fn = types.FunctionType(_frozen_token_call.__code__.replace(), _frozen_token_call.__globals__, "frozen_token")
        self.fn = torch.compile(fn, fullgraph=True, options=FROZEN)

    def __call__(self, *args) -> tuple[Tensor, Tensor]:
        # dynamo decides from the global `freezing` flag, while it traces, whether weights become
        # constants: set it for the call only (directly: `config.patch` costs ~13 us per token), so
        # other graphs stay unfrozen
        config = torch._inductor.config
        before, config.freezing = config.freezing, True
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "TypedStorage is deprecated")  # inside inductor's autotuner
                return self.fn(*args)
        finally:
            config.freezing = before


def weights_key(model: nn.Module) -> tuple:
    """What changes when any parameter or buffer changes: its storage, dtype or version counter."""
    return tuple((t.data_ptr(), t.dtype, t._version) for t in (*model.parameters(), *model.buffers()))


_frozen: weakref.WeakKeyDictionary[nn.Module, FrozenGraph] = weakref.WeakKeyDictionary()


def frozen_graph(model: nn.Module) -> FrozenGraph:
    """`model`'s frozen token graph, built anew when its weights changed since the last one."""
    graph = _frozen.get(model)
    if graph is None or graph.key != weights_key(model):
        if graph is not None:
            log.warning("the model's weights changed since its frozen decoding graph was built: compiling it again")
        graph = _frozen[model] = FrozenGraph(model)
    return graph


@contextmanager
def decode_layout(model: nn.Module) -> Iterator[None]:
    """For the duration, every CPU linear of the model is laid out for decoding. fp32 weights get a
    packed copy for huginn's kernel (`huginn.infer.packed_linear`: measured 1.65x MKL at batch 8);
    other dtypes, or fp32 where the kernel could not be built, are stored column-major (a transposed
    contiguous copy, viewed back to its shape: same values, same shape), the layout CPU
    matrix-vector products read fastest (measured 1.3x tokens/s at batch 1). The graphs compiled
    for either never see the other. Everything is put back on exit, so the model saves, trains and
    compares as before; a copy of the linear weights lives meanwhile."""
    swapped: list[tuple[Tensor, Tensor]] = []
    attached: list[nn.Linear] = []
    seen: set[int] = set()
    try:
        for m in model.modules():
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight
            if packed_linear.can_pack(m):
                packed_linear.attach(m)
                attached.append(m)
                continue
            if w.device.type != "cpu" or id(w) in seen or not w.is_contiguous():  # seen: a tied weight once
                continue
            seen.add(id(w))
            original = w.data
            w.data = original.t().contiguous().t()
            swapped.append((w, original))
        yield
    finally:
        for w, original in swapped:
            w.data = original
        for m in attached:
            packed_linear.detach(m)


def can_compile(cache, seq_len: int, freezes_rows: bool) -> bool:
    """Whether a forward of `seq_len` tokens can run compiled with this cache: a single token, no
    row frozen now or during the forward (`freezes_rows`: batched early exits), no `skip` lookup."""
    return seq_len == 1 and not freezes_rows and cache.active_rows is None and cache.policy.lookup != "skip"


def begin_token(cache, attention_mask: Tensor | None, seq_len: int = 1) -> Tensor:
    """Start a forward of `seq_len` tokens (one, or a parallel sampler's wavefront) in the cache;
    return the (B, length) mask of the filled columns it may attend to (those `attention_mask`
    (B, length) marks real; the graph adds causality), the forward's own being the last `seq_len`.
    The mask's length is marked dynamic, so the graphs read only the filled part of the cache
    without compiling anew as the context grows."""
    c = cache
    c.begin(seq_len)
    n, device = c.length, c.device
    if attention_mask is None:
        valid = torch.ones(c.rows, n, dtype=torch.bool, device=device)
    else:
        valid = attention_mask[:, -n:].to(device=device, dtype=torch.bool).contiguous()
    torch._dynamo.maybe_mark_dynamic(valid, 1)
    return valid


def slot_kv(cache, slot: int, valid: Tensor) -> SlotKV:
    """The storage of `slot` (claimed in the cache, which records the step it begins)."""
    i = cache.claim(slot)
    return SlotKV(cache.k[i], cache.v[i], valid)


def decode_token(
    model, ids: Tensor, cache, num_steps: int, rope: Tensor, state: Tensor, attention_mask: Tensor | None, graph=None
) -> tuple[Tensor, Tensor]:
    """(logits (B, V), latents (B, 1, d)) of one token at fixed depth through the token graph
    (`graph`: a `FrozenGraph` instead of the shared one)."""
    kv = token_kv(cache, num_steps, begin_token(cache, attention_mask))
    return (graph or compiled_graph("token"))(model, ids, state, rope, kv, num_steps)


def token_kv(cache, num_steps: int, valid: Tensor) -> TokenKV:
    """The storage of every block call of a forward at `num_steps` (prelude, core steps, coda)."""
    front = cache.layout.front(num_steps)
    return TokenKV([slot_kv(cache, s, valid) for s in [*range(front), *cache.layout.coda()]], front)


def decode_span(
    model,
    ids: Tensor,
    cache,
    num_steps: int,
    rope: Tensor,
    state: Tensor,
    attention_mask: Tensor | None,
    then: Callable[..., Any],
    args: tuple,
) -> Any:
    """`then(logits (B, S, V), final states (B, S, d), *args)` of a forward over S >= 2 positions
    that continue their own `state` for `num_steps` core steps (the parallel sampler's wavefront,
    whose bookkeeping `then` is), as one compiled graph. The width and the context length are
    dynamic dimensions (mark those of `args` too): one graph serves every forward of a generation."""
    kv = token_kv(cache, num_steps, begin_token(cache, attention_mask, ids.shape[1]))
    for t in (ids, state, rope):
        torch._dynamo.maybe_mark_dynamic(t, 1)
    # the cache's capacity is left to dynamo's automatic dynamic shapes (a new capacity recompiles
    # once, then every capacity shares a graph): marked here, the slot views' shared base would be
    # assumed static without a guard (a stride error on the next cache of another capacity)
    return compiled_graph("span")(model, ids, state, rope, kv, num_steps, then, args)


class CompiledRunner:
    """The `BlockRunner` (`run=`) for one single-token forward with exit checks between steps:
    resolves each block call's storage slot, keeps the cache's bookkeeping, and runs the group
    through its compiled graph. `attention_mask` (B, past + 1) marks real tokens in padded batches
    (None: all real)."""

    def __init__(self, cache, attention_mask: Tensor | None) -> None:
        self.cache, self.attention_mask = cache, attention_mask
        self.fn = compiled_graph("blocks")  # looked up per forward, so tests can spy on it
        self.valid: Tensor | None = None

    def __call__(self, blocks: nn.ModuleList, x: Tensor, ctx: AttentionContext, slots: list[int]) -> Tensor:
        kvs = []
        for slot in slots:
            if slot == 0:
                self.valid = begin_token(self.cache, self.attention_mask)
            assert self.valid is not None, "a forward writes slot 0 first"
            kvs.append(slot_kv(self.cache, slot, self.valid))
        return self.fn(blocks, x, ctx.rope, kvs)
