"""Resolve "a checkpoint directory or a named shape" to a `ModelConfig`, with one-line errors.

Used by commands that accept either (`huginn info`, `huginn generate`, ...). Reading a config does
not load weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from huginn.config import SHAPES, ModelConfig, named_shape
from huginn.errors import HuginnError


def read_checkpoint_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of a published-format checkpoint directory (its config.json)."""
    path = Path(path)
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.exists():
        raise HuginnError(
            f"{path} is not a checkpoint directory (no config.json) nor a named shape ({', '.join(SHAPES)})"
        )
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HuginnError(f"{cfg_file} is not valid JSON ({err})") from None
    model_type = raw.get("model_type")
    if model_type != "huginn_raven":
        raise HuginnError(f"unknown model_type {model_type!r} in {cfg_file}; huginn reads 'huginn_raven' checkpoints")
    from huginn.hf.configuration import RavenConfig

    return RavenConfig(**{k: v for k, v in raw.items() if k != "model_type"}).to_model_config()


def resolve_model_config(checkpoint_or_shape: str) -> tuple[ModelConfig, str]:
    """(config, description) for a named shape or a checkpoint directory."""
    if checkpoint_or_shape in SHAPES:
        return named_shape(checkpoint_or_shape), f"named shape {checkpoint_or_shape}"
    return read_checkpoint_config(checkpoint_or_shape), f"checkpoint {checkpoint_or_shape}"
