"""The analysis of one text: capture its trajectories and compute every number the report shows.

`analyze_text` runs one `capture` (the state at every step), the logit lens over it, and the metrics of
`huginn.analysis.metrics` over every position: relative successive distances (the convergence
heatmap), distances to the final state, KL between successive steps' next-token distributions,
steps to convergence, the class of each trajectory, a global PCA (the waterfall), per-token PCA of
the chosen tokens (the orbit grid), the logit lens's top token per step, and the loop-counter
probe. `Analysis.to_json` is the JSON contract of `huginn analyze --json`. Non-goals: drawing
(`figures`), files (`report`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from huginn.analysis import metrics
from huginn.analysis.capture import Progress, Selection, capture
from huginn.errors import HuginnError

ORBIT_TOKENS = 6  # tokens in the orbit grid when none are chosen
PCA_COMPONENTS = 6  # per-token components (three planes), as the reference's orbit plots


@dataclass
class Analysis:
    """Every number behind the figures, for one text (batch of one), on CPU."""

    token_ids: list[int]
    tokens: list[str]  # each token's text, as shown
    num_steps: int
    threshold: float  # relative successive distance under which a step counts as converged
    tail: int  # the window (last states) the classification and orbit PCA read
    init_scale: float | None
    seed: int | None
    relative_change: Tensor  # (S, T): ||s_t - s_{t-1}|| / ||s_t||, t = 1 .. T (s_0 the initial state)
    distance_to_final: Tensor  # (S, T + 1): ||s_t - s_T||, t = 0 .. T
    kl: Tensor  # (S, T - 1): KL(p_t || p_{t-1}) of the logit lens, t = 2 .. T
    steps_to_converge: Tensor  # (S,) long, -1: not converged within num_steps
    classes: list[metrics.Classification]
    waterfall: Tensor  # (S, T + 1): each state's coordinate on the first principal component of all states
    waterfall_explained: float
    orbit_positions: list[int]
    orbits: list[Tensor]  # per orbit position: (tail, k) coordinates on its own top components
    orbit_explained: list[Tensor]  # per orbit position: (k,)
    lens_top: Tensor  # (S, T) long: the logit lens's most likely token at each step
    lens_prob: Tensor  # (S, T): its probability
    lens_tokens: list[list[str]]  # (S, T) texts of lens_top
    probe: metrics.ProbeResult | None  # the loop-counter probe (None: fewer than 2 tokens)
    extra: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """How many tokens fall in each class."""
        return {k: sum(c.kind == k for c in self.classes) for k in metrics.KINDS}

    def mean_steps_to_converge(self) -> float | None:
        done = self.steps_to_converge[self.steps_to_converge > 0]
        return float(done.double().mean()) if done.numel() else None

    def to_json(self) -> dict:
        def floats(t: Tensor) -> list:
            return _finite(t.double().tolist())

        return {
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "num_steps": self.num_steps,
            "threshold": self.threshold,
            "tail": self.tail,
            "init_scale": self.init_scale,
            "seed": self.seed,
            "summary": {
                "classes": self.counts(),
                "mean_steps_to_converge": self.mean_steps_to_converge(),
                "converged": int((self.steps_to_converge > 0).sum()),
                "probe": None if self.probe is None else _finite_dict(self.probe.to_json()),
            },
            "relative_change": floats(self.relative_change),
            "distance_to_final": floats(self.distance_to_final),
            "kl": floats(self.kl),
            "steps_to_converge": self.steps_to_converge.tolist(),
            "classes": [_finite_dict(c.to_json()) for c in self.classes],
            "waterfall": {"pc1": floats(self.waterfall), "explained": self.waterfall_explained},
            "orbits": [
                {"position": p, "coordinates": floats(o), "explained": floats(e)}
                for p, o, e in zip(self.orbit_positions, self.orbits, self.orbit_explained)
            ],
            "logit_lens": {
                "top_token_ids": self.lens_top.tolist(),
                "top_tokens": self.lens_tokens,
                "probability": floats(self.lens_prob),
            },
            **self.extra,
        }


def _finite_dict(d: dict) -> dict:
    return {k: _finite(v) for k, v in d.items()}


def _finite(value):
    """NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def choose_orbit_positions(
    classes: Sequence[metrics.Classification], steps: Tensor, n: int = ORBIT_TOKENS
) -> list[int]:
    """Up to `n` positions for the orbit grid: every class represented first (orbits, sliders, not
    converged, then the slowest fixed points), returned in text order."""
    interest = metrics.KINDS[1:] + metrics.KINDS[:1]  # orbit, slider, not converged, then fixed point
    slow = [(-int(s) if s > 0 else 0) for s in steps.tolist()]
    order = sorted(range(len(classes)), key=lambda p: (interest.index(classes[p].kind), slow[p], -p))
    picked: list[int] = []
    for kind in interest:  # one of each class first
        first = next((p for p in order if classes[p].kind == kind), None)
        if first is not None and len(picked) < n:
            picked.append(first)
    picked += [p for p in order if p not in picked][: max(0, n - len(picked))]
    return sorted(picked)


