"""Optimizer update rules on small tensors, parameter groups and schedules."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from huginn.errors import HuginnError
from huginn.train.optim import ELLISAdam, build_optimizer, lr_factor, param_groups, set_lr


def ellis_by_hand(theta, grads, lrs, b1, b2, eps, wd, clip, atan, running_init):
    """The published rule, written out elementwise with Python floats."""
    theta = list(theta)
    m = v = None
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        if m is None:
            m, v = (list(g), [x * x for x in g]) if running_init else ([0.0] * len(g), [0.0] * len(g))
        m = [mi + (1 - b1) * (gi - mi) for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        eta = lr
        if clip:
            v = [max(vi, eps**2) for vi in v]
            rms = math.sqrt(sum(gi * gi / vi for gi, vi in zip(g, v)) / len(g))
            eta = lr / max(rms, 1.0)
        eta /= 1 - b1**t
        bc2 = math.sqrt(1 - b2**t)
        theta = [th * (1 - lr / lrs[0] * wd) for th in theta]
        if atan:
            theta = [th - eta * math.atan2(mi, math.sqrt(vi) / bc2) for th, mi, vi in zip(theta, m, v)]
        else:
            theta = [th - eta * mi / (math.sqrt(vi) / bc2 + eps) for th, mi, vi in zip(theta, m, v)]
    return theta


@pytest.mark.parametrize("clip,atan,running_init", [(True, True, True), (False, False, False), (True, False, True)])
def test_ellis_adam_matches_published_rule(clip, atan, running_init):
    torch.manual_seed(0)
    theta0 = torch.randn(7, dtype=torch.float64)
    grads = [torch.randn(7, dtype=torch.float64) * s for s in (1.0, 0.1, 3.0, 0.5)]
    lrs = [0.1, 0.05, 0.02, 0.01]  # a decaying schedule: weight decay must follow lr / init_lr
    p = torch.nn.Parameter(theta0.clone())
    opt = ELLISAdam(
        [p],
        lr=lrs[0],
        betas=(0.9, 0.95),
        eps=1e-6,
        weight_decay=0.1,
        update_clipping=clip,
        atan_adam=atan,
        running_init=running_init,
    )
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
    want = ellis_by_hand(
        theta0.tolist(), [g.tolist() for g in grads], lrs, 0.9, 0.95, 1e-6, 0.1, clip, atan, running_init
    )
    torch.testing.assert_close(p.detach(), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def _cfg(name, **kw):
    base = dict(
        name=name,
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        no_wd_on_embeddings=False,
        muon_lr=0.02,
        muon_weight_decay=0.01,
        muon_momentum=0.95,
        muon_adjust_lr="match_rms_adamw",
        update_clipping=True,
        running_init=True,
        atan_adam=True,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_param_groups_cover_every_parameter_once():
    from huginn import RecurrentLM, named_shape

    model = RecurrentLM(named_shape("tiny"))
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    assert {names[id(p)] for p in groups["embeddings"]} == {"transformer.wte.weight"}  # tied head
    assert all(p.ndim == 2 for p in groups["matrices"])
    assert "transformer.adapter.weight" in {names[id(p)] for p in groups["matrices"]}
    scal = {names[id(p)] for p in groups["scalars"]}
    assert "transformer.ln_f.weight" in scal and "transformer.core_block.0.attn.qk_bias" in scal


def test_muon_on_matrices_adamw_elsewhere_and_steps():
    from huginn import RecurrentLM, named_shape

    model = RecurrentLM(named_shape("tiny"))
    opt = build_optimizer(model, _cfg("muon"))
    muon, adam = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.AdamW)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert [g["weight_decay"] for g in adam.param_groups] == [0.1, 0.0]  # embeddings decayed, scalars not
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(0, 256, (2, 8)), 2).logits.mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "transformer.core_block.0.mlp.fc.weight" in changed and "transformer.wte.weight" in changed
    set_lr(opt, 0.5)
    assert muon.param_groups[0]["lr"] == 0.01 and adam.param_groups[0]["lr"] == 5e-4


@pytest.mark.parametrize("name", ["adamw", "ellis-adam"])
def test_single_optimizers_build(name):
    from huginn import RecurrentLM, named_shape

    opt = build_optimizer(RecurrentLM(named_shape("tiny")), _cfg(name))
    assert len(opt.optimizers) == 1 and [g["name"] for g in opt.param_groups] == ["matrices", "embeddings", "scalars"]


def test_schedules():
    T = 100
    wsd = [lr_factor(s, T, "wsd", 0.1, 0.2, 0.01) for s in range(T)]
    assert wsd[0] == pytest.approx(0.1) and wsd[9] == 1.0 and wsd[79] == 1.0
    assert wsd[80] < 1.0 and wsd[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(wsd[9:]))  # non-increasing after warmup
    cos = [lr_factor(s, T, "cosine", 10, 0, 0.1) for s in range(T)]
    assert (
        cos[9] == 1.0
        and cos[-1] == pytest.approx(0.1)
        and cos[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 46 / 90)))
    )
    assert [lr_factor(s, T, "constant", 0, 0, 0.0) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    with pytest.raises(HuginnError, match="valid: wsd, cosine, constant"):
        lr_factor(0, T, "linear", 0, 0, 0)
