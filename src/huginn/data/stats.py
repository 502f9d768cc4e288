"""Token statistics of a packed dataset, measured from the rows themselves (not the manifest).

Counts rows, tokens (ids that are not padding), documents (end-of-text ids), padding, ids used,
the id frequency top list, and compares the measured totals with the manifest's.

Non-goals: text-level statistics (language, duplication); plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dataset_stats(dataset: str | Path, *, tokenizer_dir: str | Path | None = None, top: int = 10) -> dict:
    """Stream every row group once; memory is one row group plus a vocabulary-sized histogram."""
    import pyarrow.parquet as pq

    from huginn.data.packing import COLUMN, table_to_rows
    from huginn.data.tokenize import read_manifest

    m = read_manifest(dataset)
    tok = m["tokenizer"]
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
    names = None
    if tokenizer_dir is not None:
        from huginn.data.tokenizer import load_tokenizer

        t = load_tokenizer(tokenizer_dir)
        names = [t.id_to_token(int(i)) for i in order]
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
    top = ", ".join(f"{t.get('token', t['id'])!r}:{t['count']:,}" for t in s["top"])
    lines.append(f"  top ids: {top}")
    return "\n".join(lines)
