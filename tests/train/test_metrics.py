"""Training metrics count FLOPs with the one cost model (`huginn.model.cost`)."""

from __future__ import annotations

import json

from train_helpers import TINY

from huginn.config import ModelConfig
from huginn.model.cost import train_flops_per_token
from huginn.train.config import load_config
from huginn.train.loop import train
from huginn.train.metrics import Metrics


def test_logged_flops_are_the_cost_models(tmp_path, monkeypatch):
    counted: list[tuple[int, float]] = []
    depths: list[tuple[int, int]] = []
    count, log_step = Metrics.count, Metrics.log_step

    def record_count(self, tokens, flops):
        counted.append((tokens, flops))
        count(self, tokens, flops)

    def record_step(self, step, loss, lr, no_grad_steps, grad_steps, *args, **kwargs):
        depths.append((no_grad_steps, grad_steps))
        log_step(self, step, loss, lr, no_grad_steps, grad_steps, *args, **kwargs)

    monkeypatch.setattr(Metrics, "count", record_count)
    monkeypatch.setattr(Metrics, "log_step", record_step)
    train(load_config(None, TINY, **{"train.max_steps": 3}), tmp_path / "run")
    mc = ModelConfig.from_dict(json.loads((tmp_path / "run" / "model_config.json").read_text()))
    assert len(counted) == len(depths) == 3
    for (tokens, flops), (n, k) in zip(counted, depths):
        assert tokens == 4 * 32  # batch_size x seq_len
        assert flops == tokens * train_flops_per_token(mc, n, k)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tflops_per_s"] >= 0 for r in records if "loss" in r)  # logged with every step
