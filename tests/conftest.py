"""Shared test helpers: the reference fixture and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# before torch loads, so that subprocesses the tests start (`python -m huginn ...`) inherit it too
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

# tiny models: one thread is as fast as two, and immune to oversubscription when pytest-xdist runs
# one worker per core (OpenMP threads that spin-wait on a busy core cost milliseconds per op)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# The reference fixture is data kept in the repository (a copy of shared/fixtures/), so the suite
# runs wherever it is cloned; HUGINN_FIXTURE points elsewhere. A missing fixture fails, never skips.
FIXTURE = Path(os.environ.get("HUGINN_FIXTURE", REPO / "tests" / "fixtures" / "huginn-reference-tiny"))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "config.json").exists():
        pytest.fail(f"reference fixture not found at {FIXTURE}: restore tests/fixtures/ or set HUGINN_FIXTURE")
    return FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def reference_model(fixture_dir):
    from transformers import AutoModelForCausalLM

    import huginn  # noqa: F401  (registers the Auto classes)

    return AutoModelForCausalLM.from_pretrained(str(fixture_dir)).eval()


def tiny_model(seed: int = 0, **overrides):
    """A randomly initialised RavenForCausalLM of the `tiny` shape (with optional overrides)."""
    from huginn import RavenConfig, RavenForCausalLM, named_shape

    torch.manual_seed(seed)
    cfg = RavenConfig.from_model_config(named_shape("tiny", **overrides))
    return RavenForCausalLM(cfg).eval()


def run_huginn(*args: str, check: bool = True, timeout: int = 600, cwd=None, env_extra: dict | None = None):
    """Run `python -m huginn ARGS` on this checkout's sources; returns the CompletedProcess."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "huginn", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_main(argv: list[str], capsys) -> tuple[object, str, str]:
    """(exit code, stdout, stderr) of `huginn ARGV`, in this process (no interpreter start-up)."""
    from huginn.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
