"""The vLLM plugin against huginn's own generation, in vLLM's engine (`make test-vllm`, in .venv-vllm).

Greedy outputs of `vllm.LLM` equal `model.generate(num_steps=N, init_scale=0)` with the KV mode's
cache policy (full: `full`; shared: `compress-s{R}`) for a batch of mixed-length prompts, on a
Huginn-shape checkpoint and on retrofitted bases; prompt logprobs equal huginn's forward
log-softmax (1e-4, fp32); bad options and unplaceable checkpoints are one clear error.
"""

from __future__ import annotations

import gc

import pytest
import torch

from huginn.errors import HuginnError

from .serve_helpers import prompts, retrofitted_checkpoint, set_vllm_env, tiny_checkpoint

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm")
pytestmark = pytest.mark.vllm

set_vllm_env()

MAX_NEW = 12
LP_TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def registered():
    from huginn.serve.plugin import register

    register()
    register()  # idempotent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny32"))


@pytest.fixture(scope="module")
def huginn_tiny(tiny):
    from huginn.checkpoint import load_checkpoint

    return load_checkpoint(tiny).eval()


def make_llm(path, eager: bool = True, **overrides):
    from vllm import LLM

    return LLM(
        model=str(path),
        skip_tokenizer_init=True,
        enforce_eager=eager,
        dtype="float32",
        max_model_len=256,
        hf_overrides=overrides,
        seed=0,
    )


def close(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def vllm_generate(llm, batch: list[list[int]], prompt_logprobs: bool = True):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        temperature=0.0, max_tokens=MAX_NEW, detokenize=False, prompt_logprobs=0 if prompt_logprobs else None
    )
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)


@torch.no_grad()
def huginn_generate(model, prompt: list[int], steps: int, cache: str) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, num_steps=steps, init_scale=0.0, max_new_tokens=MAX_NEW, do_sample=False, cache_lookup_strategy=cache
    )
    return out[0, len(prompt) :].tolist()


@torch.no_grad()
def max_prompt_logprob_diff(model, prompt: list[int], steps: int, got) -> float:
    lp = torch.log_softmax(model(torch.tensor([prompt]), num_steps=steps, init_scale=0.0).logits[0].double(), -1)
    want = [lp[i - 1, prompt[i]].item() for i in range(1, len(prompt))]
    have = [got[i][prompt[i]].logprob for i in range(1, len(prompt))]
    return max(abs(a - b) for a, b in zip(want, have))


def check_against_huginn(llm, model, batch, steps, cache):
    outs = vllm_generate(llm, batch)
    for prompt, out in zip(batch, outs):
        assert list(out.outputs[0].token_ids) == huginn_generate(model, prompt, steps, cache), (prompt, steps, cache)
        assert max_prompt_logprob_diff(model, prompt, steps, out.prompt_logprobs) < LP_TOL
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("steps", [2, 5])
def test_full_kv_equals_huginn_generate(tiny, huginn_tiny, steps):
    llm = make_llm(tiny, num_steps=steps, kv_mode="full")
    try:
        kv = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model.transformer.kv
        assert len(kv) == 2 + steps * 4 + 2  # one attention layer per (step, core layer), prelude, coda
        check_against_huginn(llm, huginn_tiny, prompts(256), steps, "full")
    finally:
        close(llm)


def test_compiled_model_equals_huginn_generate(tiny, huginn_tiny):
    # vLLM's default (and on GPUs its CUDA-graph) path: the model traced by torch.compile
    llm = make_llm(tiny, eager=False, num_steps=2, kv_mode="full")
    try:
        check_against_huginn(llm, huginn_tiny, prompts(256), 2, "full")
    finally:
        close(llm)


def test_shared_kv_equals_huginn_compress_s4(tiny, huginn_tiny):
    steps = 3
    llm = make_llm(tiny, num_steps=steps, kv_mode="shared")
    try:
        kv = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model.transformer.kv
        assert len(kv) == 2 + 4 + 2  # one attention layer per core layer, overwritten each step
        batch = prompts(256)
        got = check_against_huginn(llm, huginn_tiny, batch, steps, "compress-s4")
    finally:
        close(llm)
    # the two modes differ on these prompts, so the comparison above tells them apart
    assert got != [huginn_generate(huginn_tiny, p, steps, "full") for p in batch]


def test_mean_recurrence_override_sets_the_depth(tiny, huginn_tiny):
    # lm-eval and the reference plugin pass the depth as hf_overrides={"mean_recurrence": N}
    llm = make_llm(tiny, mean_recurrence=2)
    try:
        got = [list(o.outputs[0].token_ids) for o in vllm_generate(llm, prompts(256), prompt_logprobs=False)]
    finally:
        close(llm)
    assert got == [huginn_generate(huginn_tiny, p, 2, "full") for p in prompts(256)]
    assert got != [huginn_generate(huginn_tiny, p, 4, "full") for p in prompts(256)]  # not the config's 4


