"""Answer accuracy of a built-in-corpus run by hop count and test-time depth.

    PYTHONPATH=src python benchmarks/answers_by_hops.py RUN_DIR [--rows 128] [--steps 1,2,4,8]

Loads the run's newest checkpoint and scores the answers of held-out rows separately for 1-hop and
2-hop queries (the digit before `?`), at each depth with a zero initial state. Tells whether depth
helps the pointer chase itself (2-hop gaining more than 1-hop) or the answers in general.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from huginn.train import checkpoint, corpus
from huginn.train.config import load_config
from huginn.train.loop import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--steps", default="1,2,4,8")
    a = ap.parse_args()
    run = Path(a.run)
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint.latest(run)))
    model.load_state_dict(state["model"])
    model.eval()
    rows = corpus.rows(cfg.train.seed, list(range(corpus.VAL_OFFSET, corpus.VAL_OFFSET + a.rows)), cfg.data.seq_len + 1)
    inputs, labels = rows[:, :-1], rows[:, 1:]
    answers = corpus.answer_mask(inputs)
    hops = torch.zeros_like(inputs)
    hops[:, 1:] = inputs[:, :-1]  # the hop digit precedes '?'
    print(f"{run}: answer accuracy by hop count ({a.rows} held-out rows, zero initial state)")
    for r in (int(s) for s in a.steps.split(",")):
        with torch.no_grad():
            pred = model(inputs, num_steps=r, init_scale=0.0).logits.argmax(-1)
        cells = []
        for k in range(1, corpus.MAX_HOPS + 1):
            m = answers & (hops == corpus.STOI[str(k)])
            cells.append(f"{k}-hop {float((pred[m] == labels[m]).float().mean()):6.1%} (n={int(m.sum())})")
        print(f"  num_steps {r:2d}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
