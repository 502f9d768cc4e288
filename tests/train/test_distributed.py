"""2 processes (torchrun, gloo, CPU) give the same losses as 1 process at the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import TINY, losses

from huginn.train.config import load_config
from huginn.train.loop import train

SRC = str(Path(__file__).resolve().parents[2] / "src")


def torchrun(out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    args = [a for item in [*TINY, *extra] for a in ("--set", item)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        "-m",
        "huginn",
        "train",
        "--out",
        str(out),
        "--max-steps",
        "4",
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.distributed
@pytest.mark.parametrize("kind,optim", [("ddp", "muon"), ("fsdp", "ellis-adam")])
def test_two_processes_equal_one(tmp_path, kind, optim):
    extra = [f"parallel.kind={kind}", f"optim.name={optim}", "train.micro_batch_size=2"]
    one = train(load_config(None, [*TINY, *extra], **{"train.max_steps": 4}), tmp_path / "one")
    proc = torchrun(tmp_path / "two", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-3 * abs(a[step]), (step, a[step], b[step])
    # resuming under torchrun picks up the sharded checkpoint
    assert {p.name for p in (tmp_path / "two" / "checkpoints" / "step_0000004").iterdir()} >= {
        "trainer_rank0.pt",
        "trainer_rank1.pt",
    }
    for r, v in one.scaling.items():
        assert (
            abs(
                v - float(__import__("json").loads((tmp_path / "two" / "scaling.json").read_text())["val_loss"][str(r)])
            )
            <= 1e-3 * v
        )
