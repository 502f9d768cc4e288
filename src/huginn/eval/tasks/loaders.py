"""Local datasets of the offline tasks (lm-eval's `custom_dataset: !function loaders.NAME`).

lm-eval calls these with the task's `metadata` and `dataset_kwargs` as keywords. Files are read from
this package's `data/` folder, or, for GSM8K, from a path: `--metadata '{"path": "FILE.jsonl"}'`
(lm-eval, `huginn eval`) or the environment variable HUGINN_GSM8K; the default is a small
self-written sample in the GSM8K format (`question`, `answer` ending in `#### N`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
GSM8K_SAMPLE = DATA / "gsm8k_sample.jsonl"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-empty line; bad files are one-line errors."""
    from huginn.errors import HuginnError

    file = Path(path)
    if not file.is_file():
        raise HuginnError(f"{file} does not exist; pass a JSONL file (one JSON object per line)")
    rows = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise HuginnError(f"{file} line {n} is not JSON ({err.msg}); fix the line") from None
    if not rows:
        raise HuginnError(f"{file} holds no rows; pass a JSONL file with at least one object")
    return rows


def _dataset(rows: list[dict[str, Any]], split: str):
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def parity(**_: Any):
    """The held-out parity problems (`make_data.py`), as the split `test`."""
    return _dataset(read_jsonl(DATA / "parity.jsonl"), "test")


def gsm8k(path: str | None = None, **_: Any):
    """GSM8K-format rows (`question`, `answer`) from `path`, $HUGINN_GSM8K or the sample, as `test`."""
    from huginn.errors import HuginnError

    file = path or os.environ.get("HUGINN_GSM8K") or GSM8K_SAMPLE
    rows = read_jsonl(file)
    bad = [i for i, r in enumerate(rows, 1) if not {"question", "answer"} <= set(r)]
    if bad:
        raise HuginnError(f"{file} row {bad[0]} lacks 'question' or 'answer'; use the GSM8K JSONL format")
    return _dataset([{"question": r["question"], "answer": r["answer"]} for r in rows], "test")
