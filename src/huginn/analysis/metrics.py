"""Metrics of latent trajectories, each a function of plain tensors (no model needed).

A trajectory is a tensor (..., N, d): N states of width d in step order (any leading dimensions,
e.g. positions), as `Capture.states` holds them per batch row (`Capture.with_initial()` prepends
the initial state). Logits are (..., N, V). Every function says exactly what it computes; the
classification states its rule. Non-goals: capturing states (`capture`), drawing (`figures`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from huginn.errors import HuginnError

Kind = Literal["fixed point", "orbit", "slider", "not converged"]
KINDS: tuple[Kind, ...] = get_args(Kind)


def _check(states: Tensor, at_least: int = 2) -> None:
    if states.dim() < 2 or states.shape[-2] < at_least:
        raise HuginnError(f"a trajectory needs at least {at_least} states (..., N, d), got shape {tuple(states.shape)}")


def successive_distance(states: Tensor, relative: bool = False) -> Tensor:
    """(..., N-1): ||s_i - s_{i-1}||_2 for i = 1 .. N-1 (in float64); with `relative`, divided by
    ||s_i||_2 (the change relative to the new state, as the latent-diff exit criterion measures it)."""
    _check(states)
    s = states.double()
    dist = (s[..., 1:, :] - s[..., :-1, :]).norm(dim=-1)
    return dist / s[..., 1:, :].norm(dim=-1).clamp_min(1e-30) if relative else dist


def distance_to_final(states: Tensor, relative: bool = False) -> Tensor:
    """(..., N): ||s_i - s_{N-1}||_2 for every state (float64); with `relative`, divided by
    ||s_{N-1}||_2."""
    _check(states, 1)
    s = states.double()
    dist = (s - s[..., -1:, :]).norm(dim=-1)
    return dist / s[..., -1:, :].norm(dim=-1).clamp_min(1e-30) if relative else dist


def successive_kl(logits: Tensor) -> Tensor:
    """(..., N-1): KL(p_i || p_{i-1}) = sum_v p_i(v) (log p_i(v) - log p_{i-1}(v)) in nats, for
    i = 1 .. N-1, where p_i = softmax(logits[..., i, :]) (in float64): how much the next-token
    distribution read at step i moved from the previous step's."""
    _check(logits)
    logp = torch.log_softmax(logits.double(), dim=-1)
    return (logp[..., 1:, :].exp() * (logp[..., 1:, :] - logp[..., :-1, :])).sum(-1).clamp_min(0.0)


def steps_to_convergence(states: Tensor, threshold: float, relative: bool = True, first_step: int = 1) -> Tensor:
    """(...,) long: the first step from which the trajectory stays converged, -1 where it never does.
    State i of `states` is the state after step `first_step + i` (pass `first_step=0` when the
    initial state leads). Step t = first_step + i (i >= 1) is converged when the successive distance
    into it and every later one are below `threshold` (relative ones by default, see
    `successive_distance`); the answer is the smallest such t."""
    if threshold <= 0:
        raise HuginnError(f"the convergence threshold must be > 0, got {threshold}")
    below = successive_distance(states, relative) < threshold  # (..., N-1); entry j is step first_step + j + 1
    # stays below from j on: a reversed cumulative AND
    stays = below.flip(-1).long().cumprod(-1).flip(-1).bool()
    n_stay = stays.long().sum(-1)  # the trailing run of converged steps
    n = below.shape[-1]
    step = first_step + 1 + (n - n_stay)
    return torch.where(n_stay > 0, step, torch.full_like(step, -1))


@dataclass
class PCA:
    """Per-trajectory principal components of a window of states, centred on the window's mean."""

    projections: Tensor  # (..., W, k) coordinates of each state on the components
    explained: Tensor  # (..., k) fraction of the window's variance each component explains
    components: Tensor  # (..., k, d) unit directions
    mean: Tensor  # (..., d) the centre


def trajectory_pca(states: Tensor, components: int = 6, tail: int | None = None) -> PCA:
    """PCA of each trajectory (..., N, d) on its last `tail` states (None: all), centred on their
    mean (as the reference's orbit plots do), in float64 via the SVD: the top `components`
    directions, the coordinates of the window's states on them and their explained-variance ratios."""
    _check(states)
    window = states[..., -tail:, :] if tail else states
    x = window.double()
    mean = x.mean(-2)
    centred = x - mean[..., None, :]
    u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(components, s.shape[-1])
    var = s.pow(2)
    explained = var[..., :k] / var.sum(-1, keepdim=True).clamp_min(1e-300)
    return PCA(u[..., :k] * s[..., None, :k], explained, vh[..., :k, :], mean)


@dataclass
class Classification:
    """One trajectory's class and the numbers its rule read (see `classify`)."""

    kind: Kind
    period: int  # the orbit's period in steps (0 unless an orbit)
    decay: float  # last successive distance / largest in the window
    relative_last: float  # last successive distance / norm of the last state
    recurrence: float  # min over p of mean ||s_i - s_{i-p}|| / mean step
    straightness: float  # net displacement / path length over the window

    def to_json(self) -> dict:
        return asdict(self)


