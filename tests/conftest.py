"""Shared test helpers: the reference fixture and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("HUGINN_FIXTURE", REPO.parent / "shared" / "fixtures" / "huginn-reference-tiny"))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "config.json").exists():
        pytest.skip(f"reference fixture not found at {FIXTURE} (set HUGINN_FIXTURE)")
    return FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def reference_model(fixture_dir):
    import huginn  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(fixture_dir)).eval()


def tiny_model(seed: int = 0, **overrides):
    """A randomly initialised RavenForCausalLM of the `tiny` shape (with optional overrides)."""
    from huginn import RavenConfig, RavenForCausalLM, named_shape

    torch.manual_seed(seed)
    cfg = RavenConfig.from_model_config(named_shape("tiny", **overrides))
    return RavenForCausalLM(cfg).eval()
