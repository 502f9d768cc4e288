"""Which exit criterion finds the depth a problem needs? Every criterion on a trained built-in-task run.

    PYTHONPATH=src python benchmarks/exit_criteria.py RUN_DIR [--difficulties 1,4,8,16,24,32,48,64]
        [--criteria latent-diff:0.03,kl:1e-3,...] [--examples 256] [--max-steps 64]

Loads the run's newest checkpoint and runs the report's depth sweep (`huginn.train.report`) once
per criterion: for each difficulty, the mean core steps per answer and the accuracy with that exit
(at most --max-steps steps), next to the fixed-depth accuracy at --max-steps. A criterion finds the
depth when its steps grow with difficulty and its accuracy matches the fixed depth's; one that
exits while a hard problem's prediction still sits near chance loses accuracy there.
The default criteria are every one in `huginn.infer.exits` at its published threshold, plus tighter
ones.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from huginn.infer.exits import parse_exit
from huginn.train import report
from huginn.train.export import load_run_model

CRITERIA = (
    "latent-diff:0.03,latent-diff:0.01,cosine:1e-3,kl:1e-3,kl:1e-4,minp-kl:1e-5,"
    "entropy-diff:1e-3,entropy-diff:1e-4,argmax-stability:5,argmax-stability:8"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--difficulties", default="1,4,8,16,24,32,48,64")
    ap.add_argument("--criteria", default=CRITERIA)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--max-steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, cfg = load_run_model(Path(a.run))
    data = cfg["data"]
    trained = (data["difficulty"][0], data["difficulty"][1])
    ks = [int(k) for k in a.difficulties.split(",")]
    train_mean = cfg["depth"]["mean_recurrence"] or model.model_config.mean_recurrence
    print(f"{a.run}: exit criteria, {a.examples} problems per difficulty, max_steps {a.max_steps}")
    print(f"{'criterion':<22}" + "".join(f"{f'k={k}':>13}" for k in ks) + "   (mean steps / accuracy %)")
    fixed = None
    for spec in a.criteria.split(","):
        name, threshold = parse_exit(spec)
        t0 = time.perf_counter()
        s = report.depth_sweep(
            model,
            data["task"],
            ks,
            trained,
            [a.max_steps],
            train_mean,
            name,
            None if threshold == "auto" else float(threshold),
            a.examples,
        )
        fixed = fixed or [row[-1] for row in s.accuracy]
        cells = "".join(f"{m:6.1f} /{100 * x:5.1f}" for m, x in zip(s.exit_mean_steps, s.exit_accuracy, strict=True))
        print(f"{spec:<22}{cells}   {time.perf_counter() - t0:.0f} s")
    assert fixed is not None
    print(f"{f'fixed {a.max_steps}':<22}" + "".join(f"{a.max_steps:6d} /{100 * x:5.1f}" for x in fixed))


if __name__ == "__main__":
    main()
