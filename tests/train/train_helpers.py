"""Helpers for training tests: a tiny, fast job config."""

from __future__ import annotations

import json
from pathlib import Path

TINY = [
    "data.seq_len=32",
    "data.val_samples=8",
    "train.batch_size=4",
    "train.precision=fp32",  # not auto: a timed trial must not decide what exactness tests compare
    "log.every=1",
    "log.progress=false",
    "eval.scaling=[1,2]",
    "checkpoint.save_every=2",
    "schedule.warmup=1",
    "schedule.decay=2",
    "depth.mean_recurrence=3",
    "depth.backprop_depth=2",
    "model.overrides={n_embd: 32, n_heads: 2, intermediate_size: 64, n_layers_in_prelude: 1, n_layers_in_recurrent_block: 2, n_layers_in_coda: 1}",
]


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out
