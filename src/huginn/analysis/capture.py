"""Capture latent trajectories: run a forward (`capture`) or a generation (`capture_generation`) and
keep, on CPU, what happens to the state at every core step.

A forward is the model's own pieces (`context`, `embed`, `initialize_state`, `recur`, `predict`),
with the recurrence's hook recording the state after every selected step and a `BlockRunner`
recording the core's per-layer outputs and the attention probabilities of chosen (step, layer)
pairs; the logit lens reads each selected step's state through the coda, ln_f and the head
(`model.predict`, as the model reads its final state). A generation is `huginn.infer.generate`
with an observer: one trajectory per forward (the prefill, then each new token), over the steps
that forward ran, with exits (a row that exited keeps its state; `compute_steps` says how many
steps each row's token took), and optionally its logit lens. Memory is bounded by the `Selection`
(positions, steps, layers); a forward's output tensors are allocated once at their final size and
filled in place.

Interventions (`huginn.analysis.interventions`) act first at each step; what is recorded is the
state the recurrence continues from. Non-goals: metrics and figures (`metrics`, `figures`), a
second copy of the core loop (there is one: `huginn.model.recurrence.recur`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from huginn.analysis.interventions import Intervention, apply_all
from huginn.errors import HuginnError
from huginn.model.layers import Attention, AttentionContext, causal_mask, run_blocks
from huginn.model.recurrence import Schedule
from huginn.model.recurrent import check_init_scale, check_token_inputs, normalize_steps

Progress = Callable[[int, int], None]  # (core steps done, total)


@dataclass(frozen=True)
class Selection:
    """What to keep. `positions`: sequence positions (None: all; negative counts from the end);
    `steps`: 1-based core steps (None: all); `layers`: core layers whose outputs to keep at the
    kept steps (False: none, True: all); `attention`: (step, layer) pairs whose attention
    probabilities to keep; `lens`: the logit lens (coda logits) at the kept steps and positions."""

    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    layers: Sequence[int] | bool = False
    attention: Sequence[tuple[int, int]] = ()
    lens: bool = False

    def resolve(self, seq_len: int, num_steps: int, n_core: int) -> tuple[list[int], list[int], list[int]]:
        """(positions, steps, layers) as sorted lists, checked against the text, depth and core."""
        if self.positions is None:
            positions = list(range(seq_len))
        else:
            bad = [p for p in self.positions if not -seq_len <= int(p) < seq_len]
            if bad:
                raise HuginnError(
                    f"positions {bad} are out of range for a text of {seq_len} tokens (0 .. {seq_len - 1}, or negative from the end)"
                )
            positions = sorted({int(p) % seq_len for p in self.positions})
        if self.steps is None:
            steps = list(range(1, num_steps + 1))
        else:
            bad = [t for t in self.steps if not 1 <= int(t) <= num_steps]
            if bad:
                raise HuginnError(f"steps {bad} are out of range for num_steps={num_steps} (1 .. {num_steps})")
            steps = sorted({int(t) for t in self.steps})
        if self.layers is True:
            layers = list(range(n_core))
        elif self.layers is False:
            layers = []
        else:
            bad = [j for j in self.layers if not 0 <= int(j) < n_core]
            if bad:
                raise HuginnError(
                    f"core layers {bad} are out of range for a core of {n_core} layers (0 .. {n_core - 1})"
                )
            layers = sorted({int(j) for j in self.layers})
        for t, j in self.attention:
            if not 1 <= t <= num_steps or not 0 <= j < n_core:
                raise HuginnError(
                    f"attention (step {t}, layer {j}) is out of range: steps 1 .. {num_steps}, core layers 0 .. {n_core - 1}"
                )
        if not positions or not steps:
            raise HuginnError("the selection keeps no positions or no steps; select at least one of each")
        return positions, steps, layers


@dataclass
class Capture:
    """One forward's trajectory, on CPU. P kept positions, T kept steps, L kept core layers."""

    input_ids: Tensor  # (B, S)
    positions: Tensor  # (P,) long
    steps: Tensor  # (T,) long, 1-based
    num_steps: int
    e: Tensor  # (B, P, d) the prelude output, injected at every step
    initial: Tensor  # (B, P, d) the state before step 1
    states: Tensor  # (B, P, T, d) the state after each kept step (after interventions)
    logits: Tensor  # (B, P, V) fp32: the model's output (after the last step)
    final_state: Tensor  # (B, S, d) the state after the last step, every position
    layer_ids: Tensor  # (L,) long
    layers: Tensor | None = None  # (B, P, T, L, d) outputs of the kept core layers at the kept steps
    attention: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (step, layer) -> (B, H, P, S) fp32
    lens: Tensor | None = None  # (B, P, T, V) fp32: the coda's logits at each kept step

    def state_at(self, step: int) -> Tensor:
        """The (B, S, d) state after core step `step` (0: the initial state), to resume from."""
        if self.positions.numel() != self.input_ids.shape[1]:
            raise HuginnError("resuming needs the state at every position; capture with positions=None")
        if step == 0:
            return self.initial
        if step == self.num_steps:
            return self.final_state
        hit = (self.steps == step).nonzero()
        if hit.numel() == 0:
            raise HuginnError(f"step {step} was not kept; kept steps: {self.steps.tolist()}")
        return self.states[:, :, int(hit[0, 0])]

    def with_initial(self) -> Tensor:
        """(B, P, 1 + T, d): the initial state followed by the kept states."""
        return torch.cat([self.initial[:, :, None], self.states], dim=2)


