"""Evaluation across depth: the lm-eval model `huginn`, depth and exit-threshold sweeps, loss by depth.

Importing this package registers the model `huginn` with lm-eval (lazily: lm-eval resolves
`huginn.eval.lm:HuginnLM` when a run asks for it); `python -m huginn.eval ARGS` is lm-eval's own
command line with the model registered (lm-eval has no plugin discovery), so every lm-eval flag works.

    lm.py     HuginnLM: loglikelihood, loglikelihood_rolling, generate_until at a chosen depth
    score.py  log-likelihoods of continuations (shared contexts computed once), per-row exits
    sweep.py  every task at every depth (and exit threshold): results JSON, results.csv, depth.png
    progress.py  the sweep's one progress display (rate, ETA)
    tasks/    offline lm-eval tasks (the `huginn_tasks` group, Huginn's GSM8K protocol) and their data

It sits above `huginn.infer` and `huginn.model`; nothing below imports it. Needs the `eval` extra
(lm-eval); `huginn.eval.TASKS_DIR` is the folder of the shipped task YAMLs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_NAME = "huginn"


def register() -> None:
    """Register the lm-eval model `huginn` (idempotent); a missing lm-eval is a one-line error."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:
        from huginn.errors import HuginnError

        raise HuginnError("lm-eval is not installed; install the extra: pip install 'huginn[eval]'") from None
    if MODEL_NAME not in set(model_registry.keys()):
        model_registry.register(MODEL_NAME, target="huginn.eval.lm:HuginnLM")


with contextlib.suppress(Exception):  # lm-eval absent: `huginn eval` reports it when it runs
    register()
