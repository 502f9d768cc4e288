"""The depth-sweep report: fixed-depth accuracy equals the model's forward, exits equal generation's
per-token exits, and scaling.json / .md / .png follow the contract."""

from __future__ import annotations

import json

import pytest
import torch

from huginn.config import named_shape
from huginn.infer.exits import make_criterion
from huginn.infer.generate import Depth, run_tokens
from huginn.infer.kv_cache import HuginnStaticCache
from huginn.model.recurrent import RecurrentLM
from huginn.train import report


@pytest.fixture(scope="module")
def model() -> RecurrentLM:
    torch.manual_seed(0)
    return RecurrentLM(named_shape("quickstart", n_embd=32, n_heads=2, intermediate_size=64)).eval()


def test_fixed_depth_accuracy_is_the_forward_from_a_zero_state(model):
    prompts, answers = report.problems("parity", 6, 32)
    acc, _, _ = report.trajectory(model, prompts, answers, [1, 3, 5])
    for r, a in zip([1, 3, 5], acc, strict=True):
        with torch.no_grad():
            pred = model(prompts, num_steps=r, init_scale=0.0).logits[:, -1].argmax(-1)
        assert a == float((pred == answers).float().mean())


@pytest.mark.parametrize("criterion, threshold", [("kl", 1e-3), ("argmax-stability", 2), ("latent-diff", 0.1)])
def test_exits_equal_generation_one_problem_at_a_time(model, criterion, threshold):
    prompts, _ = report.problems("parity", 5, 12)
    max_steps = 16
    steps, preds = [], []
    for row in prompts:  # generation's prefill with a per-token exit, each problem alone
        cache = HuginnStaticCache.for_model(model, 1, max_steps, prompts.shape[1])
        depth = Depth(max_steps, make_criterion(criterion, threshold), init_scale=0.0)
        with torch.no_grad():
            out = run_tokens(model, row[None], cache, depth)
        steps.append(int(out.steps[0]))
        preds.append(int(out.logits[0].argmax()))
    # the sweep's answers are generation's predictions: all must be "right" at the sweep's exits
    _, got_steps, correct = report.trajectory(
        model, prompts, torch.tensor(preds), [1, max_steps], make_criterion(criterion, threshold)
    )
    assert got_steps.tolist() == steps and bool(correct.all())
    assert len(set(steps)) > 1 or criterion == "latent-diff"  # the test sees different exits per row


def test_no_criterion_runs_max_steps(model):
    prompts, answers = report.problems("parity", 3, 16)
    acc, steps, correct = report.trajectory(model, prompts, answers, [1, 4])
    assert steps.tolist() == [4] * 16 and float(correct.float().mean()) == acc[-1]


def test_sweep_writes_the_scaling_contract(model, tmp_path):
    s = report.depth_sweep(model, "parity", [1, 2, 4, 8, 12], (1, 4), [1, 2, 4, 8, 16], 2, examples=16)
    s.extra = {"step": 3}
    text = report.write_sweep(tmp_path, s)
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert data["num_steps"] == [1, 2, 4, 8, 16] and data["train_mean_steps"] == 2
    assert data["difficulties"] == [1, 2, 4, 8, 12] and data["trained_difficulties"] == [1, 2, 4]
    assert len(data["accuracy"]) == 5 and all(len(row) == 5 for row in data["accuracy"])
    assert all(0 <= a <= 1 for row in data["accuracy"] for a in row)
    ex = data["exit"]
    assert ex["criterion"] == "latent-diff" and ex["threshold"] == 0.03 and ex["max_steps"] == 16
    assert len(ex["mean_steps"]) == len(ex["accuracy"]) == 5
    assert all(1 <= m <= 16 for m in ex["mean_steps"]) and all(0 <= a <= 1 for a in ex["accuracy"])
    assert data["examples"] == 16 and data["chance"] == 0.5 and data["step"] == 3
    assert data["overlap"] == [1.0, 1.0, 1.0, 0, 0]  # small trained difficulties: no strings to spare
    assert "| 2 (train mean) |" in text.splitlines()[0] and "| 4 * |" in text and "| 12 (untrained) |" in text
    assert text in (tmp_path / "scaling.md").read_text()
    assert (tmp_path / "scaling.png").stat().st_size > 1000


def test_a_sweep_of_untrained_difficulties_only_is_written(model, tmp_path):
    s = report.depth_sweep(model, "parity", [20], (1, 4), [1, 2], 1, examples=4)
    assert s.trained_difficulties == [] and s.overlap == [0.0]
    assert "| 20 (untrained) |" in report.write_sweep(tmp_path, s)


def test_a_few_step_builtin_run_writes_the_sweep_and_a_rerun_only_evaluates(tmp_path):
    from train_helpers import TINY

    from huginn.train.config import load_config
    from huginn.train.loop import train

    extra = ["data.difficulty=[1, 3]", "eval.difficulties=[1, 3, 9]", "eval.examples=8", "eval.scaling=[1, 3, 12, 24]"]
    cfg = load_config(None, [*TINY, *extra], **{"train.max_steps": 3})
    first = train(cfg, tmp_path)
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert data["num_steps"] == [1, 3, 12, 24] and data["train_mean_steps"] == 3  # 1, mean, 4x, 8x
    assert data["difficulties"] == [1, 3, 9] and data["trained_difficulties"] == [1, 3]
    assert data["exit"]["max_steps"] == 24 and data["examples"] == 8 and data["step"] == 3
    assert (tmp_path / "scaling.png").stat().st_size > 1000 and first.scaling_table.startswith("| difficulty |")
    (tmp_path / "scaling.json").unlink()
    again = train(cfg, tmp_path)  # a finished run: no step runs, the report is written again
    rewritten = json.loads((tmp_path / "scaling.json").read_text())
    assert again.losses == [] and rewritten | {"seconds": 0} == data | {"seconds": 0}