def classify(
    states: Tensor,
    tail: int | None = None,
    decay: float = 0.1,
    floor: float = 1e-3,
    recurrence: float = 0.35,
    straight: float = 0.8,
) -> list[Classification]:
    """The class of each trajectory (..., N, d) (flattened over the leading dimensions, in order),
    judged on its last `tail` states (default: the last half, at least 8 or all N), where d_i is the
    successive distance (`successive_distance`) inside that window:

    1. fixed point: the motion died out: d_last <= `decay` x max(d_i), or the last relative change
       d_last / ||s_last|| is below `floor` (the convergence threshold of `steps_to_convergence`);
    2. orbit: the state comes back: for some period p in 2 .. W/2, the mean of ||s_i - s_{i-p}|| over
       the window is below `recurrence` x the mean step d_i (the smallest such p is the period);
    3. slider: the state moves in a straight line: net displacement ||s_last - s_first|| >= `straight`
       x path length sum(d_i) (a monotone drift along PC1);
    4. not converged: none of these (e.g. a random walk: its net displacement grows like sqrt(W)
       steps, it never returns).
    """
    _check(states, 3)
    N, d = states.shape[-2], states.shape[-1]
    W = min(N, tail if tail else max(N // 2, min(8, N)))
    if W < 3:
        raise HuginnError(f"the tail window must hold at least 3 states, got {W}")
    flat = states.reshape(-1, N, d)[:, -W:].double()
    out = []
    for traj in flat:
        dist = successive_distance(traj)
        path, d_last, d_max = float(dist.sum()), float(dist[-1]), float(dist.max())
        rel_last = d_last / max(float(traj[-1].norm()), 1e-30)
        decay_ratio = d_last / d_max if d_max > 0 else 0.0
        straightness = float((traj[-1] - traj[0]).norm()) / path if path > 0 else 0.0
        mean_step = path / len(dist) if path > 0 else 0.0
        ratios = {}
        for p in range(2, W // 2 + 1):
            back = (traj[p:] - traj[:-p]).norm(dim=-1).mean()
            ratios[p] = float(back) / mean_step if mean_step > 0 else float("inf")
        best = min(ratios.values()) if ratios else float("inf")
        period = 0
        if d_max == 0 or decay_ratio <= decay or rel_last < floor:
            kind: Kind = "fixed point"
        elif best < recurrence:
            kind = "orbit"
            period = min(p for p, r in ratios.items() if r < recurrence)
        elif straightness >= straight:
            kind = "slider"
        else:
            kind = "not converged"
        out.append(Classification(kind, period, decay_ratio, rel_last, best, straightness))
    return out


@dataclass
class ProbeResult:
    """Held-out accuracy of a linear probe that reads the step index from a state."""

    accuracy: float  # on held-out positions
    chance: float  # 1 / number of steps
    train_accuracy: float
    mean_abs_error: float  # |predicted step - true step| on held-out positions, in steps
    train_positions: int
    test_positions: int

    def to_json(self) -> dict:
        return asdict(self)


def step_probe(
    states: Tensor, train_fraction: float = 0.5, penalty: float = 1e-3, seed: int = 0, max_iter: int = 100
) -> ProbeResult:
    """The loop-counter probe: from trajectories (P, N, d) (P positions, N steps), a linear
    classifier of the step index i in 0 .. N-1 given the state. Positions are split at random
    (`seed`) into `train_fraction` for fitting and the rest for testing, so the probe must read the
    step from tokens it never saw. The classifier is multinomial logistic regression on
    standardised features plus a bias (softmax over N classes, cross-entropy + `penalty` x the
    squared weights, fitted by L-BFGS in float64 from zero weights: deterministic), predicting the
    arg max; a counter along one direction is linearly separable this way (logits k t - k^2 / 2)."""
    if states.dim() != 3:
        raise HuginnError(f"the step probe reads (positions, steps, width) states, got shape {tuple(states.shape)}")
    P, N, d = states.shape
    if P < 2 or N < 2:
        raise HuginnError(f"the step probe needs at least 2 positions and 2 steps, got {P} and {N}")
    if not 0 < train_fraction < 1:
        raise HuginnError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    order = torch.randperm(P, generator=torch.Generator().manual_seed(seed))
    n_train = min(P - 1, max(1, round(P * train_fraction)))
    train, test = order[:n_train], order[n_train:]
    x = states.detach().double().cpu()
    labels = torch.arange(N).expand(P, N)
    xtr, ytr = x[train].reshape(-1, d), labels[train].reshape(-1)
    xte, yte = x[test].reshape(-1, d), labels[test].reshape(-1)
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-12)
    ftr, fte = (xtr - mu) / sd, (xte - mu) / sd
    with torch.enable_grad():
        weight = torch.zeros(d, N, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(N, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def loss() -> Tensor:
            opt.zero_grad()
            value = torch.nn.functional.cross_entropy(ftr @ weight + bias, ytr) + penalty * weight.pow(2).sum()
            value.backward()
            return value

        opt.step(loss)
    with torch.no_grad():
        pred_tr = (ftr @ weight + bias).argmax(-1)
        pred_te = (fte @ weight + bias).argmax(-1)
    return ProbeResult(
        accuracy=float((pred_te == yte).double().mean()),
        chance=1.0 / N,
        train_accuracy=float((pred_tr == ytr).double().mean()),
        mean_abs_error=float((pred_te - yte).abs().double().mean()),
        train_positions=len(train),
        test_positions=len(test),
    )