@pytest.mark.parametrize("family,steps", [("llama", 2), ("llama", 4), ("olmo2", 3)])
def test_retrofitted_base_equals_huginn_generate(tmp_path, family, steps):
    from huginn.checkpoint import load_checkpoint

    path = retrofitted_checkpoint(tmp_path / family, family)
    model = load_checkpoint(path).eval()
    llm = make_llm(path, num_steps=steps, kv_mode="full")
    try:
        check_against_huginn(llm, model, prompts(128), steps, "full")
    finally:
        close(llm)


def test_parameter_names_are_the_published_ones(tiny, huginn_tiny):
    llm = make_llm(tiny, num_steps=1)
    try:
        model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        ours = {n for n, _ in model.named_parameters()}
    finally:
        close(llm)
    published = set(huginn_tiny.state_dict()) - {"freqs_cis", "lm_head.weight"}  # tied head
    assert ours == published


def _error_of(path, **overrides) -> str:
    with pytest.raises(Exception) as info:
        llm = make_llm(path, **overrides)
        close(llm)
    err: BaseException | None = info.value
    while err is not None and not isinstance(err, HuginnError):  # vLLM may wrap it
        err = err.__cause__ or err.__context__
    assert err is not None, f"not a HuginnError: {info.value!r}"
    return str(err)


def test_unknown_kv_mode_is_one_clear_error(tiny):
    msg = _error_of(tiny, kv_mode="paged")
    assert msg == "unknown kv_mode 'paged'; valid: full, shared"


@pytest.mark.parametrize("steps", [0, -1])
def test_non_positive_num_steps_is_one_clear_error(tiny, steps):
    msg = _error_of(tiny, num_steps=steps)
    assert f"num_steps must be an integer >= 1, got {steps}" in msg and "\n" not in msg


def test_unsupported_head_size_says_what_to_change(tmp_path):
    path = tiny_checkpoint(tmp_path / "hd16", tokenizer=False, n_heads=4)  # head_dim 16
    msg = _error_of(path, num_steps=1)
    assert "does not support head_dim 16" in msg and "n_embd / n_heads" in msg and "\n" not in msg


def test_context_longer_than_the_block_size_says_what_to_change(tmp_path):
    path = tiny_checkpoint(tmp_path / "short", tokenizer=False, block_size=64)
    msg = _error_of(path, num_steps=1)  # max_model_len 256 > block_size 64
    assert "block_size 64" in msg and "--max-model-len 64" in msg


def test_generate_offline_equals_huginn_generate(tiny, huginn_tiny):
    # what `huginn generate --engine vllm` runs: text prompts through the checkpoint's tokenizer
    from transformers import AutoTokenizer

    from huginn.serve.server import generate_offline, prepare, sampling_kwargs

    texts = ["The cat sat", "A much longer prompt about nothing in particular"]
    got = generate_offline(
        prepare(str(tiny), 3, "shared"),
        texts,
        sampling_kwargs(MAX_NEW),
        tokenizer=str(tiny),
        llm_kwargs=dict(enforce_eager=True),
    )
    tok = AutoTokenizer.from_pretrained(str(tiny))
    for text, ids in zip(texts, got):
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == huginn_generate(huginn_tiny, prompt, 3, "compress-s4")


def test_generate_command_engine_vllm_prints_huginn_text(tiny):
    # `huginn generate --engine vllm` (generate_for_cli, with the flags as click passes them) and
    # `huginn generate` (huginn's engine, --init-scale 0) print the same continuation
    from huginn.serve.server import generate_for_cli
    from tests.conftest import run_huginn

    opts = dict(num_steps=3, exit_spec=None, cache="latest", continuous=False, max_new_tokens=10, temperature=0.0)
    opts.update(top_k=0, top_p=None, min_p=None, repetition_penalty=None, draft_steps=None, lookahead=4, seed=None)
    opts.update(init_scale=None, compile=False, freeze=False)
    text, n_new, _, steps = generate_for_cli(str(tiny), "The cat sat", None, "float32", False, opts)
    assert (n_new, steps) == (10, 3)
    cli = run_huginn(
        "generate", str(tiny), "The cat sat", "--num-steps", "3", "--init-scale", "0", "--max-new-tokens", "10"
    )
    assert cli.stdout.rstrip("\n") == "The cat sat" + text
    with pytest.raises(HuginnError, match="--stream is not available with --engine vllm"):
        generate_for_cli(str(tiny), "The cat sat", None, "float32", True, opts)


def test_vllm_finds_the_plugin_through_its_entry_point():
    # vLLM's CLI spawns its engine process, which knows the plugin only through the entry point
    import subprocess
    import sys
    import tomllib

    from tests.conftest import REPO

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("entry-points", {})
    assert declared.get("vllm.general_plugins", {}).get("huginn") == "huginn.serve.plugin:register", (
        'pyproject.toml needs [project.entry-points."vllm.general_plugins"] huginn = "huginn.serve.plugin:register"'
    )
    code = (
        "from vllm.plugins import load_general_plugins; load_general_plugins(); from vllm import ModelRegistry; "
        "print(sorted(a for a in ModelRegistry.get_supported_archs() if a in ('RavenForCausalLM', 'HuginnForCausalLM')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['HuginnForCausalLM', 'RavenForCausalLM']"
