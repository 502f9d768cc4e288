"""huginn: depth-recurrent ("looped") language models of the Huginn-0125 family.

`import huginn` registers the Huginn-0125 model type (`huginn_raven`) with transformers' Auto
classes, so `AutoModelForCausalLM.from_pretrained(dir)` needs no remote code. It does so without
importing transformers itself (2-3 s): if transformers is loaded already the classes register now,
otherwise the moment it is imported. So `import huginn.model` (plain torch) never pays for
transformers, and the package's names below load on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_EXPORTS = {
    "SHAPES": "huginn.config",
    "ModelConfig": "huginn.config",
    "named_shape": "huginn.config",
    "HuginnError": "huginn.errors",
    "RecurrentLM": "huginn.model.recurrent",
    "RecurrentOutput": "huginn.model.recurrent",
    "HuginnConfig": "huginn.hf",
    "HuginnForCausalLM": "huginn.hf",
    "RavenConfig": "huginn.hf",
    "RavenForCausalLM": "huginn.hf",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'huginn' has no attribute {name!r}")


class _RegisterWhenLoaded(importlib.abc.Loader):
    """Runs transformers' own loader, then registers huginn's classes with its Auto classes."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        importlib.import_module("huginn.hf")  # registers on import


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    """Finds `transformers` as usual, wrapping its loader in `_RegisterWhenLoaded`; one use."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterWhenLoaded(spec.loader)
        return spec


def _register_with_transformers() -> None:
    if "transformers" in sys.modules:
        importlib.import_module("huginn.hf")
    elif not any(isinstance(f, _TransformersImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())


_register_with_transformers()
