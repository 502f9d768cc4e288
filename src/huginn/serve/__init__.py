"""Serving through vLLM: a model plugin written in vLLM's blocks, and the `huginn serve` front end.

- `options`: the serving options (depth, KV mode) read from a config and written as vLLM
  `hf_overrides`; imports neither vLLM nor transformers.
- `plugin`: `register()`, the `vllm.general_plugins` entry point (idempotent; imports vLLM only
  when vLLM calls it).
- `vllm_model`: the model in vLLM's layers (imports vLLM; loaded by vLLM through the registry).
- `server`: starts vLLM's OpenAI-compatible server, and offline batch generation through `vllm.LLM`.

This package sits above `huginn.infer`; nothing below imports it. Importing it imports nothing.
"""