def attention_probs(attn: Attention, x: Tensor, ctx: AttentionContext) -> Tensor:
    """(B, H, S, S) fp32 softmax probabilities of one uncached attention call on input `x` (the
    block's normed input), recomputed from its weights: the same q/k path as
    `Attention.heads` (qk norm or bias, RoPE) and the mask, where the attention returns only its output."""
    if ctx.cache is not None:
        raise HuginnError("attention probabilities are recomputed for uncached forwards only; use capture()")
    S = x.shape[1]
    H, KV, hd = attn.n_heads, attn.n_kv, attn.hd
    q, k, _ = attn.heads(x, ctx.rope)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H|KV, S, hd)
    if KV != H:
        k = k.repeat_interleave(H // KV, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(hd)  # (B, H, S, S)
    mask = ctx.mask
    if mask is None and ctx.is_causal and S > 1:
        mask = causal_mask(S, S, x.device)[None, None]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


class _Recorder:
    """The recurrence hook and block runner of one capture: fills preallocated CPU tensors."""

    def __init__(self, model, ctx, sel: Selection, seq_len, positions, steps, layers, interventions, progress, total):
        self.model, self.ctx, self.sel = model, ctx, sel
        self.positions, self.layers, self.interventions = positions, layers, interventions
        self.column = {t: i for i, t in enumerate(steps)}
        self.attention_at = {(t, j) for t, j in sel.attention}
        self.attention: dict[tuple[int, int], Tensor] = {}
        self.progress, self.total = progress, total
        self.states: Tensor | None = None
        self.layer_out: Tensor | None = None
        self.lens: Tensor | None = None
        self.all_positions = positions == list(range(seq_len))
        self._index: Tensor | None = None

    def pick(self, x: Tensor) -> Tensor:
        """The kept positions of a (B, S, ...) tensor."""
        if self.all_positions:
            return x
        if self._index is None or self._index.device != x.device:
            self._index = torch.tensor(self.positions, device=x.device)
        return x[:, self._index]

    def _buffer(self, like: Tensor, *inner: int) -> Tensor:
        B, d = like.shape[0], like.shape[-1]
        return torch.empty(B, len(self.positions), len(self.column), *inner, d, dtype=like.dtype, device="cpu")

    def hook(self, step: int, state: Tensor, previous: Tensor) -> tuple[Tensor, bool] | None:
        changed = apply_all(self.interventions, step, state) if self.interventions else None
        if changed is not None:
            state = changed
        col = self.column.get(step)
        if col is not None:
            if self.states is None:
                self.states = self._buffer(state)
            self.states[:, :, col].copy_(self.pick(state))
            if self.sel.lens:
                logits = self.pick(self.model.predict(state, self.ctx)[0])
                if self.lens is None:
                    self.lens = self._buffer(logits)
                self.lens[:, :, col].copy_(logits)
        if self.progress is not None:
            self.progress(step, self.total)
        return None if changed is None else (changed, False)

    def run(self, blocks: nn.ModuleList, x: Tensor, ctx: AttentionContext, slots: list[int]) -> Tensor:
        """`run_blocks`, keeping the outputs of the selected core layers and attention probabilities."""
        if not slots:  # a part without layers (e.g. a retrofit with no prelude)
            return run_blocks(blocks, x, ctx, slots)
        part, step0, _ = self.model.slots.locate(slots[0])
        step = step0 + 1
        keep_layers = part == "core" and self.layers and step in self.column
        attend = part == "core" and any(t == step for t, _ in self.attention_at)
        if not keep_layers and not attend:
            return run_blocks(blocks, x, ctx, slots)
        for j, (block, slot) in enumerate(zip(blocks, slots)):
            handle = None
            if (step, j) in self.attention_at:
                attn: nn.Module = block.attn  # type: ignore[assignment]
                handle = attn.register_forward_pre_hook(self._attention_hook(step, j))
            try:
                x = block(x, ctx, slot)
            finally:
                if handle is not None:
                    handle.remove()
            if keep_layers and j in self.layers:
                if self.layer_out is None:
                    self.layer_out = self._buffer(x, len(self.layers))
                self.layer_out[:, :, self.column[step], self.layers.index(j)].copy_(self.pick(x))
        return x

    def _attention_hook(self, step: int, layer: int):
        def hook(module: Attention, args: tuple) -> None:
            x, ctx = args[0], args[1]
            self.attention[(step, layer)] = (
                self.pick(attention_probs(module, x, ctx).transpose(1, 2)).transpose(1, 2).cpu()
            )

        return hook


@torch.no_grad()
def capture(
    model,
    input_ids: Tensor,
    num_steps: int | None = None,
    select: Selection = Selection(),
    *,
    interventions: Sequence[Intervention] = (),
    input_states: Tensor | None = None,
    init_scale: float | None = None,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
    progress: Progress | None = None,
) -> Capture:
    """Run the model on `input_ids` (B, S) for `num_steps` core steps (default: mean_recurrence)
    and keep what `select` asks for (see `Capture`). The forward is the model's own: its states
    and logits equal `model(input_ids, num_steps, return_states=True)` with the same initial state
    (`input_states`, or noise drawn from `generator` at `init_scale`). `progress(step, total)` is
    called after every core step."""
    n_no_grad, n_grad = normalize_steps(num_steps, model.model_config.mean_recurrence)
    total = n_no_grad + n_grad
    check_init_scale(init_scale)
    check_token_inputs(input_ids, attention_mask, model.model_config.vocab_size)
    B, S = input_ids.shape
    if S == 0:
        raise HuginnError("the text is empty; pass at least one token")
    positions, steps, layers = select.resolve(S, total, model.model_config.n_layers_in_recurrent_block)
    ctx = model.context(B, S, attention_mask)
    recorder = _Recorder(model, ctx, select, S, positions, steps, layers, list(interventions), progress, total)
    e = model.embed(input_ids, ctx)
    state = model.start_state(e, input_states, init_scale, generator)
    initial = recorder.pick(state).cpu()
    final = model.recur(state, e, ctx, Schedule.plain(total), hook=recorder.hook, run=recorder.run).state
    logits, _ = model.predict(final, ctx)
    assert recorder.states is not None
    return Capture(
        input_ids=input_ids.cpu(),
        positions=torch.tensor(positions, dtype=torch.long),
        steps=torch.tensor(steps, dtype=torch.long),
        num_steps=total,
        e=recorder.pick(e).cpu(),
        initial=initial,
        states=recorder.states,
        logits=recorder.pick(logits).cpu(),
        final_state=final.cpu(),
        layer_ids=torch.tensor(layers, dtype=torch.long),
        layers=recorder.layer_out,
        attention=recorder.attention,
        lens=recorder.lens,
    )


# --- generation -------------------------------------------------------------------------------


@dataclass
class GenerationCapture:
    """A generation's trajectories, on CPU: one per forward (the prefill, then one per new token)."""

    sequences: Tensor  # (B, prompt + new)
    compute_steps: Tensor  # (B, F) core steps each row's forward took (0 once a row stopped)
    prompt_length: int
    positions: Tensor  # (P,) kept prompt positions (the prefill's)
    steps: Tensor  # (T,) kept steps, 1-based
    forwards: list[Tensor]  # forward f: (B, P_f, T_f, d), the kept steps it ran (P_0 = P, then 1)
    lens: list[Tensor] | None = None  # forward f: (B, P_f, T_f, V) fp32 logit lens, when asked for
    # forward f: (B, P_f, T_f, L, d) outputs of the selected core layers, when asked for (a row that
    # exited keeps its state, but its layers still run on it: `compute_steps` says which steps count)
    layer_outputs: list[Tensor] | None = None

    def token_states(self, f: int, row: int = 0) -> Tensor:
        """(T_taken, d): the states of forward `f`'s last position in `row`, at the kept steps that
        row actually took (a row that exited earlier stops there)."""
        return self.forwards[f][row, -1, self._taken(f, row)]

    def _taken(self, f: int, row: int) -> Tensor:
        kept = self.steps[: self.forwards[f].shape[2]]
        return kept <= int(self.compute_steps[row, f])


class _GenerationObserver:
    """Generation's observer for `capture_generation`: interventions, then the kept states and,
    with `lens`, the coda's logits of each kept step. The lens of a new token reads its state at
    that step with the final states of every earlier position as the coda's context (what the
    coda attends to when the token is decoded), in one uncached coda call: the generation's cache
    is left alone."""

    def __init__(
        self, model, prompt: Tensor, mask: Tensor | None, positions, steps, interventions, lens: bool, layers=()
    ):
        self.model, self.S = model, prompt.shape[1]
        self.layers = list(layers)
        self.layer_forwards: list[list[Tensor]] = []
        self.pending: Tensor | None = None  # (B, S, L, d) the selected core layers' outputs of this step
        self.mask = mask if mask is not None and not bool(mask.all()) else None
        self.index = torch.tensor(positions, device=prompt.device)
        self.column = {t: i for i, t in enumerate(steps)}
        self.interventions, self.lens = list(interventions), lens
        self.forwards: list[list[Tensor]] = []
        self.logits: list[list[Tensor]] = []
        self.finals: Tensor | None = None  # (B, positions so far, d): each finished forward's last state
        self.last: Tensor | None = None

    def __call__(self, step: int, state: Tensor, previous: Tensor) -> tuple[Tensor, bool] | None:
        if step == 1:
            if self.last is not None:  # the previous forward ended with this state
                self.finals = self.last if self.finals is None else torch.cat([self.finals, self.last], dim=1)
            self.forwards.append([])
            self.logits.append([])
            self.layer_forwards.append([])
        f = len(self.forwards) - 1
        offset = 0 if f == 0 else self.S + f - 1
        changed = apply_all(self.interventions, step, state, offset) if self.interventions else None
        if changed is not None:
            state = changed
        self.last = state
        if step in self.column:
            self.forwards[-1].append((state[:, self.index] if f == 0 else state).to("cpu", copy=True))
            if self.lens:
                self.logits[-1].append(self._lens(f, state).cpu())
            if self.pending is not None:
                self.layer_forwards[-1].append((self.pending[:, self.index] if f == 0 else self.pending).cpu())
        self.pending = None
        return None if changed is None else (changed, False)

    def run(self, blocks: nn.ModuleList, x: Tensor, ctx: AttentionContext, slots: list[int]) -> Tensor:
        """`run_blocks`, keeping the selected core layers' outputs of a kept step until the observer
        files them with the step's state."""
        if not slots or not self.layers:
            return run_blocks(blocks, x, ctx, slots)
        part, step0, _ = self.model.slots.locate(slots[0])
        if part != "core" or step0 + 1 not in self.column:
            return run_blocks(blocks, x, ctx, slots)
        outs = []
        for j, (block, slot) in enumerate(zip(blocks, slots)):
            x = block(x, ctx, slot)
            if j in self.layers:
                outs.append(x)
        self.pending = torch.stack(outs, dim=2)
        return x

    def _lens(self, f: int, state: Tensor) -> Tensor:
        if f == 0:
            context = state
        else:
            assert self.finals is not None
            context = torch.cat([self.finals, state], dim=1)
        B, n = context.shape[:2]
        mask = None
        if self.mask is not None:
            mask = torch.cat([self.mask, self.mask.new_ones(B, n - self.S)], dim=1)
        logits = self.model.predict(context, self.model.context(B, n, mask))[0]  # (B, n, V)
        return logits[:, self.index] if f == 0 else logits[:, -1:]


@torch.no_grad()
def capture_generation(
    model,
    input_ids: Tensor,
    depth,
    stopping,
    select: Selection = Selection(),
    *,
    interventions: Sequence[Intervention] = (),
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    **generate_kwargs,
) -> GenerationCapture:
    """`huginn.infer.generate.generate(model, input_ids, depth, stopping, ...)` with an observer that
    keeps the state of the selected prompt positions (prefill) and of every new token at the
    selected steps, and with `select.lens` the logit lens of each (see `_GenerationObserver`).
    With `select.layers`, the selected core layers' outputs at the kept steps too. Attention
    probabilities are forward-only (`capture` on the finished sequence: cached equals uncached).
    Intervention positions are absolute: prompt positions, then prompt_length + i for new token i."""
    from huginn.infer.generate import generate

    if select.attention:
        raise HuginnError("attention probabilities are captured in a forward; use capture() on the finished sequence")
    B, S = input_ids.shape
    if S == 0:
        raise HuginnError("the prompt is empty; pass at least one token")
    positions, steps, layers = select.resolve(S, depth.num_steps, model.model_config.n_layers_in_recurrent_block)
    observe = _GenerationObserver(
        model, input_ids, attention_mask, positions, steps, interventions, select.lens, layers
    )
    gen = generate(
        model,
        input_ids,
        depth,
        stopping,
        attention_mask=attention_mask,
        generator=generator,
        observer=observe,
        run=observe.run if layers else None,
        **generate_kwargs,
    )

    d = model.model_config.n_embd

    def stack(per_forward: list[list[Tensor]], width: int) -> list[Tensor]:
        return [
            torch.stack(f, dim=2) if f else torch.empty(B, len(positions) if i == 0 else 1, 0, width)
            for i, f in enumerate(per_forward)
        ]

    return GenerationCapture(
        sequences=gen.sequences.cpu(),
        compute_steps=gen.compute_steps.cpu(),
        prompt_length=S,
        positions=torch.tensor(positions, dtype=torch.long),
        steps=torch.tensor(steps, dtype=torch.long),
        forwards=stack(observe.forwards, model.model_config.n_embd),
        lens=stack(observe.logits, model.lm_head.out_features) if select.lens else None,
        layer_outputs=[
            torch.stack(f, dim=2) if f else torch.empty(B, len(positions) if i == 0 else 1, 0, len(layers), d)
            for i, f in enumerate(observe.layer_forwards)
        ]
        if layers
        else None,
    )
