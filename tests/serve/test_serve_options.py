"""The serving front end without vLLM (default suite): importing huginn and the plugin needs no
vLLM; the KV modes map cache slots onto attention layers exactly as huginn's own cache stores them;
option mistakes and `huginn serve` mistakes are one line; the vLLM command line it builds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from huginn.errors import HuginnError
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.model.slots import SlotLayout
from huginn.serve.options import ServeOptions
from huginn.serve.server import check_generate_flags, prepare, server_args
from tests.conftest import REPO, run_main

from .serve_helpers import tiny_checkpoint

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_importing_huginn_and_the_plugin_imports_no_vllm():
    code = (
        "import sys, huginn, huginn.serve, huginn.serve.plugin, huginn.serve.options, huginn.serve.server, "
        "huginn.cli.serve; print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("shape", [(2, 4, 2), (1, 3, 0), (0, 2, 1)])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("mode,policy", [("full", CachePolicy()), ("shared", None)])
def test_kv_layers_are_huginn_cache_storage(shape, steps, mode, policy):
    layout = SlotLayout(*shape)
    opts = ServeOptions(num_steps=steps, kv_mode=mode)
    policy = policy or CachePolicy(share="cycle", n=layout.n_core)
    assert opts.cache_policy(layout.n_core) == policy
    cache = HuginnStaticCache(*shape, kv_heads=1, head_dim=2, batch_size=1, max_steps=steps, capacity=1, policy=policy)
    slots = layout.prelude() + [s for t in range(steps) for s in layout.core(t)] + layout.coda()
    got = [opts.kv_layer_index(layout, s) for s in slots]
    assert got == [cache.storage_index(s) for s in slots]
    assert sorted(set(got)) == list(range(opts.n_kv_layers(layout)))  # every attention layer is used
    expected = sum(shape) - shape[1] + (steps * shape[1] if mode == "full" else shape[1])
    assert opts.n_kv_layers(layout) == expected


def test_shared_kv_memory_against_full():
    layout = SlotLayout(2, 4, 2)
    full = ServeOptions(32, "full").kv_bytes_per_token(layout, n_kv_heads=55, head_dim=96, dtype_bytes=2)
    shared = ServeOptions(32, "shared").kv_bytes_per_token(layout, n_kv_heads=55, head_dim=96, dtype_bytes=2)
    assert full == (2 + 32 * 4 + 2) * 2 * 55 * 96 * 2  # Huginn-0125 at 32 steps, bf16: 2.79 MB per token
    assert shared * 132 == full * 8


def test_options_read_the_config_and_the_reference_override():
    class Cfg:
        mean_recurrence = 32

    assert ServeOptions.of(Cfg()) == ServeOptions(32, "full")
    cfg = Cfg()
    cfg.num_steps, cfg.kv_mode = 4, "shared"  # type: ignore[attr-defined]
    assert ServeOptions.of(cfg) == ServeOptions(4, "shared")
    assert ServeOptions(4, "shared").cache_spec(4) == "compress-s4"
    assert ServeOptions(4, "shared").hf_overrides(128) == {
        "num_steps": 4,
        "kv_mode": "shared",
        "max_position_embeddings": 128,
    }


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_steps=0), "num_steps must be an integer >= 1, got 0"),
        (dict(num_steps=2.5), "num_steps must be an integer >= 1, got 2.5"),
        (dict(num_steps=True), "num_steps must be an integer >= 1, got True"),
        (dict(num_steps=2, kv_mode="paged"), "unknown kv_mode 'paged'; valid: full, shared"),
    ],
)
def test_option_mistakes_are_one_line(kwargs, message):
    with pytest.raises(HuginnError) as info:
        ServeOptions(**kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve_ck"), tokenizer=False)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here; the vllm suite starts the server")
def test_serve_without_vllm_says_how_to_install(checkpoint, capsys):
    code, _out, err = run_main(["serve", str(checkpoint), "--num-steps", "3"], capsys)
    assert code == 2 and "vLLM is not installed" in err and "huginn[vllm]" in err and err.count("\n") == 1


def test_serve_builds_the_vllm_command_line(checkpoint, capsys):
    code, out, err = run_main(
        [
            "serve",
            str(checkpoint),
            "--num-steps",
            "3",
            "--kv-mode",
            "shared",
            "--dry-run",
            "--dtype",
            "float32",
            "--max-num-seqs",
            "8",
        ],
        capsys,
    )
    assert code in (0, None), err
    import shlex

    argv = shlex.split(out.strip())
    assert argv[:4] == ["vllm", "serve", os.path.abspath(checkpoint), "--host"]
    assert argv[4:8] == ["127.0.0.1", "--port", "8000", "--hf-overrides"]  # loopback unless told otherwise
    assert json.loads(argv[8]) == {"num_steps": 3, "kv_mode": "shared", "max_position_embeddings": 256}
    assert argv[9:] == ["--dtype", "float32", "--max-num-seqs", "8"]  # everything else goes to vLLM


def test_serve_host_port_and_merged_overrides(checkpoint):
    prepared = prepare(str(checkpoint))
    assert prepared.options == ServeOptions(4, "full")  # the config's mean_recurrence
    args = server_args(prepared, "0.0.0.0", 9000, ["--hf-overrides", '{"head_dtype": "float32"}', "--seed", "1"])
    assert args[2:6] == ["--host", "0.0.0.0", "--port", "9000"]
    assert json.loads(args[7]) == {
        "num_steps": 4,
        "kv_mode": "full",
        "max_position_embeddings": 256,
        "head_dtype": "float32",
    }
    assert args[8:] == ["--seed", "1"]
    with pytest.raises(HuginnError, match="set num_steps with --num-steps"):
        server_args(prepared, "127.0.0.1", 1, ['--hf-overrides={"num_steps": 9}'])
    with pytest.raises(HuginnError, match="pass --port as huginn serve's own option"):
        server_args(prepared, "127.0.0.1", 1, ["--port", "2"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--kv-mode", "paged"], "Invalid value for '--kv-mode'"),
        (["--num-steps", "0"], "Invalid value for '--num-steps'"),
    ],
)
def test_serve_flag_mistakes_are_one_line(checkpoint, capsys, args, message):
    code, _out, err = run_main(["serve", str(checkpoint), "--dry-run", *args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_serve_refuses_a_head_size_cpu_attention_cannot_hold(fixture_dir, capsys):
    # the reference fixture has head_dim 16; on a machine without a GPU vLLM's CPU attention needs 32, 64, ...
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU's attention backends have other head sizes")
    code, _out, err = run_main(["serve", str(fixture_dir), "--dry-run"], capsys)
    assert code == 2 and "does not support head_dim 16" in err and err.count("\n") == 1


def test_serve_refuses_a_missing_checkpoint(tmp_path, capsys):
    code, _out, err = run_main(["serve", str(tmp_path / "nope"), "--dry-run"], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "opts,result",
    [
        (dict(cache="latest"), "full"),
        (dict(cache="full"), "full"),
        (dict(cache="compress-s4"), "shared"),
        (dict(cache="latest-m4-compress-s4"), "shared"),
        (dict(cache="compress-s8"), "--cache compress-s8 is not available with --engine vllm"),
        (dict(cache="latest", exit_spec="kl:5e-4"), "--exit (adaptive compute) is not available"),
        (dict(cache="latest", continuous=True), "--continuous is not available"),
        (dict(cache="latest", draft_steps=2), "--draft-steps (self-speculative decoding) is not available"),
        (dict(cache="latest", init_scale=1.0), "--engine vllm runs a zero initial state"),
        (dict(cache="latest", init_scale=0.0), "full"),
        (dict(cache="latest", parallel=True), "--parallel (the parallel sampler) is not available"),
    ],
)
def test_generate_engine_vllm_flags(opts, result):
    if result in ("full", "shared"):
        assert check_generate_flags(opts, n_core_layers=4) == result
    else:
        with pytest.raises(HuginnError) as info:
            check_generate_flags(opts, n_core_layers=4)
        assert str(info.value).startswith(result)


def test_generate_command_takes_engine_vllm(capsys):
    # the flag reaches the vLLM path through click: its flag check answers before vLLM is needed
    fixture = str(REPO / "tests" / "fixtures" / "huginn-reference-tiny")
    code, _, err = run_main(["generate", fixture, "x", "--engine", "vllm", "--exit", "kl:5e-4"], capsys)
    assert code == 2 and "--exit (adaptive compute) is not available with --engine vllm" in err
    assert err.count("\n") == 1