@torch.no_grad()
def logit_lens(model, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The logit lens of captured states (1, S, T, d) of every position: per step, the coda, ln_f
    and the head read the state (`model.predict`, as the model reads its final state). Returns the
    top token (S, T), its probability (S, T) and the KL between successive steps (S, T - 1,
    `metrics.successive_kl`), holding one step's logits at a time (the vocabulary may be large)."""
    _, S, T, _ = states.shape
    device = model.lm_head.weight.device
    ctx = model.context(1, S)
    top = torch.empty(S, T, dtype=torch.long)
    prob = torch.empty(S, T, dtype=torch.float64)
    kl = torch.empty(S, max(T - 1, 0), dtype=torch.float64)
    previous = None
    for t in range(T):
        logits = model.predict(states[:, :, t].to(device), ctx)[0][0].double().cpu()  # (S, V)
        p, top[:, t] = logits.softmax(-1).max(-1)
        prob[:, t] = p
        if previous is not None:
            kl[:, t - 1] = metrics.successive_kl(torch.stack([previous, logits], dim=1))[:, 0]
        previous = logits
    return top, prob, kl


@torch.no_grad()
def analyze_text(
    model,
    token_ids: Sequence[int],
    decode: Callable[[list[int]], str],
    num_steps: int = 64,
    threshold: float = 1e-3,
    tail: int | None = None,
    orbit_positions: Sequence[int] | None = None,
    init_scale: float | None = None,
    seed: int | None = 0,
    progress: Progress | None = None,
) -> Analysis:
    """Capture the trajectories of `token_ids` over `num_steps` core steps (initial state drawn with
    `seed` at `init_scale`) and compute the report's numbers. `decode(ids)` turns ids into text;
    `tail`: the window of last states the classification and per-token PCA read (default half the
    steps); `orbit_positions`: the tokens of the orbit grid (default: chosen by class)."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise HuginnError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if num_steps < 3:
        raise HuginnError(f"an analysis needs num_steps >= 3 (trajectories of a few states), got {num_steps}")
    if not token_ids:
        raise HuginnError("the text is empty after tokenization; pass some text")
    if threshold <= 0:
        raise HuginnError(f"--threshold must be > 0, got {threshold}")
    S = len(token_ids)
    window = tail if tail is not None else max(3, num_steps // 2)
    if not 3 <= window <= num_steps + 1:
        raise HuginnError(f"the tail window must hold 3 .. {num_steps + 1} states (num_steps + 1), got {window}")
    if orbit_positions is not None:
        Selection(positions=orbit_positions).resolve(S, num_steps, 1)  # range check, one line
        orbit_positions = sorted({p % S for p in orbit_positions})
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cap = capture(model, ids, num_steps, init_scale=init_scale, generator=generator, progress=progress)
    states = cap.with_initial()[0]  # (S, T + 1, d)
    top, top_prob, kl = logit_lens(model, cap.states)

    classes = metrics.classify(states, tail=window, floor=threshold)
    steps_to = metrics.steps_to_convergence(states, threshold, relative=True, first_step=0)
    glob = metrics.trajectory_pca(states.reshape(1, -1, states.shape[-1]), components=1)
    if orbit_positions is None:
        orbit_positions = choose_orbit_positions(classes, steps_to)
    pcas = [metrics.trajectory_pca(states[p], PCA_COMPONENTS, tail=window) for p in orbit_positions]
    vocab = {i: decode([i]) for i in sorted(set(top.flatten().tolist()) | set(token_ids))}
    return Analysis(
        token_ids=list(token_ids),
        tokens=[vocab[i] for i in token_ids],
        num_steps=num_steps,
        threshold=threshold,
        tail=window,
        init_scale=init_scale,
        seed=seed,
        relative_change=metrics.successive_distance(states, relative=True),
        distance_to_final=metrics.distance_to_final(states),
        kl=kl,
        steps_to_converge=steps_to,
        classes=classes,
        waterfall=glob.projections[0, :, 0].reshape(S, -1),
        waterfall_explained=float(glob.explained[0, 0]),
        orbit_positions=list(orbit_positions),
        orbits=[p.projections for p in pcas],
        orbit_explained=[p.explained for p in pcas],
        lens_top=top,
        lens_prob=top_prob,
        lens_tokens=[[vocab[i] for i in row] for row in top.tolist()],
        probe=metrics.step_probe(states[:, 1:]) if S >= 2 else None,
    )
