"""`huginn data ...` (issue 16): several inputs after one --input, and user mistakes that used to
give silent wrong results or tracebacks now fail in one line and leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from huginn.cli.data import _LineProgress, spread_values
from huginn.data import tokenize as tk
from huginn.errors import HuginnError


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `huginn ARGS` in this process: (exit code, stdout, stderr)."""
    from huginn.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code: int, err: str, *expect: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("tokenize: ")]  # progress lines
    assert code == 2 and len(lines) == 1 and lines[0].startswith("huginn: error:"), err
    for e in expect:
        assert e in lines[0], lines[0]


def tokenize_args(tokenizer_dir: str, out: Path, *extra: str) -> list[str]:
    return ["data", "tokenize", "--tokenizer", tokenizer_dir, "--seq-len", "63", "--out", str(out), *extra]


def write_bad_utf8(path: Path) -> None:
    """A text column whose row 2 is not UTF-8 (pyarrow writes it unchecked through a binary view)."""
    raw = pa.array([b"fine text", b"also fine", b"broken \xff\xfe bytes", b"more"], pa.binary())
    pq.write_table(pa.table({"text": raw.view(pa.string())}), path)


@pytest.fixture(scope="module")
def packed(corpus, tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "p"
    tk.tokenize_parquet([corpus["files"][1]], tokenizer_dir, out, seq_len=63)
    return out


# ---------------------------------------------------------------- several inputs after one --input


def test_spread_values():
    many = ["--input"]
    assert spread_values(["--input", "a", "b", "--out", "o", "c"], many) == [
        "--input",
        "a",
        "--input",
        "b",
        "--out",
        "o",
        "c",
    ]
    assert spread_values(["--input=a", "b"], many) == ["--input=a", "--input", "b"]
    assert spread_values(["--input", "a", "--", "b"], many) == ["--input", "a", "--", "b"]
    assert spread_values(["--input", "a", "-h"], many) == ["--input", "a", "-h"]
    assert spread_values(["--out", "a", "b"], many) == ["--out", "a", "b"]


@pytest.mark.parametrize("form", ["one_flag", "glob", "repeated", "mixed"])
def test_tokenize_takes_several_inputs(form, corpus, tokenizer_dir, tmp_path, capsys):
    a, b = corpus["files"]
    inputs = {
        "one_flag": ["--input", a, b],
        "glob": ["--input", str(corpus["dir"] / "*.parquet")],  # quoted in a shell: huginn expands it
        "repeated": ["--input", a, "--input", b],
        "mixed": ["--input", a, "--text-column", "text", "--input", b],
    }[form]
    code, _, err = cli(capsys, *tokenize_args(tokenizer_dir, tmp_path / "p", *inputs))
    assert code == 0, err
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["documents"] == 500 and set(m["sources"]) == {"a", "b"}


def test_train_tokenizer_takes_several_inputs(corpus, tmp_path, capsys):
    a, b = corpus["files"]
    code, out, err = cli(
        capsys, "data", "train-tokenizer", "--input", a, b, "--vocab-size", "300", "--out", str(tmp_path / "t")
    )
    assert code == 0 and "wrote" in out, err
    code, _, err = cli(
        capsys, "data", "train-tokenizer", "--input", str(corpus["dir"] / "?.parquet"), "--out", str(tmp_path / "t2")
    )
    assert code == 0 and (tmp_path / "t2" / "tokenizer.json").is_file(), err


@pytest.mark.parametrize("cmd", ["tokenize", "train-tokenizer"])
def test_glob_matching_nothing(cmd, corpus, tokenizer_dir, tmp_path, capsys):
    pattern = str(tmp_path / "nothing" / "*.parquet")
    args = (
        tokenize_args(tokenizer_dir, tmp_path / "o", "--input", corpus["files"][0], pattern)
        if cmd == "tokenize"
        else ["data", "train-tokenizer", "--input", corpus["files"][0], pattern, "--out", str(tmp_path / "o")]
    )
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, f"--input {pattern} matches no files")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- counts that made no sense


@pytest.mark.parametrize(
    "case",
    [
        "tokenize --rows-per-file 0",
        "tokenize --row-group-rows 0",
        "tokenize --seq-len 0",
        "tokenize --workers 0",
        "train-tokenizer --min-frequency -1",
        "train-tokenizer --min-frequency 0",
        "stats --top -1",
        "mix --rows-per-file 0",
        "mix --seed -1",
        "shuffle --rows-per-file -2",
        "shuffle --seed -1",
    ],
)
def test_counts_out_of_range(case, corpus, tokenizer_dir, packed, tmp_path, capsys):
    cmd, flag, value = case.split()
    out = tmp_path / "o"
    args = {
        "tokenize": tokenize_args(tokenizer_dir, out, "--input", corpus["files"][1]),
        "train-tokenizer": ["data", "train-tokenizer", "--input", corpus["files"][1], "--out", str(out)],
        "stats": ["data", "stats", str(packed)],
        "mix": ["data", "mix", "--source", str(packed), "--out", str(out)],
        "shuffle": ["data", "shuffle", "--input", str(packed), "--out", str(out)],
    }[cmd]
    code, _, err = cli(capsys, *args, flag, value)
    assert_one_line_error(code, err, flag, value)
    assert not out.exists()


