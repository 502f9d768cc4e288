"""The vLLM plugin: registers huginn's architectures with vLLM's model registry.

vLLM calls `register()` in every process it starts (engine, workers) through the entry point

    [project.entry-points."vllm.general_plugins"]
    huginn = "huginn.serve.plugin:register"

after which `vllm serve CHECKPOINT` and `vllm.LLM(CHECKPOINT)` load Huginn-format checkpoints
(published and retrofitted: `architectures: ["RavenForCausalLM"]`, model_type `huginn_raven`)
without remote code. `register()` is idempotent and imports vLLM only when called; importing this
module imports neither vLLM nor transformers. The model class itself is registered by name and
imported by vLLM when it builds the model (`huginn.serve.vllm_model`).
"""

from __future__ import annotations

import importlib

# the architecture names huginn checkpoints carry in config.json (`RavenForCausalLM`, as published;
# `HuginnForCausalLM` is the package's alias of the same class)
ARCHITECTURES = ("RavenForCausalLM", "HuginnForCausalLM")
MODEL_CLASS = "huginn.serve.vllm_model:HuginnForCausalLMvLLM"

_registered = False


def register() -> None:
    """Register huginn's config with transformers and its model with vLLM (once per process)."""
    global _registered
    if _registered:
        return
    # RavenConfig with transformers' AutoConfig (model_type "huginn_raven"), so vLLM's config
    # loading reads config.json with our class instead of asking for remote code
    importlib.import_module("huginn.hf")
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, MODEL_CLASS)
    _registered = True


def is_registered() -> bool:
    return _registered
