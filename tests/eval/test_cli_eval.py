"""`huginn eval`: a two-depth sweep writes its JSON / CSV / plot, a re-run skips done cells, --text
gives loss by depth, and every user mistake is one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import json
import math

import pytest

pytest.importorskip("lm_eval")

from tests.conftest import run_main
from tests.eval.eval_helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_depths_write_outputs_and_rerun_skips(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", str(checkpoint), "--tasks", "huginn_tasks", "--num-steps", "1,3", "--limit", "4"]
    code, stdout, err = run_main([*args, "--out", str(out)], capsys)
    assert code == 0, err
    cells = sorted(p.name for p in (out / "results" / "huginn_tasks").iterdir())
    assert cells == ["steps-1.json", "steps-3.json"]
    record = json.loads((out / "results" / "huginn_tasks" / "steps-3.json").read_text())
    assert record["num_steps"] == 3 and record["mean_core_steps"] == 3
    assert record["lm_eval"]["results"]["huginn_parity_choice"]["sample_len"] == 4
    rows = _csv(out / "results.csv")
    assert {(r["task"], r["metric"], r["num_steps"]) for r in rows} == {
        (t, m, n)
        for t, m in (("huginn_parity_choice", "acc"), ("huginn_parity_answer", "exact_match"))
        for n in ("1", "3")
    }
    flops = {r["num_steps"]: float(r["flops_per_token"]) for r in rows}
    assert flops["3"] > flops["1"]
    assert (out / "depth.png").stat().st_size > 1000
    assert "huginn_parity_choice" in stdout and "2 cells run, 0 already done" in err

    # a re-run skips both cells; losing one cell re-runs only that one
    mtime = (out / "results" / "huginn_tasks" / "steps-1.json").stat().st_mtime_ns
    code, _, err = run_main([*args, "--out", str(out)], capsys)
    assert code == 0 and "0 cells run, 2 already done" in err
    (out / "results" / "huginn_tasks" / "steps-3.json").unlink()
    code, _, err = run_main([*args, "--out", str(out)], capsys)
    assert code == 0 and "1 cells run, 1 already done" in err
    assert (out / "results" / "huginn_tasks" / "steps-1.json").stat().st_mtime_ns == mtime
    assert len(_csv(out / "results.csv")) == 4


def test_exit_sweep_adds_cells_at_the_largest_depth(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(
        ["eval", str(checkpoint), "--tasks", "huginn_parity_choice", "--num-steps", "2,6", "--limit", "3",
         "--exit", "latent-diff:0.5,0.001", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = _csv(out / "results.csv")
    exits = {r["exit"]: float(r["mean_core_steps"]) for r in rows if r["exit"]}
    assert set(exits) == {"latent-diff:0.5", "latent-diff:0.001"}
    assert all(r["num_steps"] == "6" for r in rows if r["exit"])
    assert exits["latent-diff:0.5"] < exits["latent-diff:0.001"] <= 6  # a looser threshold exits sooner


def test_text_loss_by_depth(checkpoint, tmp_path, capsys):
    from huginn.eval.lm import HuginnLM
    from tests.eval.eval_helpers import instances

    text = tmp_path / "doc.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 4)
    out = tmp_path / "out"
    code, _, err = run_main(
        ["eval", str(checkpoint), "--text", str(text), "--num-steps", "1,2", "--out", str(out)], capsys
    )
    assert code == 0, err
    rows = {(r["metric"], r["num_steps"]): float(r["value"]) for r in _csv(out / "results.csv")}
    lm = HuginnLM(pretrained=str(checkpoint), num_steps=2)
    (ll,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text.read_text(),)]))
    tokens = len(lm.tok_encode(text.read_text()))
    assert math.isclose(rows[("loss", "2")], -ll / tokens, rel_tol=1e-6)
    assert math.isclose(rows[("perplexity", "2")], math.exp(-ll / tokens), rel_tol=1e-6)
    n_bytes = len(text.read_text().encode())
    assert math.isclose(rows[("bits_per_byte", "2")], -ll / n_bytes / math.log(2), rel_tol=1e-6)
    assert rows[("loss", "1")] != rows[("loss", "2")]
    assert (out / "depth.png").is_file()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--tasks", "no_such_task"], "unknown task 'no_such_task'"),
        (["--tasks", "huginn_tasks", "--num-steps", "0,2"], "--num-steps must all be >= 1"),
        (["--tasks", "huginn_tasks", "--num-steps", "1,two"], "not a list of integers"),
        (["--tasks", "huginn_tasks", "--exit", "kl:abc"], "is not a number"),
        (["--text", "missing.txt"], "does not exist"),
        (["--tasks", "huginn_tasks", "--limit", "-3"], "--limit"),
        ([], "pass --tasks"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    code, _, err = run_main(["eval", str(checkpoint), *extra, "--out", str(out)], capsys)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_folder_that_is_not_a_model(tmp_path, capsys):
    not_model = tmp_path / "notes"
    not_model.mkdir()
    (not_model / "readme.txt").write_text("hello")
    out = tmp_path / "out"
    code, _, err = run_main(["eval", str(not_model), "--tasks", "huginn_tasks", "--out", str(out)], capsys)
    assert code == 2 and "not a checkpoint folder" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # lm-eval's command line indexes all of its tasks (~7 s)
def test_lm_eval_cli_with_the_model_registered(checkpoint, tmp_path, capsys):
    """`python -m huginn.eval` is lm-eval's command line: it runs the model `huginn` on a shipped
    task, and an unknown model_arg is one line, exit 2."""
    from huginn.eval.__main__ import main

    out = tmp_path / "lm"
    main(["--model", "huginn", "--model_args", f"pretrained={checkpoint},num_steps=2", "--tasks",
          "huginn_parity_choice", "--limit", "3", "--output_path", str(out)])  # fmt: skip
    written = list(out.rglob("results_*.json"))
    assert len(written) == 1
    results = json.loads(written[0].read_text())["results"]["huginn_parity_choice"]
    assert 0.0 <= results["acc,none"] <= 1.0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--model",
                "huginn",
                "--model_args",
                f"pretrained={checkpoint},num_step=2",
                "--tasks",
                "huginn_parity_choice",
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model_arg 'num_step'" in err and "did you mean 'num_steps'" in err
