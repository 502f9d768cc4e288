"""Token statistics of a packed dataset, measured from the rows themselves (not the manifest).

Counts rows, tokens (ids that are not padding), documents (end-of-text ids), padding, ids used,
the id frequency top list, and compares the measured totals with the manifest's. Names of the
top ids come from a tokenizer the caller passes; it is checked against the tokenizer the
manifest records: another vocabulary size or other special-token ids is an error (the names
would be meaningless), another tokenizer.json with the same layout is a warning in `warnings`.

Non-goals: text-level statistics (language, duplication); plots.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from huginn.errors import HuginnError


def check_tokenizer(dataset: str | Path, recorded: dict, tokenizer_dir: str | Path, tok) -> list[str]:
    """Compare a loaded tokenizer with the one a manifest records (`recorded`); return warnings.

    Raises a one-line `HuginnError` when the ids cannot be decoded meaningfully with it.
    """
    from huginn.data.tokenizer import tokenizer_ids

    fix = f"pass the tokenizer {dataset} was packed with ({recorded.get('path', '?')})"
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != recorded["vocab_size"]:
        raise HuginnError(
            f"--tokenizer {tokenizer_dir} has {size} ids but {dataset} was packed with a {recorded['vocab_size']}-id tokenizer; {fix}"
        )
    ids = tokenizer_ids(tok)
    for key in ("bos", "eos", "pad"):
        if recorded.get(key) is not None and ids[key] != recorded[key]:
            raise HuginnError(
                f"--tokenizer {tokenizer_dir} has {key} id {ids[key]} but {dataset} was packed with {key} id {recorded[key]}; {fix}"
            )
    sha = hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()
    if sha != recorded.get("sha256"):
        return [
            f"--tokenizer {tokenizer_dir} is not the tokenizer {dataset} was packed with (same size and special ids, "
            f"other tokenizer.json): token names may be wrong; {fix}"
        ]
    return []


def dataset_stats(dataset: str | Path, *, tokenizer_dir: str | Path | None = None, top: int = 10) -> dict:
    """Statistics of one packed dataset: the `top` most frequent ids (0: none), named with
    `tokenizer_dir` if given (see `check_tokenizer`). Streams every row group once; memory is one
    row group plus a vocabulary-sized histogram."""
    import pyarrow.parquet as pq

    from huginn.data.packing import COLUMN, table_to_rows
    from huginn.data.tokenize import read_manifest

    if top < 0:
        raise HuginnError(f"--top must be 0 or more, got {top}")

    m = read_manifest(dataset)
    tok = m["tokenizer"]
    decoder = None
    warnings: list[str] = []
    if tokenizer_dir is not None:  # checked before the (long) pass over the data
        from huginn.data.tokenizer import load_tokenizer

        decoder = load_tokenizer(tokenizer_dir)
        warnings = check_tokenizer(dataset, tok, tokenizer_dir, decoder)
    hist = np.zeros(tok["vocab_size"], np.int64)
    rows = 0
    for f in m["files"]:
        pf = pq.ParquetFile(Path(dataset) / f["name"])
        for g in range(pf.metadata.num_row_groups):
            ids = table_to_rows(pf.read_row_group(g, columns=[COLUMN]))
            rows += len(ids)
            hist += np.bincount(ids.reshape(-1), minlength=len(hist))[: len(hist)]
    pad, eos, bos = tok["pad"], tok["eos"], tok["bos"]
    tokens = int(hist.sum() - hist[pad])
    docs = int(hist[eos])
    order = np.argsort(-hist, kind="stable")[:top]
    names = [decoder.id_to_token(int(i)) for i in order] if decoder is not None else None
    return {
        "dataset": str(dataset),
        "seq_len": m["seq_len"],
        "files": len(m["files"]),
        "rows": rows,
        "tokens": tokens,
        "documents": docs,
        "mean_document_tokens": tokens / docs if docs else None,
        "bos": int(hist[bos]) if bos is not None else None,
        "pad": int(hist[pad]),
        "pad_fraction": float(hist[pad] / max(1, rows * m["row_len"])),
        "ids_used": int((hist > 0).sum()),
        "vocab_size": tok["vocab_size"],
        "top": [
            {"id": int(i), "count": int(hist[i]), **({"token": names[k]} if names else {})} for k, i in enumerate(order)
        ],
        "sources": m.get("sources", {}),
        "matches_manifest": rows == m["rows"] and tokens == m["tokens"],
        "warnings": warnings,
    }


def format_stats(s: dict) -> str:
    """A short human-readable report."""
    lines = [
        f"{s['dataset']}: {s['rows']:,} rows x {s['seq_len'] + 1} ids in {s['files']} files",
        f"  tokens {s['tokens']:,}  documents {s['documents']:,}  mean document {s['mean_document_tokens'] or 0:.1f} tokens",
        f"  padding {s['pad']:,} ids ({100 * s['pad_fraction']:.3f}%)  ids used {s['ids_used']:,} of {s['vocab_size']:,}"
        f"  manifest {'ok' if s['matches_manifest'] else 'MISMATCH'}",
    ]
    for name, src in s["sources"].items():
        lines.append(f"  source {name}: {src['rows']:,} rows, {src['tokens']:,} tokens")
    if s["top"]:
        top = ", ".join(f"{t.get('token', t['id'])!r}:{t['count']:,}" for t in s["top"])
        lines.append(f"  top ids: {top}")
    return "\n".join(lines)
