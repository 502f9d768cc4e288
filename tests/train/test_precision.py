"""Training precision: `auto` picks by device and by a trial of the run's own step, says so, and a
resumed run keeps the first choice; bf16 autocast's loss curve follows fp32's within bf16's noise."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import TINY, losses

from huginn.train import precision as precision_of
from huginn.train.config import load_config
from huginn.train.loop import train
from tests.conftest import tiny_model


def cfg(*extra, steps=4):
    return load_config(None, [*TINY, "eval.scaling=[]", *extra], **{"train.max_steps": steps})


def test_an_explicit_setting_is_kept():
    model = tiny_model()
    for name in ("fp32", "bf16"):
        p = precision_of.choose(name, model, torch.device("cpu"), 2, 16)
        assert p.name == name and p.reason == "set in the config"


def test_auto_without_native_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(precision_of, "native_bf16", lambda device: False)
    p = precision_of.choose("auto", tiny_model(), torch.device("cpu"), 2, 16)
    assert p.name == "fp32" and "no native bf16" in p.reason


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_with_native_bf16_takes_the_faster_trial(monkeypatch, faster):
    monkeypatch.setattr(precision_of, "native_bf16", lambda device: True)
    times = (1.0, 2.0) if faster == "fp32" else (2.0, 1.0)
    monkeypatch.setattr(precision_of, "trial", lambda *a, **k: times)
    p = precision_of.choose("auto", tiny_model(), torch.device("cpu"), 2, 16)
    assert p.name == faster and "2.00x faster" in p.reason


def test_the_trial_leaves_the_random_stream_and_the_model_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fp32, bf16 = precision_of.trial(model, torch.device("cpu"), 2, 16, repeats=1)
    assert fp32 > 0 and bf16 > 0
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) and v.grad is None for k, v in model.state_dict().items())


def test_auto_says_its_choice_and_a_resumed_run_keeps_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_of, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision_of, "trial", lambda *a, **k: (2.0, 1.0))  # bf16 wins the first trial
    train(cfg("train.precision=auto", "train.stop_after=2"), tmp_path / "r")
    assert "training in bf16 (auto: bf16 autocast ran a trial step 2.00x faster" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "precision.json").read_text())["name"] == "bf16"
    monkeypatch.setattr(precision_of, "trial", lambda *a, **k: (1.0, 2.0))  # a resumed trial would say fp32
    train(cfg("train.precision=auto"), tmp_path / "r")
    assert "training in bf16 (auto, as chosen when the run started" in capsys.readouterr().out
    # the resumed run trained in bf16 throughout: its losses are those of an uninterrupted bf16 run
    train(cfg("train.precision=bf16"), tmp_path / "bf16")
    assert losses(tmp_path / "r") == losses(tmp_path / "bf16")


def test_bf16_loss_curve_follows_fp32(tmp_path):
    # 40 steps of the tiny built-in task: bf16 autocast rounds every product's inputs to 8 bits of
    # mantissa, so the curves drift apart by its noise, not by a trend. Bound: every step's loss
    # within 3% of fp32's (measured here: at most 0.2%), and the same drop over the run.
    steps = 40
    train(cfg("train.precision=fp32", steps=steps), tmp_path / "fp32")
    train(cfg("train.precision=bf16", steps=steps), tmp_path / "bf16")
    a, b = (torch.tensor(list(losses(tmp_path / r).values())) for r in ("fp32", "bf16"))
    assert len(a) == len(b) == steps and not torch.equal(a, b)  # bf16 did run in bf16
    rel = ((a - b).abs() / a).max()
    assert rel < 0.03, f"bf16 loss differs from fp32 by {float(rel):.1%} at worst"
    assert (a[0] - a[-1]) > 0.2 and abs((a[0] - a[-1]) - (b[0] - b[-1])) < 0.1 * (a[0] - a[-1])
