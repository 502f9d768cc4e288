"""`huginn retrofit`: the written folder loads through the Auto classes and matches the in-memory
conversion; bad input is one line with exit code 2 and leaves nothing behind."""

import json

import pytest
import torch

from tests.conftest import run_main as run

from .helpers import tiny_base


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    dirs = {}
    for name in ("llama-gqa-tied", "olmo2-gqa"):
        tiny_base(name).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("name", ["llama-gqa-tied", "olmo2-gqa"])
def test_cli_writes_a_loadable_checkpoint(base_dirs, tmp_path, capsys, name):
    from transformers import AutoModelForCausalLM

    import huginn  # noqa: F401  (registers the Auto classes)
    from huginn.retrofit import LayerMap, convert

    out = tmp_path / "rec"
    code, stdout, err = run(
        [
            "retrofit",
            str(base_dirs[name]),
            str(out),
            "--prelude",
            "0",
            "--core",
            "2,4",
            "--coda",
            "5",
            "--injection",
            "linear",
            "--seed",
            "7",
        ],
        capsys,
    )
    assert code == 0, err
    assert "check: num_steps=1" in stdout and "dropped 2 of 6" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["retrofit"]["injection"] == "linear" and cfg["retrofit"]["core"] == [2, 4]
    assert cfg["retrofit"]["base_model_type"] == name.split("-")[0]
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    want = convert(tiny_base(name), LayerMap((0,), (2, 4), (5,)), "linear", seed=7)
    x = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for steps in (1, 3, 6):
            a = loaded(x, num_steps=steps, init_scale=0.0).logits
            b = want(x, num_steps=steps, init_scale=0.0).logits
            assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_cli_full_map_matches_base_after_save(base_dirs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    import huginn  # noqa: F401

    out = tmp_path / "rec"
    assert run(["retrofit", str(base_dirs["olmo2-gqa"]), str(out), "--shape", "2,3,1"], capsys)[0] == 0
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(base_dirs["olmo2-gqa"])).eval()
    x = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (loaded(x, num_steps=1).logits - base(input_ids=x).logits).abs().max() < 1e-4


def test_cli_bad_input(base_dirs, tmp_path, capsys, monkeypatch):
    llama = str(base_dirs["llama-gqa-tied"])
    out = tmp_path / "out"
    cases = [
        ([llama, str(out), "--core", "3-9"], "core layer 6 is out of range: the base has 6 layers"),
        ([llama, str(out), "--prelude", "0-2", "--core", "2-4"], "layer 2 appears in both the prelude and the core"),
        ([llama, str(out), "--map", "tinyllama"], "is for TinyLlama"),
        ([llama, str(out), "--shape", "2,2,1", "--core", "3"], "give one of"),
        ([llama, str(out)], "say which layers"),
        ([str(tmp_path / "missing"), str(out), "--core", "1"], "does not exist"),
        ([str(tmp_path), str(out), "--core", "1"], "has no config.json"),
    ]
    for args, fragment in cases:
        code, _stdout, err = run(["retrofit", *args], capsys)
        assert code == 2 and fragment in err and err.count("\n") == 1, (args, err)
        assert not out.exists()


def test_cli_unsupported_architecture_names_the_supported(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    code, _, err = run(["retrofit", str(tmp_path / "gpt2"), str(tmp_path / "out"), "--core", "0"], capsys)
    assert code == 2 and "unsupported base architecture 'gpt2'" in err
    assert "llama (" in err and "olmo2 (" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_gguf_without_the_gguf_package(tmp_path, capsys, monkeypatch):
    import importlib.util

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    code, _, err = run(["retrofit", str(fake), str(tmp_path / "out"), "--core", "0"], capsys)
    # accelerate may be missing too (a fresh venv): the message then names both packages
    assert code == 2 and "needs the gguf" in err and "pip install 'huginn[gguf]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_clobber(base_dirs, tmp_path, capsys):
    llama = str(base_dirs["llama-gqa-tied"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    code, _, err = run(["retrofit", llama, str(busy), "--core", "1"], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = run(["retrofit", llama, str(busy), "--core", "1", "--overwrite"], capsys)
    assert code == 2 and "refusing to overwrite" in err and (busy / "notes.txt").exists()
    out = tmp_path / "ckpt"
    assert run(["retrofit", llama, str(out), "--core", "1"], capsys)[0] == 0
    assert run(["retrofit", llama, str(out), "--core", "1-2", "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "config.json").read_text())["retrofit"]["core"] == [1, 2]


def _break_base(folder, kind):
    import os

    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if kind == "invalid-json":
        cfg_file.write_text("{oops")
    elif kind == "no-model-type":
        cfg = json.loads(cfg_file.read_text())
        del cfg["model_type"]
        cfg_file.write_text(json.dumps(cfg))
    elif kind == "truncated":
        os.truncate(weights, weights.stat().st_size // 2)
    elif kind == "empty":
        weights.write_bytes(b"")
    elif kind == "no-weights":
        weights.unlink()
    elif kind == "missing-layer":
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        del tensors["model.layers.3.mlp.up_proj.weight"]
        save_file(tensors, str(weights), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("invalid-json", "config.json is not valid JSON"),
        ("no-model-type", "config.json has no model_type"),
        ("truncated", "model.safetensors is not a readable safetensors file"),
        ("empty", "model.safetensors is empty"),
        ("no-weights", "has no weights (model.safetensors)"),
        ("missing-layer", "missing weights model.layers.3.mlp.up_proj.weight"),
    ],
)
def test_cli_broken_base_is_one_line(base_dirs, tmp_path, capsys, monkeypatch, kind, needle):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(base_dirs["llama-gqa-tied"], base)
    _break_base(base, kind)
    monkeypatch.setattr("sys.stdin", None)  # no trust_remote_code question
    out = tmp_path / "out"
    code, _, err = run(["retrofit", str(base), str(out), "--core", "1-2", "--no-check"], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_out_is_checked_before_any_work(base_dirs, tmp_path, capsys, monkeypatch):
    import huginn.retrofit as api

    monkeypatch.setattr(api, "load_base_config", lambda *a: pytest.fail("read the base before checking OUT"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    llama = str(base_dirs["llama-gqa-tied"])
    for out, needle in ((blocker, "is a file"), (blocker / "sub", "cannot be created")):
        code, _, err = run(["retrofit", llama, str(out), "--core", "1"], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, err
