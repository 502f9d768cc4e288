"""`huginn analyze` on the reference fixture (byte-level tokenizer): every PNG, report.html and the
JSON are written, the numbers agree with the metrics, and mistakes are one line with nothing left."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from huginn.analysis import metrics
from huginn.analysis.figures import FIGURES
from tests.analysis.analysis_helpers import byte_tokenizer
from tests.conftest import run_main

TEXT = "The cat sat on the mat."
FILES = sorted([*(f"{name}.png" for name in FIGURES), "report.html", "analysis.json"])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return byte_tokenizer(tmp_path_factory.mktemp("bytes"))


def _analyze(fixture_dir, tokenizer_dir, out, capsys, *extra):
    args = ["analyze", str(fixture_dir), TEXT, "--tokenizer", str(tokenizer_dir), "--out", str(out), *extra]
    return run_main(args, capsys)


def test_analyze_writes_every_figure_the_report_and_the_json(fixture_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, err = _analyze(fixture_dir, tokenizer_dir, out, capsys, "--num-steps", "12", "--tokens", "0,-1")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == FILES
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the summary: counts of each class and mean steps to converge
    data = json.loads((out / "analysis.json").read_text())
    counts = data["summary"]["classes"]
    assert sum(counts.values()) == len(TEXT) == len(data["tokens"])
    assert f"{len(TEXT)} tokens, 12 core steps" in stdout
    assert "classes: " + ", ".join(f"{counts[k]} {k}" for k in metrics.KINDS) in stdout
    assert "report.html" in stdout
    # the numbers behind the figures have their shapes, and agree with their definitions
    assert len(data["relative_change"]) == len(TEXT) and len(data["relative_change"][0]) == 12
    assert len(data["kl"][0]) == 11 and len(data["distance_to_final"][0]) == 13
    assert [o["position"] for o in data["orbits"]] == [0, len(TEXT) - 1]
    rel = torch.tensor(data["relative_change"])
    steps = [next((t + 1 for t in range(12) if bool((rel[p, t:] < 1e-3).all())), -1) for p in range(len(TEXT))]
    assert data["steps_to_converge"] == steps
    assert len(data["logit_lens"]["top_tokens"][0]) == 12
    # report.html is one self-contained file: every figure inline, nothing fetched
    page = (out / "report.html").read_text()
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([^"]+)"', page)
    assert sorted(name for name, _ in images) == sorted(FIGURES)
    for name, data64 in images:
        assert base64.b64decode(data64) == (out / f"{name}.png").read_bytes()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.count("<tr>") == len(TEXT) + 1  # a row per token


def test_json_prints_the_numbers_and_a_rerun_replaces_the_files(
    fixture_dir, tokenizer_dir, tmp_path, capsys, monkeypatch
):
    from huginn.analysis import figures

    for name in FIGURES:  # drawing is tested above; here a stand-in PNG keeps the test fast
        monkeypatch.setitem(figures.FIGURES, name, lambda a: b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    code, stdout, err = _analyze(fixture_dir, tokenizer_dir, out, capsys, "--num-steps", "6", "--json", "--seed", "3")
    assert code == 0, err
    printed = json.loads(stdout)
    assert printed == json.loads((out / "analysis.json").read_text())
    assert printed["num_steps"] == 6 and printed["seed"] == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "mine.txt"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-steps", "0"], "--num-steps"),
        (["--num-steps", "-3"], "--num-steps"),
        (["--tokens", "0,99"], "out of range"),
        (["--tokens", "a,b"], "--tokens takes"),
        (["--tail", "40", "--num-steps", "8"], "--tail must lie in 3 .. 9"),
        (["--threshold", "0"], "--threshold must be > 0"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(fixture_dir, tokenizer_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    code, _, err = _analyze(fixture_dir, tokenizer_dir, out, capsys, *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_text_and_an_unwritable_out_are_refused(fixture_dir, tokenizer_dir, tmp_path, capsys):
    code, _, err = run_main(
        ["analyze", str(fixture_dir), "", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "x")], capsys
    )
    assert code == 2 and "empty" in err and not (tmp_path / "x").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _analyze(fixture_dir, tokenizer_dir, blocker / "out", capsys)
    assert code == 2 and "cannot be created" in err and err.count("\n") == 1
    code, _, err = _analyze(fixture_dir, tokenizer_dir, blocker, capsys)
    assert code == 2 and "is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failure_while_writing_leaves_nothing(fixture_dir, tokenizer_dir, tmp_path, capsys, monkeypatch):
    from huginn.analysis import figures

    def broken(a):
        raise RuntimeError("disk full")

    monkeypatch.setitem(figures.FIGURES, "convergence", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _analyze(fixture_dir, tokenizer_dir, tmp_path / "out", capsys, "--num-steps", "4")
    assert list(tmp_path.iterdir()) == []