def test_library_refuses_zero_counts(corpus, tokenizer_dir, packed, tmp_path):
    from huginn.data.mixing import Source, mix_sources
    from huginn.data.shuffle import shuffle_datasets
    from huginn.data.stats import dataset_stats

    with pytest.raises(HuginnError, match="--rows-per-file must be at least 1, got 0"):
        tk.tokenize_parquet([corpus["files"][1]], tokenizer_dir, tmp_path / "a", rows_per_file=0)
    with pytest.raises(HuginnError, match="--row-group-rows must be at least 1, got 0"):
        shuffle_datasets([packed], tmp_path / "b", row_group_rows=0)
    with pytest.raises(HuginnError, match="--seed must be 0 or more"):
        mix_sources([Source("p", str(packed))], tmp_path / "c", seed=-3)
    with pytest.raises(HuginnError, match="--top must be 0 or more"):
        dataset_stats(packed, top=-1)
    assert not any((tmp_path / d).exists() for d in "abc")
    assert dataset_stats(packed, top=0)["top"] == []


def test_mix_config_with_bad_numbers(packed, tmp_path, capsys):
    (tmp_path / "mix.yaml").write_text(f"sources:\n  p: {{path: {packed}}}\nval_fraction: lots\n")
    code, _, err = cli(capsys, "data", "mix", "--config", str(tmp_path / "mix.yaml"), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, "val_fraction 'lots' is not a number")
    (tmp_path / "mix.yaml").write_text(f"sources:\n  p: {{path: {packed}}}\nseed: -1\n")
    code, _, err = cli(capsys, "data", "mix", "--config", str(tmp_path / "mix.yaml"), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, "--seed must be 0 or more")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- stats with another tokenizer


def test_stats_checks_the_tokenizer(packed, tokenizer_dir, tmp_path, capsys):
    from huginn.data.tokenizer import train_tokenizer

    copy = tmp_path / "copy"
    shutil.copytree(tokenizer_dir, copy)  # the same tokenizer elsewhere: no warning
    code, out, err = cli(capsys, "data", "stats", str(packed), "--tokenizer", str(copy), "--json")
    assert code == 0 and err == "" and json.loads(out)[0]["warnings"] == []

    # same size and special ids, other merges: decodable, but the names are not the data's
    train_tokenizer(["zebra yak xylophone " * 20] * 20, 512, tmp_path / "other")
    code, out, err = cli(capsys, "data", "stats", str(packed), "--tokenizer", str(tmp_path / "other"))
    assert code == 0 and err.startswith("huginn: warning:") and len(err.strip().splitlines()) == 1, err
    assert "is not the tokenizer" in err and tokenizer_dir in err and "top ids" in out

    # another vocabulary: the ids mean nothing in it
    train_tokenizer(["zebra yak"] * 20, 300, tmp_path / "small")
    code, out, err = cli(capsys, "data", "stats", str(packed), "--tokenizer", str(tmp_path / "small"))
    assert_one_line_error(code, err, "has 300 ids", "512-id tokenizer")
    assert out == ""


# ---------------------------------------------------------------- no text, bad text


@pytest.mark.parametrize("values", [[None, None, None], ["", "", None]], ids=["all_null", "all_empty"])
def test_train_tokenizer_refuses_no_text(values, tmp_path, capsys):
    pq.write_table(pa.table({"text": pa.array(values, pa.string())}), tmp_path / "blank.parquet")
    code, _, err = cli(
        capsys, "data", "train-tokenizer", "--input", str(tmp_path / "blank.parquet"), "--out", str(tmp_path / "t")
    )
    assert_one_line_error(code, err, "no text to train on")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tokenize_invalid_utf8(workers, corpus, tokenizer_dir, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    write_bad_utf8(bad)
    out = tmp_path / "p"
    args = tokenize_args(tokenizer_dir, out, "--workers", workers, "--input", corpus["files"][1], str(bad))
    for _ in range(2):  # a rerun fails the same way, in one line
        code, _, err = cli(capsys, *args)
        assert_one_line_error(code, err, f"input {bad} has invalid UTF-8 in column 'text' at row 2")
        assert not out.exists(), "nothing partial (not even .progress/job.json) may stay"
    pq.write_table(pa.table({"text": ["fine text", "also fine", "mended", "more"]}), bad)
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["documents"] == 204


def test_train_tokenizer_invalid_utf8(corpus, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    write_bad_utf8(bad)
    args = ["data", "train-tokenizer", "--input", corpus["files"][1], str(bad), "--out", str(tmp_path / "t")]
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, f"input {bad} has invalid UTF-8 in column 'text' at row 2")
    assert not (tmp_path / "t").exists()
    pq.write_table(pa.table({"text": ["fine text", "also fine", "mended", "more"]}), bad)
    assert cli(capsys, *args)[0] == 0


# ---------------------------------------------------------------- --out that cannot be written


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file", "under_proc"])
@pytest.mark.parametrize("cmd", ["tokenize", "train-tokenizer", "mix", "shuffle"])
def test_unwritable_out(cmd, where, corpus, tokenizer_dir, packed, tmp_path, capsys, monkeypatch):
    import huginn.data.tokenizer as tokenizer_mod

    (tmp_path / "file").write_text("x")
    out = {"under_a_file": tmp_path / "file" / "o", "is_a_file": tmp_path / "file", "under_proc": Path("/proc/o")}[
        where
    ]

    def no_training(*a, **k):
        raise AssertionError("--out must be checked before training")

    monkeypatch.setattr(tokenizer_mod, "train_tokenizer", no_training)
    args = {
        "tokenize": tokenize_args(tokenizer_dir, out, "--input", corpus["files"][1]),
        "train-tokenizer": ["data", "train-tokenizer", "--input", corpus["files"][1], "--out", str(out)],
        "mix": ["data", "mix", "--source", str(packed), "--out", str(out)],
        "shuffle": ["data", "shuffle", "--input", str(packed), "--out", str(out)],
    }[cmd]
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, f"--out {out}")
    assert (tmp_path / "file").read_text() == "x"


