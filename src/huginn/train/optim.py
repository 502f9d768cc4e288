"""Optimizers, parameter groups and learning-rate schedules for training.

Parameter groups (by name, every parameter lands in exactly one):

* `matrices`: the 2-D weights of prelude, core and coda blocks and the injection adapter.
* `embeddings`: the token embedding and the (possibly tied) head.
* `scalars`: norms, the qk bias and any other bias; never weight-decayed.

Optimizers: `adamw` (torch.optim.AdamW on every group), `ellis-adam` (Huginn-0125's AdamW variant:
atan2 update, RMS update clipping, running init, decoupled weight decay that follows the schedule;
see `ELLISAdam`), `muon` (torch.optim.Muon on `matrices`, AdamW on `embeddings` and `scalars`, as in
retrofitted recurrence). The adapter is a body matrix, so Muon takes it.

Schedules: `wsd` (warmup-stable-decay, the trapezoid), `cosine`, `constant`; each with linear
warmup and a floor of `min_lr_ratio`. `set_lr` scales every group's own base lr by the factor.
Non-goals: optimizer sharding (FSDP2 shards the state), exotic variants (Nesterov, Kahan sums).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from huginn.errors import HuginnError, one_of

OptimizerName = Literal["adamw", "ellis-adam", "muon"]
ScheduleKind = Literal["wsd", "cosine", "constant"]
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)
SCHEDULES: tuple[ScheduleKind, ...] = get_args(ScheduleKind)
EMBEDDING_NAMES = ("wte", "lm_head")


def group_of(name: str, p: Tensor) -> str:
    """Which parameter group a named parameter belongs to."""
    leaf = name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1]
    if any(part in EMBEDDING_NAMES for part in name.split(".")):
        return "embeddings"
    if p.ndim < 2 or "norm" in leaf or "bias" in name.split(".")[-1]:
        return "scalars"
    return "matrices"


def param_groups(model: nn.Module) -> dict[str, list[Tensor]]:
    """Trainable parameters split into matrices / embeddings / scalars (tied weights counted once)."""
    groups: dict[str, list[Tensor]] = {"matrices": [], "embeddings": [], "scalars": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups[group_of(name, p)].append(p)
    return groups


class ELLISAdam(Optimizer):
    """Huginn-0125's AdamW variant (reference `recpre/optim.py`), the switches it was trained with.

    Per parameter, with gradient g and step t:
        m <- lerp(m, g, 1 - b1);  v <- b2 v + (1 - b2) g^2          (running_init: m = g, v = g^2 at t = 0)
        eta = lr_t;  update_clipping: eta /= max(1, sqrt(mean(g^2 / max(v, eps^2))))   (the clamp writes v)
        eta /= 1 - b1^t
        decoupled wd: theta *= 1 - (lr_t / init_lr) * wd          (wd follows the schedule, not lr's size)
        atan_adam: theta -= eta * atan2(m, sqrt(v / (1 - b2^t)))  else theta -= eta * m / (sqrt(v/(1-b2^t)) + eps)
    `init_lr` is each group's lr at construction.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 1e-2,
        *,
        update_clipping: bool = False,
        running_init: bool = False,
        atan_adam: bool = False,
        decouple_wd: bool = True,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            update_clipping=update_clipping,
            running_init=running_init,
            atan_adam=atan_adam,
            decouple_wd=decouple_wd,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("init_lr", group["lr"])

    # torch declares step as two overloads (closure None -> None, closure -> float); this is the
    # signature of its own implementation, which mypy cannot match against the overloads
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    if group["running_init"]:
                        state["exp_avg"], state["exp_avg_sq"] = g.clone(), g.pow(2)
                    else:
                        state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                eta: float | Tensor = lr
                if group["update_clipping"]:
                    rms = g.pow(2).div_(v.clamp_(min=eps**2)).mean().sqrt()
                    eta = lr / rms.clamp(min=1.0)
                state["step"] += 1
                t = state["step"].item()
                bc1, bc2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
                eta = eta / bc1
                if wd != 0:
                    if group["decouple_wd"]:
                        init_lr = group["init_lr"]
                        p.mul_(1 - (lr / init_lr if init_lr else 0.0) * wd)
                    else:
                        p.mul_(1 - lr * wd)
                if group["atan_adam"]:
                    update = torch.atan2(m, v.sqrt().div_(bc2_sqrt))
                else:
                    update = m / v.sqrt().div_(bc2_sqrt).add_(eps)
                p.sub_(update * eta)
        return loss


class Optimizers:
    """Several optimizers stepped as one (Muon + AdamW); `optimizers` is what checkpointing saves."""

    def __init__(self, optimizers: list[Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def fused_ok(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: floating point, on CPU or CUDA.
    It updates every tensor in one pass (the default for-each AdamW makes several over each), works
    on FSDP2's DTensor shards, and is measured ~3x faster than for-each AdamW at the `small` shape."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(model: nn.Module, cfg: Any) -> Optimizers:
    """The optimizer(s) named by `cfg` (a `huginn.train.config.OptimSection`) over `model`'s groups."""
    if cfg.name not in OPTIMIZERS:
        raise one_of("optimizer", cfg.name, OPTIMIZERS)
    groups = param_groups(model)
    emb_wd = 0.0 if cfg.no_wd_on_embeddings else cfg.weight_decay

    def spec(name: str, params: list[Tensor], lr: float, wd: float) -> dict[str, Any]:
        return {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd, "name": name}

    adam_groups = [
        spec("embeddings", groups["embeddings"], cfg.lr, emb_wd),
        spec("scalars", groups["scalars"], cfg.lr, 0.0),
    ]
    betas = tuple(cfg.betas)
    if cfg.name == "muon":
        muon = torch.optim.Muon(
            [spec("matrices", groups["matrices"], cfg.muon_lr, cfg.muon_weight_decay)],
            lr=cfg.muon_lr,
            weight_decay=cfg.muon_weight_decay,
            momentum=cfg.muon_momentum,
            adjust_lr_fn=cfg.muon_adjust_lr,
        )
        adam_groups = [g for g in adam_groups if g["params"]]
        adam = torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fused_ok(adam_groups))
        return Optimizers([muon, adam])
    all_groups = [spec("matrices", groups["matrices"], cfg.lr, cfg.weight_decay), *adam_groups]
    all_groups = [g for g in all_groups if g["params"]]
    if cfg.name == "adamw":
        return Optimizers(
            [torch.optim.AdamW(all_groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fused_ok(all_groups))]
        )
    for g in all_groups:
        g["init_lr"] = g["lr"]
    return Optimizers(
        [
            ELLISAdam(
                all_groups,
                lr=cfg.lr,
                betas=betas,
                eps=cfg.eps,
                update_clipping=cfg.update_clipping,
                running_init=cfg.running_init,
                atan_adam=cfg.atan_adam,
            )
        ]
    )


def lr_factor(step: int, max_steps: int, kind: str, warmup: float, decay: float, min_lr_ratio: float) -> float:
    """Multiplier of the base lr for the update made at optimizer step `step` (0-based).

    `warmup` and `decay` are fractions of `max_steps` when < 1, else step counts. `wsd`: linear
    warmup, flat, linear decay to `min_lr_ratio` over the last `decay`; `cosine`: warmup, then a
    half cosine to `min_lr_ratio` at the end; `constant`: warmup, then flat.
    """
    if kind not in SCHEDULES:
        raise one_of("schedule", kind, SCHEDULES)
    w, d = schedule_steps(max_steps, warmup, decay)
    if step < w:
        return (step + 1) / w
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = min(1.0, (step - w + 1) / max(1, max_steps - w))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    start = max_steps - d
    if d <= 0 or step < start:
        return 1.0
    progress = min(1.0, (step - start + 1) / d)
    return 1.0 - (1.0 - min_lr_ratio) * progress


def set_lr(optimizer: Optimizers, factor: float) -> float:
    """Scale every group's base lr by `factor`; returns the lr of the first group (for logging)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def schedule_steps(max_steps: int, warmup: float, decay: float) -> tuple[int, int]:
    """(warmup steps, decay steps): `warmup` and `decay` are fractions of `max_steps` when < 1, else steps."""
    w = round(warmup * max_steps) if warmup < 1 else int(warmup)
    d = round(decay * max_steps) if decay < 1 else int(decay)
    return w, d


def check_schedule(max_steps: int, warmup: float, decay: float) -> None:
    """Refuse a warmup + decay longer than the run (the fields' own ranges are the config's check)."""
    w, d = schedule_steps(max_steps, warmup, decay)
    if w + d > max_steps:
        raise HuginnError(
            f"schedule warmup ({w} steps) + decay ({d} steps) exceed max_steps {max_steps}; shorten them or train longer"
        )
