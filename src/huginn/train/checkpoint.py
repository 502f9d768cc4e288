"""Atomic, resumable checkpoints of a run directory with torch.distributed.checkpoint (DCP).

    RUN/config.yaml                 the resolved job config (a re-run must match it to resume)
    RUN/model_config.json           the model shape (export reads it)
    RUN/checkpoints/step_000100/    DCP shards of {"model", "optim"} + trainer_rank{r}.pt (step, data, RNG)
    RUN/checkpoints/latest          the name of the newest complete checkpoint

A checkpoint is written to a hidden `.step_N.tmp` folder and renamed only when every rank has
finished, then `latest` is replaced atomically: a run killed mid-write keeps the previous checkpoint.
Model and optimizer state go through `get_state_dict`/`set_state_dict`, which handle DDP and FSDP2
(sharded) alike and reload in place. Non-goal: converting to the published format (`export.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from huginn.errors import HuginnError
from huginn.train.parallel import Dist, barrier

# plain (one-process) runs save through DCP too; its "assuming a single process" notice is expected
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def ckpt_root(run: Path) -> Path:
    return Path(run) / "checkpoints"


def latest(run: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = ckpt_root(run)
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if path.is_dir():
            return path
    done = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    return done[-1] if done else None


def save(
    run: Path, step: int, model: nn.Module, optimizers: list, trainer: dict[str, Any], d: Dist, keep: int = 2
) -> Path:
    root = ckpt_root(run)
    name = f"step_{step:07d}"
    tmp, final = root / f".{name}.tmp", root / name
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier(d)
    msd, osd = get_state_dict(model, optimizers)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    torch.save(trainer, tmp / f"trainer_rank{d.rank}.pt")
    barrier(d)
    if d.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, root / "latest")
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


# what reading a truncated or otherwise damaged file raises (DCP wraps each rank's error in a
# CheckpointException, which is a BaseException)
DAMAGED = (CheckpointException, EOFError, RuntimeError, OSError, ValueError, AssertionError, pickle.UnpicklingError)


def _dcp_fallback_notes(record: logging.LogRecord) -> bool:
    # DCP logs each failed metadata read with its traceback (on the root logger) before raising;
    # the raised error becomes the one-line message, so those notes are held back
    return not (record.module == "state_dict_loader" and record.levelno == logging.WARNING)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the errors of reading a damaged checkpoint into one line (see `damaged`)."""
    root = logging.getLogger()
    root.addFilter(_dcp_fallback_notes)
    try:
        yield
    except DAMAGED as err:
        raise damaged(path, err) from None
    finally:
        root.removeFilter(_dcp_fallback_notes)


def damaged(path: Path, err: BaseException) -> HuginnError:
    """The one-line error for an unreadable checkpoint folder: which one, and how to get past it."""
    path = Path(path)
    older = sorted(p for p in path.parent.glob("step_*") if p.is_dir() and p.name < path.name)
    after = f"fall back to {older[-1].name}" if older else "start over (it is the only checkpoint)"
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]  # (exception, traceback) of the first failing rank
    text = str(err).strip()
    cause = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    cause = cause if len(cause) <= 100 else cause[:99] + "…"
    return HuginnError(f"checkpoint {path} is damaged ({cause}); delete that folder to {after}, or start a new --out")


def load(path: Path, model: nn.Module, optimizers: list, d: Dist) -> dict[str, Any]:
    """Load a checkpoint into `model` and `optimizers` in place; returns this rank's trainer state."""
    trainer_file = path / f"trainer_rank{d.rank}.pt"
    if not trainer_file.is_file():
        raise HuginnError(
            f"checkpoint {path} was written by a run with a different world size (no {trainer_file.name}); resume with the same number of processes"
        )
    msd, osd = get_state_dict(model, optimizers)
    state: dict[str, Any] = {"model": msd, "optim": osd}
    with _reading(path):
        dcp.load(state, checkpoint_id=str(path))
        trainer = torch.load(trainer_file, weights_only=False)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return trainer


def load_model_only(path: Path, model: nn.Module) -> None:
    """Weights only (export, evaluation), on one process."""
    msd = get_state_dict(model, [], options=StateDictOptions())[0]
    with _reading(path):
        dcp.load({"model": msd}, checkpoint_id=str(path))
    set_state_dict(model, [], model_state_dict=msd, optim_state_dict={})


def write_run_files(run: Path, config_yaml: str, model_config: dict[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(config_yaml)
    (run / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n")


def check_resumable(run: Path, config: dict[str, Any], announce: bool = True) -> bool:
    """True when `run` holds a compatible run to resume; False when it is new or empty.

    A run resumes only under the same config, except `train.max_steps` / `train.stop_after` (to
    extend or split a run) and logging / checkpoint cadence. A run folder without any checkpoint
    (a run aborted before its first save) locks nothing: it starts fresh, its config.yaml is
    replaced, and (with `announce`) one line on stderr says so.
    """
    import yaml

    run = Path(run)
    if not run.exists() or not any(run.iterdir()):
        return False
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise HuginnError(f"{run} exists and is not a huginn run directory (no config.yaml); pick a new --out")
    if latest(run) is None:
        if announce:
            print(f"huginn: {run} holds no checkpoint yet (an aborted run?); starting it fresh", file=sys.stderr)
        return False
    old = yaml.safe_load(cfg_file.read_text())
    free = {("train", "max_steps"), ("train", "stop_after"), ("log", None), ("checkpoint", None), ("eval", None)}
    diffs = []
    for section, values in config.items():
        for key, value in values.items():
            if (section, key) in free or (section, None) in free:
                continue
            if old.get(section, {}).get(key) != value:
                diffs.append(f"{section}.{key}")
    if diffs:
        raise HuginnError(
            f"{run} holds a run with a different config ({', '.join(diffs[:4])} differ); resume with the same config or pick a new --out"
        )
    return True