# ---------------------------------------------------------------- interrupted tokenize


INTERRUPT = """
import os, signal, sys, time
from huginn.data import tokenize as tk

class Writer(tk.ShardWriter):  # the third unit is killed just after it made OUT/.tmp
    made = 0

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        Writer.made += 1
        if Writer.made == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

tk.ShardWriter = Writer
from huginn.cli import main
main(sys.argv[1:])
"""


def test_sigterm_leaves_no_tmp_and_resumes(corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "p"
    args = [*tokenize_args(tokenizer_dir, out, "--input", *corpus["files"]), "--rows-per-file", "16"]
    src = str(Path(tk.__file__).parents[2])
    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT, *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode not in (0, -signal.SIGTERM), proc.stderr[-2000:]
    assert not (out / ".tmp").exists(), "an interrupted tokenize must remove OUT/.tmp"
    assert len(list((out / ".progress").glob("unit-*.json"))) == 2 and not (out / "manifest.json").exists()
    code, _, err = cli(capsys, *args)  # the rerun resumes and finishes
    assert code == 0 and "resuming: 2 of" in err, err
    assert json.loads((out / "manifest.json").read_text())["documents"] == 500 and not (out / ".tmp").exists()


def test_stale_tmp_is_removed_on_resume(corpus, tokenizer_dir, tmp_path, monkeypatch):
    out = tmp_path / "p"
    real, seen = tk.run_unit, []

    def crashing(unit, settings, out_dir, *a, **k):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append((Path(out_dir) / ".tmp").exists())
        return real(unit, settings, out_dir, *a, **k)

    monkeypatch.setattr(tk, "run_unit", crashing)
    with pytest.raises(KeyboardInterrupt):
        tk.tokenize_parquet(corpus["files"], tokenizer_dir, out, seq_len=63)
    assert not (out / ".tmp").exists()
    (out / ".tmp").mkdir()  # as a `kill -9` would leave it
    (out / ".tmp" / "00002-0000.parquet.123").write_bytes(b"half")
    monkeypatch.setattr(tk, "run_unit", real)
    tk.tokenize_parquet(corpus["files"], tokenizer_dir, out, seq_len=63)
    assert not (out / ".tmp").exists() and (out / "manifest.json").is_file()


# ---------------------------------------------------------------- progress off a terminal


def test_progress_off_a_terminal_prints_periodic_lines(tokenizer_dir, tmp_path, capsys, monkeypatch):
    docs = [f"document {i} with a few words" for i in range(400)]
    pq.write_table(pa.table({"text": docs}), tmp_path / "many.parquet", row_group_size=5)
    monkeypatch.setattr(tk, "MIN_UNITS", 80)  # 80 units: 80 updates
    code, out, err = cli(
        capsys, *tokenize_args(tokenizer_dir, tmp_path / "p", "--input", str(tmp_path / "many.parquet"))
    )
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tokenize: ")]
    assert 1 <= len(lines) <= 21, err  # every 5% (or 10 s), never one line per unit
    assert lines[-1].startswith("tokenize: 80/80 units (100%)")
    assert "\x1b" not in err and "\r" not in err and out.startswith("wrote ")


def test_line_progress_prints_every_ten_seconds(capsys, monkeypatch):
    import huginn.cli.data as cli_data

    now = [0.0]
    monkeypatch.setattr(cli_data.time, "monotonic", lambda: now[0])
    p = _LineProgress("tokenize")
    p.begin(1000, 0)
    for _ in range(30):  # 3% in 30 updates, 1 s apart
        now[0] += 1.0
        p.advance()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[0].startswith("tokenize: 10/1000 units (1%)")
