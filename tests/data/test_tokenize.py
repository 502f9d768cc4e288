"""parquet -> packed rows: lossless, bounded files, deterministic for any worker count, resumable,
and bad input fails with one line and no output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from huginn.data import tokenize as tk
from huginn.data.packing import table_to_rows

KW = dict(seq_len=31, rows_per_file=40, row_group_rows=16, unit_bytes=4000)


def read_rows(out: Path) -> list[np.ndarray]:
    m = json.loads((out / "manifest.json").read_text())
    return [table_to_rows(pq.read_table(out / f["name"])) for f in m["files"]]


def decode_documents(out: Path, tokenizer_dir: str) -> list[str]:
    """Decode every row back into documents (pads dropped, documents split at end-of-text)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    m = json.loads((out / "manifest.json").read_text())
    bos, eos, pad = (m["tokenizer"][k] for k in ("bos", "eos", "pad"))
    ids = np.concatenate([r.reshape(-1) for r in read_rows(out)])
    ids = ids[ids != pad]
    cuts = np.nonzero(ids == eos)[0]
    assert len(cuts) and cuts[-1] == len(ids) - 1, "the stream must end with a document end"
    docs = []
    for piece in np.split(ids, cuts + 1)[:-1]:
        assert piece[0] == bos and piece[-1] == eos
        docs.append(tok.decode(piece[1:-1].tolist(), skip_special_tokens=False))
    return docs


@pytest.fixture(scope="module")
def packed(corpus, tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "out"
    tk.tokenize_parquet(corpus["files"], tokenizer_dir, out, workers=1, **KW)
    return out


def test_lossless(packed, corpus, tokenizer_dir):
    # units keep input order, so the decoded stream is the documents in order
    # (null and empty rows have no tokens); literal "<|pad|>" in text survives as text
    assert decode_documents(packed, tokenizer_dir) == corpus["docs"]["a"] + corpus["docs"]["b"]


def test_rows_files_and_manifest(packed):
    m = json.loads((packed / "manifest.json").read_text())
    pad = m["tokenizer"]["pad"]
    assert m["documents"] == 500 and m["seq_len"] == 31 and m["row_len"] == 32
    assert set(m["sources"]) == {"a", "b"} and m["sources"]["b"]["documents"] == 200
    assert len(m["files"]) > 4 and not (packed / ".tmp").exists()
    for f, rows in zip(m["files"], read_rows(packed)):
        assert rows.shape == (f["rows"], 32) and f["rows"] <= 40
        assert not (rows[:-1] == pad).any(), "only the last row of a file may hold padding"
        assert f["tokens"] == int((rows != pad).sum())
        assert pq.ParquetFile(packed / f["name"]).metadata.num_row_groups == -(-f["rows"] // 16)
    assert m["rows"] == sum(f["rows"] for f in m["files"]) and m["tokens"] == sum(f["tokens"] for f in m["files"])


def test_same_bytes_for_any_worker_count(packed, corpus, tokenizer_dir, tmp_path):
    tk.tokenize_parquet(corpus["files"], tokenizer_dir, tmp_path / "w2", workers=2, **KW)
    names = sorted(p.name for p in packed.glob("*.parquet"))
    assert names == sorted(p.name for p in (tmp_path / "w2").glob("*.parquet"))
    for n in names:
        assert (packed / n).read_bytes() == (tmp_path / "w2" / n).read_bytes()


def test_resume_skips_finished_units(packed, corpus, tokenizer_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = tk.run_unit, []

    def crashing(unit, *a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted mid-job
        calls.append(unit.index)
        return real(unit, *a, **k)

    monkeypatch.setattr(tk, "run_unit", crashing)
    with pytest.raises(KeyboardInterrupt):
        tk.tokenize_parquet(corpus["files"], tokenizer_dir, out, workers=1, **KW)
    assert not (out / "manifest.json").exists() and not (out / ".tmp").exists()
    from huginn.data.loader import PackedLoader
    from huginn.errors import HuginnError

    with pytest.raises(HuginnError, match="unfinished tokenize job"):
        PackedLoader(out, 2)
    calls.clear()
    monkeypatch.setattr(tk, "run_unit", lambda unit, *a, **k: calls.append(unit.index) or real(unit, *a, **k))
    events = []
    tk.tokenize_parquet(corpus["files"], tokenizer_dir, out, workers=1, progress=events.append, **KW)
    assert events[0]["skipped"] == 3 and 0 not in calls and len(calls) == events[0]["units"] - 3
    for p in packed.glob("*.parquet"):
        assert p.read_bytes() == (out / p.name).read_bytes()


def test_other_settings_refuse_to_resume(packed, corpus, tokenizer_dir):
    from huginn.errors import HuginnError

    with pytest.raises(HuginnError, match="other inputs or settings"):
        tk.tokenize_parquet(corpus["files"], tokenizer_dir, packed, **{**KW, "seq_len": 63})


# ---------------------------------------------------------------- bad input through the CLI


def run_cli(args, capsys) -> tuple[int, str]:
    from huginn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", ["not_parquet", "missing_column", "empty", "no_such_file", "not_text"])
def test_bad_input(case, corpus, tokenizer_dir, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    col = "text"
    if case == "not_parquet":
        bad.write_text("this is not parquet\n")
    elif case == "missing_column":
        col = "content"
        bad = Path(corpus["files"][0])
    elif case == "empty":
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), bad)
    elif case == "not_text":
        pq.write_table(pa.table({"text": [1, 2]}), bad)
    out = tmp_path / "out"
    inputs = [corpus["files"][1], str(bad)] if case != "empty" else [str(bad)]
    args = [
        "data",
        "tokenize",
        "--tokenizer",
        tokenizer_dir,
        "--seq-len",
        "15",
        "--out",
        str(out),
        "--text-column",
        col,
    ]
    for i in inputs:
        args += ["--input", i]
    code, err = run_cli(args, capsys)
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("huginn: error:")
    expect = {
        "not_parquet": "not a readable parquet file",
        "missing_column": "no column 'content'; available columns: text",
        "empty": "has no rows",
        "no_such_file": "does not exist",
        "not_text": "not text",
    }[case]
    assert expect in err
    assert not out.exists(), "bad input must leave no output behind"


def test_bad_tokenizer_dir(corpus, tmp_path, capsys):
    code, err = run_cli(
        ["data", "tokenize", "--tokenizer", str(tmp_path), "--input", corpus["files"][0], "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "no tokenizer.json" in err and not (tmp_path / "o").exists()


def test_cli_train_tokenizer_and_tokenize(corpus, tmp_path, capsys):
    from huginn.cli import main

    main(
        ["data", "train-tokenizer", "--input", corpus["files"][1], "--vocab-size", "300", "--out", str(tmp_path / "t")]
    )
    main(
        [
            "data",
            "tokenize",
            "--tokenizer",
            str(tmp_path / "t"),
            "--input",
            f"books={corpus['files'][1]}",
            "--seq-len",
            "64",
            "--out",
            str(tmp_path / "p"),
            "--workers",
            "2",
        ]
    )
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["documents"] == 200 and list(m["sources"]) == ["books"] and m["tokenizer"]["vocab_size"] == 300
    assert not [p for p in os.listdir(tmp_path / "p") if p.endswith(".tmp")]


def test_single_machine_path_does_not_import_datatrove():
    import subprocess
    import sys

    code = (
        "import sys, huginn.data.tokenize, huginn.data.loader, huginn.data.mixing, huginn.data.shuffle, huginn.cli.data; "
        "sys.exit(any(m.split('.')[0] == 'datatrove' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2] / "src").returncode == 0
