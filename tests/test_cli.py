"""The `huginn` command: help, version, info, demo and one-line errors."""

import json

import pytest

from huginn import __version__
from tests.conftest import run_huginn as huginn
from tests.conftest import run_main as _main


def test_version_and_help():
    assert __version__ in huginn("--version").stdout
    out = huginn("--help").stdout
    for sub in ("info", "demo"):
        assert sub in out


def test_info_named_shape_json():
    data = json.loads(huginn("info", "nebel-raven-3.5b", "--json", "--steps", "1,32").stdout)
    assert data["parameters"]["total"] == 3_564_976_800
    assert [row["num_steps"] for row in data["cost"]] == [1, 32]
    assert data["cost"][1]["materialized_params"] > 15 * data["cost"][0]["materialized_params"] / 2


def test_info_checkpoint(fixture_dir):
    out = huginn("info", str(fixture_dir)).stdout
    assert "355,392" in out and "2/4/2" in out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["info", "no/such/dir"], "not a checkpoint directory"),
        (["info", "tiny", "--steps", "0"], "--steps"),
        (["nonsense"], "No such command"),
    ],
)
def test_errors_are_one_line(args, needle):
    proc = huginn(*args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    proc = huginn("info", str(tmp_path), check=False)
    assert proc.returncode == 2 and "unknown model_type 'llama'" in proc.stderr


def test_demo_runs():
    out = huginn("demo", "--shape", "tiny", "--steps", "1,4,8", "--seq-len", "8").stdout
    assert "num_steps" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["info", "tiny", "--context", "-5"], "--context"),
        (["info", "tiny", "--context", "0"], "--context"),
        (["demo", "--shape", "tiny", "--seq-len", "0"], "--seq-len"),
        (["demo", "--shape", "tiny", "--steps", "-1"], "--steps"),
        (["generate", "x", "hi", "--exit", "kl:-1"], "exit_threshold for kl must be >= 0"),
        (["generate", "x", "hi", "--exit", "argmax-stability:0"], "an integer >= 1"),
        (["generate", "x", "hi", "--exit", "none:5"], "exit criterion 'none' takes no threshold"),
        (["generate", "x", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["generate", "x", "hi", "--num-steps", "-2"], "--num-steps"),
        (["retrofit", "base", "out", "--seed", "-1", "--core", "0"], "--seed"),
        (["retrofit", "base", "out", "--mean-recurrence", "0", "--core", "0"], "--mean-recurrence"),
    ],
)
def test_bad_numbers_are_refused_in_one_line(args, needle, capsys):
    code, out, err = _main(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and needle in lines[0], err


def test_info_context_is_used(capsys):
    code, out, _ = _main(["info", "tiny", "--json", "--context", "1", "--steps", "1"], capsys)
    assert code == 0 and json.loads(out)["context"] == 1


def test_a_bad_huginn_gemm_is_refused_before_the_command_runs(capsys, monkeypatch):
    monkeypatch.setenv("HUGINN_GEMM", "fast")
    code, stdout, err = _main(["info", "tiny"], capsys)  # a command that runs no product at all
    lines = err.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert "HUGINN_GEMM must be one of auto, blas, onednn, got 'fast'" in lines[0]
