"""Broken checkpoint folders fail in one line naming the file and the fix, the same way for the
Python loaders, `huginn generate` / `chat` / `info` and training's `model.init_from`."""

import json
import logging
import os
import shutil

import pytest

from huginn import HuginnError
from huginn.checkpoint import load_checkpoint
from huginn.hf import RavenForCausalLM
from tests.conftest import run_main as run


def _edit_config(folder, change):
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _truncate(folder):
    f = folder / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)


BROKEN = {
    # name: (how to break a copy of the fixture, what the one line says, what it names)
    "truncated": (_truncate, "not a readable safetensors file", "model.safetensors"),
    "random-bytes": (
        lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
        "not a readable safetensors file",
        "model.safetensors",
    ),
    "empty": (lambda d: (d / "model.safetensors").write_bytes(b""), "is empty", "model.safetensors"),
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), "has no weights (model.safetensors)", ""),
    "invalid-json": (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON", "config.json"),
    "n_embd-string": (
        lambda d: _edit_config(d, lambda c: c.update(n_embd="64")),
        "n_embd must be an integer, got '64'",
        "config.json",
    ),
    "negative-recurrence": (
        lambda d: _edit_config(d, lambda c: c.update(mean_recurrence=-3)),
        "mean_recurrence must be a positive integer, got -3",
        "config.json",
    ),
    "no-model-type": (
        lambda d: _edit_config(d, lambda c: c.pop("model_type")),
        'has no model_type; a huginn checkpoint\'s config.json says "model_type": "huginn_raven"',
        "config.json",
    ),
    "llama": (
        lambda d: _edit_config(d, lambda c: c.update(model_type="llama")),
        "unknown model_type 'llama'",
        "config.json",
    ),
    "no-shape-fields": (
        lambda d: _edit_config(d, lambda c: (c.pop("n_embd"), c.pop("n_heads"))),
        "lacks the shape field(s) n_embd, n_heads",
        "config.json",
    ),
}
CONFIG_ONLY = [k for k, (_, _, names) in BROKEN.items() if names == "config.json"]


@pytest.fixture
def broken(fixture_dir, tmp_path):
    def make(kind):
        folder = tmp_path / kind
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(fixture_dir / name, folder / name)
        BROKEN[kind][0](folder)
        return folder

    return make


def _one_line(err, kind, folder):
    _, needle, names = BROKEN[kind]
    msg = str(err)
    assert needle in msg and "\n" not in msg, msg
    assert str(folder / names) in msg, msg


@pytest.mark.parametrize("kind", list(BROKEN))
def test_python_loaders(broken, kind, monkeypatch):
    folder = broken(kind)
    monkeypatch.setattr("sys.stdin", None)  # no question on stdin (transformers' trust_remote_code prompt)
    with pytest.raises(HuginnError) as err:
        load_checkpoint(folder)
    _one_line(err.value, kind, folder)
    with pytest.raises(HuginnError) as err:
        RavenForCausalLM.from_pretrained(str(folder))
    _one_line(err.value, kind, folder)


@pytest.mark.parametrize("kind", list(BROKEN))
def test_generate_and_chat_commands(broken, kind, capsys):
    folder = broken(kind)
    for argv in (["generate", str(folder), "hello"], ["chat", str(folder)]):
        code, out, err = run(argv, capsys)
        assert code == 2 and out == "", err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("huginn: error: "), err
        _one_line(lines[0], kind, folder)


@pytest.mark.parametrize("kind", CONFIG_ONLY)
def test_info_command(broken, kind, capsys):
    folder = broken(kind)
    code, out, err = run(["info", str(folder)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    _one_line(err.strip(), kind, folder)


def test_weights_of_another_width_are_one_line_without_the_load_report(broken, fixture_dir, tmp_path, capfd, caplog):
    folder = tmp_path / "wide"
    shutil.copytree(fixture_dir, folder)
    _edit_config(folder, lambda c: c.update(n_embd=128))
    with caplog.at_level(logging.WARNING), pytest.raises(HuginnError) as err:
        load_checkpoint(folder)
    msg = str(err.value)
    assert "\n" not in msg and "weights of the wrong shape" in msg and str(folder) in msg
    assert "transformer.adapter.weight (checkpoint 64x128, config 128x256)" in msg
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage()[:80] for r in caplog.records
    ]
    printed = capfd.readouterr().err  # transformers logs to stderr through its own handler
    assert "LOAD REPORT" not in printed and "MISMATCH" not in printed and "not sharded" not in printed, printed


def test_a_sound_checkpoint_still_loads(fixture_dir):
    model = load_checkpoint(fixture_dir)
    assert not model.training and model.model_config.n_embd == 64


def test_training_init_from_uses_the_same_checks(broken):
    from huginn.train.config import load_config
    from huginn.train.loop import build_model

    folder = broken("truncated")
    cfg = load_config(overrides=[f"model.init_from={folder}"])
    with pytest.raises(HuginnError) as err:
        build_model(cfg)
    _one_line(err.value, "truncated", folder)


def test_an_untied_head_must_be_stored(tmp_path):
    from safetensors.torch import load_file, save_file

    from tests.conftest import tiny_model

    tiny_model(seed=1, tie_embeddings=False).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(HuginnError, match=r"missing weights lm_head\.weight"):
        load_checkpoint(tmp_path)
