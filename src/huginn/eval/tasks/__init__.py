"""Offline lm-eval tasks shipped with huginn (YAML + local data; no hub download).

- `huginn_tasks` (group): `huginn_parity_choice` (multiple choice: the parity of a bit string, "0" or
  "1" after `=`) and `huginn_parity_answer` (generative: the same problems, the answer generated and
  exact-matched), on held-out strings of 1-64 bits from `huginn.train.tasks`: the built-in training
  default (`make run`) learns them, so its depth effect shows through `huginn eval`.
- `huginn_gsm8k_cot`: Huginn-0125's GSM8K protocol (lm-eval's gsm8k_cot: 8-shot chain of thought,
  strict and flexible match) on GSM8K-format JSONL from a local file (`loaders.gsm8k`).

`make_data.py` writes `data/parity.jsonl` (checked in; a test checks it is what the generator writes).
"""
