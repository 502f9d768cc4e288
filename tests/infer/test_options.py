"""One set of generation options: parsed once (CLI flags, generate keywords, reference strings),
checked against the model's config, one `init_scale` default, nothing silently ignored."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from huginn.cli import cli
from huginn.errors import HuginnError
from huginn.infer.exits import KL
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.options import CacheSpec, ExitRule, GenerationOptions
from huginn.infer.sampling import Sampling
from huginn.infer.speculative import Speculation
from tests.conftest import tiny_model
from tests.infer.test_cli import _byte_tokenizer


def _checkpoint(folder, n_core_layers: int):
    model = tiny_model(seed=1, n_layers_in_recurrent_block=n_core_layers)
    model.save_pretrained(str(folder))
    _byte_tokenizer(folder)
    return folder


@pytest.mark.parametrize("n_core_layers", [2, 8])
def test_cli_defaults_work_on_any_core_size(tmp_path, n_core_layers):
    """The default `--cache` is the model's own latest-mN; an explicit wrong N is a one-line error."""
    ckpt = str(_checkpoint(tmp_path, n_core_layers))
    res = CliRunner().invoke(cli, ["generate", ckpt, "Hi", "--max-new-tokens", "3"], catch_exceptions=True)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Hi") and "core steps/token mean 4.0" in res.stderr
    res = CliRunner().invoke(cli, ["generate", ckpt, "Hi", "--cache", f"latest-m{n_core_layers}-compress-s8"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["generate", ckpt, "Hi", "--cache", "latest-m4"])
    assert isinstance(res.exception, HuginnError) and "\n" not in str(res.exception)
    assert f"assumes a 4-layer core but this model's core has {n_core_layers} layers" in str(res.exception)
    assert f"use 'latest-m{n_core_layers}'" in str(res.exception)


def test_init_scale_defaults_to_the_models_everywhere(tmp_path, monkeypatch):
    """model.generate, the CLI and the functional `generate` all read an unset init_scale as the
    model's `state_init_scale` (here 0: a zero state, so every path gives the zero-state tokens)."""
    import huginn.checkpoint

    def zero_scale(model):
        model.model_config = dataclasses.replace(model.model_config, state_init_scale=0.0)
        return model

    ckpt = _checkpoint(tmp_path, 2)
    model = zero_scale(tiny_model(seed=1, n_layers_in_recurrent_block=2))
    tok = _byte_tokenizer(tmp_path)
    ids = torch.tensor([tok("Hi there")["input_ids"]])
    zero = model.generate(ids, max_new_tokens=8, init_scale=0.0)
    torch.manual_seed(0)
    noisy = model.generate(ids, max_new_tokens=8, init_scale=1.0)
    assert not torch.equal(zero, noisy)  # the check below can tell the defaults apart
    torch.manual_seed(0)
    assert torch.equal(model.generate(ids, max_new_tokens=8), zero)
    torch.manual_seed(0)
    assert torch.equal(generate(model, ids, Depth(4), Stopping(8)).sequences, zero)
    load = huginn.checkpoint.load_checkpoint
    monkeypatch.setattr(huginn.checkpoint, "load_checkpoint", lambda *a, **k: zero_scale(load(*a, **k)))
    torch.manual_seed(0)
    res = CliRunner().invoke(cli, ["generate", str(ckpt), "Hi there", "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip("\n") == "Hi there" + tok.decode(zero[0, ids.shape[1] :])


def test_do_not_exit_in_prefill_runs_the_prompt_at_full_depth(reference_model, expected, fixture_dir):
    threshold = json.loads((fixture_dir / "expected.json").read_text())["adaptive_thresholds"]["kl"]
    kw = dict(max_new_tokens=12, num_steps=16, criterion="kl", exit_threshold=threshold, init_scale=0.0)
    prompt = expected["input_ids"][:1, :10]
    out = reference_model.generate(prompt, return_dict_in_generate=True, do_not_exit_in_prefill=True, **kw)
    default = reference_model.generate(prompt, return_dict_in_generate=True, **kw)
    assert default.compute_steps[0, 0] < 16  # the prompt exits early by default
    assert out.compute_steps[0, 0] == 16 and bool((out.compute_steps[0, 1:] < 16).any())
    # the same through the typed API
    depth = Depth(16, KL(threshold), init_scale=0.0, exit_in_prefill=False)
    typed = generate(reference_model, prompt, depth, Stopping(12))
    assert torch.equal(typed.sequences, out.sequences) and torch.equal(typed.compute_steps, out.compute_steps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(use_cache=False), "use_cache=False is not supported"),
        (dict(num_return_sequences=2, do_sample=True), "does not implement num_return_sequences=2"),
        (dict(output_scores=True), "does not implement output_scores=True"),
        (dict(min_new_tokens=2), "does not implement min_new_tokens=2"),
        (dict(typical_p=0.5), "does not implement typical_p=0.5"),
        (dict(do_not_exit_in_prefill="yes"), "do_not_exit_in_prefill must be True or False"),
        (dict(cache_kwargs={"lookup_strategy": "full", "size": 3}), "cache_kwargs takes only lookup_strategy"),
        (dict(criterion=KL(), exit_threshold=1e-3), "a criterion object holds its own"),
        (dict(draft_steps=1, compile=True), "speculative decoding runs eagerly"),
        (dict(cache_lookup_strategy="latest-m2"), "assumes a 2-layer core but this model's core has 4 layers"),
    ],
)
def test_unsupported_generate_arguments_are_refused(reference_model, expected, kwargs, match):
    with pytest.raises(HuginnError, match=match) as err:
        reference_model.generate(expected["input_ids"][:1, :10], max_new_tokens=3, **kwargs)
    assert "\n" not in str(err.value)


def test_neutral_values_of_unimplemented_fields_are_fine(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    want = reference_model.generate(prompt, max_new_tokens=3, num_steps=2, init_scale=0.0)
    got = reference_model.generate(
        prompt,
        max_new_tokens=3,
        num_steps=2,
        init_scale=0.0,
        use_cache=True,
        num_return_sequences=1,
        output_scores=False,
        do_not_exit_in_prefill=False,
    )
    assert torch.equal(got, want)


def test_past_key_values_decodes_into_an_empty_cache_and_refuses_a_filled_one(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    cache = HuginnStaticCache.for_model(reference_model, 1, 4, 32)
    kw = dict(max_new_tokens=4, num_steps=4, init_scale=0.0, return_dict_in_generate=True)
    out = reference_model.generate(prompt, past_key_values=cache, **kw)
    assert out.past_key_values is cache and cache.get_seq_length() == 13
    assert torch.equal(out.sequences, reference_model.generate(prompt, **kw).sequences)
    with pytest.raises(HuginnError, match="must be empty"):
        reference_model.generate(prompt, past_key_values=cache, **kw)
    cache.reset()
    with pytest.raises(HuginnError, match="not both"):
        reference_model.generate(prompt, past_key_values=cache, cache_lookup_strategy="compress-s8", **kw)
    with pytest.raises(HuginnError, match="HuginnStaticCache"):
        reference_model.generate(prompt, past_key_values=object(), **kw)


@pytest.mark.parametrize(
    "spec, policy, core",
    [
        ("latest-m4-compress-s16", CachePolicy("cycle", 16, "latest"), 4),
        ("latest-m4", CachePolicy(), 4),
        ("latest", CachePolicy(), None),
        ("compress-s8", CachePolicy("cycle", 8, "latest"), None),
        ("compress-r2", CachePolicy("run", 2, "latest"), None),
        ("skip", CachePolicy(lookup="skip"), None),
        ("skip-compress-r2", CachePolicy("run", 2, "skip"), None),
        ("latest-m2-compress-s4", CachePolicy("cycle", 4, "latest"), 2),
    ],
)
def test_cache_strings_round_trip(spec, policy, core):
    parsed = CacheSpec.parse(spec)
    assert parsed == CacheSpec(policy, core) and str(parsed) == spec
    assert CacheSpec.parse(str(parsed)) == parsed


def test_reference_aliases_parse_to_the_same_policy():
    assert CacheSpec.parse("available-m4") == CacheSpec.parse("latest-m4")
    assert CacheSpec.parse("full").policy == CacheSpec.parse("skip").policy
    assert CacheSpec.parse(None) == CacheSpec() == CacheSpec.parse(CachePolicy())
    with pytest.raises(HuginnError, match="unknown cache lookup strategy"):
        CacheSpec.parse("nearest-m4")


@pytest.mark.parametrize("spec", ["kl:5e-4", "latent-diff", "argmax-stability:3", "minp-kl:1e-05", "none", "kl:0"])
def test_exit_strings_round_trip(spec):
    rule = ExitRule.parse(spec)
    assert ExitRule.parse(str(rule)) == rule
    assert ExitRule.parse("kl:5e-4") == ExitRule("kl", 5e-4) and str(ExitRule("kl", 5e-4)) == "kl:0.0005"
    assert str(ExitRule("latent-diff")) == "latent-diff" and not ExitRule().adaptive


def test_generate_keywords_become_one_options_value():
    opts = GenerationOptions.from_kwargs(
        dict(
            num_steps=(6, 2),
            criterion="kl",
            exit_threshold=5e-4,
            min_steps=2,
            check_criterion_every_n_steps=3,
            do_not_exit_in_prefill=True,
            cache_kwargs={"lookup_strategy": "latest-m4-compress-s16"},
            init_scale=0.5,
        ),
        Sampling(True, temperature=0.7),
    )
    assert opts == GenerationOptions(
        num_steps=8,
        exit=ExitRule("kl", 5e-4, min_steps=2, check_every=3, in_prefill=False),
        cache=CacheSpec.parse("latest-m4-compress-s16"),
        sampling=Sampling(True, temperature=0.7),
        init_scale=0.5,
    )
    assert GenerationOptions.from_kwargs({}) == GenerationOptions()  # init_scale None: the model's
    spec = GenerationOptions.from_kwargs(dict(draft_steps=2, lookahead_for_draft=3)).speculative
    assert spec == Speculation(2, 3, 1.0)
    depth = opts.for_model(tiny_model().model_config).depth()
    assert isinstance(depth.criterion, KL) and (depth.min_steps, depth.check_every) == (2, 3)
    assert depth.exit_in_prefill is False and depth.init_scale == 0.5


def test_for_model_fills_in_the_models_defaults():
    mc = tiny_model(n_layers_in_recurrent_block=2).model_config
    opts = GenerationOptions(speculative=Speculation()).for_model(mc)
    assert opts.num_steps == mc.mean_recurrence and opts.speculative == Speculation(1, 4, 1.0)
    with pytest.raises(HuginnError, match="use 'latest-m2-compress-s8' \\(or 'compress-s8'\\)"):
        GenerationOptions(cache=CacheSpec.parse("latest-m4-compress-s8")).for_model(mc)
