"""Sampling order and filters; stopping; one-line errors for bad generate arguments."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from huginn.errors import HuginnError
from huginn.infer.exits import ExitCriterion, make_criterion, parse_exit
from huginn.infer.sampling import Sampling, apply_repetition_penalty, next_token


def test_greedy_is_argmax_and_penalty_scales_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 1.5, 0.5]])
    assert next_token(logits, torch.tensor([[3]]), Sampling()).tolist() == [0]
    pen = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert pen.tolist() == [[1.0, -2.0, 1.5, 0.5]]
    assert next_token(logits, torch.tensor([[0]]), Sampling(repetition_penalty=2.0)).tolist() == [2]


def _top_p_oracle(probs, p):
    out = probs.clone()
    for i in range(probs.shape[0]):
        order = probs[i].argsort(descending=True)
        csum = probs[i][order].cumsum(0)
        for rank, idx in enumerate(order.tolist()):
            if rank > 0 and csum[rank] > p:
                out[i, idx] = 0
    return out


def test_top_p_and_min_p_filter_like_a_per_row_loop():
    torch.manual_seed(0)
    logits = torch.randn(5, 50) * 3
    probs = torch.softmax(logits, -1)
    want = _top_p_oracle(probs, 0.8)
    # sampling many times never yields a filtered token, and only kept tokens appear
    g = torch.Generator().manual_seed(1)
    draws = torch.stack(
        [next_token(logits, logits.argmax(-1, keepdim=True), Sampling(True, top_p=0.8), g) for _ in range(300)], 1
    )
    for i in range(5):
        assert set(draws[i].tolist()) <= set(want[i].nonzero().flatten().tolist())
    draws = torch.stack([next_token(logits, logits[:, :1].long(), Sampling(True, min_p=0.5), g) for _ in range(200)], 1)
    for i in range(5):
        keep = (probs[i] >= 0.5 * probs[i].max()).nonzero().flatten().tolist()
        assert set(draws[i].tolist()) <= set(keep)


def test_top_k_one_is_greedy_and_a_generator_makes_sampling_reproducible():
    logits = torch.randn(3, 40)
    s = Sampling(True, temperature=0.7, top_k=1)
    assert torch.equal(next_token(logits, logits[:, :1].long(), s), logits.argmax(-1))
    a = next_token(logits, logits[:, :1].long(), Sampling(True), torch.Generator().manual_seed(3))
    b = next_token(logits, logits[:, :1].long(), Sampling(True), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_eos_stops_a_row_and_pads_it(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    full = reference_model.generate(prompt, max_new_tokens=12, num_steps=4, init_scale=0.0)
    eos = int(full[0, 13])
    out = reference_model.generate(
        prompt, max_new_tokens=12, num_steps=4, init_scale=0.0, eos_token_id=eos, pad_token_id=7
    )
    first = (full[0, 10:] == eos).nonzero()[0].item() + 10
    assert torch.equal(out[0, : first + 1], full[0, : first + 1])
    assert out.shape[1] == first + 1  # the only row stopped: generation ends


def test_sampling_through_generate_is_seeded(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    gc = GenerationConfig(do_sample=True, temperature=0.8, top_k=50, top_p=0.9, min_p=0.01, max_new_tokens=6)
    a = reference_model.generate(prompt, gc, num_steps=2, generator=torch.Generator().manual_seed(0))
    b = reference_model.generate(prompt, gc, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1, 16)


def test_streamer_receives_prompt_then_each_token(reference_model, expected):
    class Recorder:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, t):
            self.parts.append(t.clone())

        def end(self):
            self.ended = True

    rec = Recorder()
    prompt = expected["input_ids"][:1, :10]
    out = reference_model.generate(prompt, max_new_tokens=5, num_steps=2, init_scale=0.0, streamer=rec)
    assert rec.ended and torch.equal(rec.parts[0], prompt)
    assert torch.cat([p.flatten() for p in rec.parts[1:]]).tolist() == out[0, 10:].tolist()


def test_custom_criterion_object(reference_model, expected):
    class AfterThree:
        uses_logits = False

        def reset(self, state, mask):
            self.n = 0

        def check(self, state, logits, mask):
            self.n += 1
            return torch.full((state.shape[0],), self.n >= 3)

    assert isinstance(AfterThree(), ExitCriterion)
    out = reference_model.generate(
        expected["input_ids"][:1, :10],
        max_new_tokens=4,
        num_steps=8,
        criterion=AfterThree(),
        init_scale=0.0,
        return_dict_in_generate=True,
    )
    assert out.compute_steps.tolist() == [[3, 3, 3, 3]]


def test_never_exiting_criterion_equals_fixed_depth(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    never = reference_model.generate(
        prompt,
        max_new_tokens=8,
        num_steps=5,
        criterion="latent-diff",
        exit_threshold=0.0,  # a relative distance is never < 0
        init_scale=0.0,
        return_dict_in_generate=True,
    )
    fixed = reference_model.generate(prompt, max_new_tokens=8, num_steps=5, init_scale=0.0)
    assert torch.equal(never.sequences, fixed) and bool((never.compute_steps == 5).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(criterion="entropy"), "unknown exit criterion 'entropy'; valid: entropy-diff"),
        (dict(criterion="kl", exit_threshold="high"), "exit_threshold for kl must be a number"),
        (dict(criterion="argmax-stability", exit_threshold=2.5), "integer"),
        (dict(criterion="argmax-stability", exit_threshold=0), "an integer >= 1"),
        (dict(criterion="kl", exit_threshold=-1.0), "exit_threshold for kl must be >= 0"),
        (dict(criterion="latent-diff", exit_threshold=-0.1), "exit_threshold for latent-diff must be >= 0"),
        (dict(criterion="none", exit_threshold=5), "criterion 'none' never exits and takes no exit_threshold"),
        (dict(num_step=4), "did you mean 'num_steps'"),
        (dict(cache_lookup_strategy="nearest-m4"), "unknown cache lookup strategy"),
        (dict(num_steps=0), "num_steps must be an integer >= 1"),
        (dict(min_steps=-1), "min_steps"),
        (dict(bogus=1), "unknown argument"),
        (dict(max_new_tokens=200), "exceeds the block size 128"),
        (dict(num_beams=2), "beam search"),
    ],
)
def test_bad_arguments_raise_one_line(reference_model, expected, kwargs, match):
    kwargs.setdefault("max_new_tokens", 3)
    with pytest.raises(HuginnError, match=match) as err:
        reference_model.generate(expected["input_ids"][:1, :10], **kwargs)
    assert "\n" not in str(err.value)


def test_prompt_longer_than_block_size(reference_model):
    with pytest.raises(HuginnError, match="longer than the block size"):
        reference_model.generate(torch.zeros(1, 129, dtype=torch.long), max_new_tokens=1)


def test_parse_exit():
    assert parse_exit("kl:5e-4") == ("kl", 5e-4)
    assert parse_exit("latent-diff") == ("latent-diff", "auto")
    assert parse_exit("kl:0") == ("kl", 0.0)  # allowed: never exits
    assert parse_exit("argmax-stability:1") == ("argmax-stability", 1.0)
    assert parse_exit("none") == ("none", "auto")
    with pytest.raises(HuginnError, match="not a number"):
        parse_exit("kl:abc")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("kl:-1", "exit_threshold for kl must be >= 0"),
        ("minp-kl:-1e-5", "exit_threshold for minp-kl must be >= 0"),
        ("entropy-diff:-0.5", "exit_threshold for entropy-diff must be >= 0"),
        ("cosine:-1", "exit_threshold for cosine must be >= 0"),
        ("argmax-stability:0", "an integer >= 1"),
        ("argmax-stability:-3", "an integer >= 1"),
        ("argmax-stability:2.5", "an integer >= 1"),
        ("none:5", "exit criterion 'none' takes no threshold"),
        ("none:", "exit criterion 'none' takes no threshold"),
        ("kl:nan", "must be a number"),
    ],
)
def test_parse_exit_checks_the_threshold_by_criterion(spec, match):
    with pytest.raises(HuginnError, match=match) as err:
        parse_exit(spec)
    assert "\n" not in str(err.value)
    assert make_criterion("none") is None
    with pytest.raises(HuginnError, match="reset"):
        make_criterion(42)  # type: ignore[arg-type]


def test_generate_output_carries_the_cache_under_the_model_cards_name(caplog):
    """`out.past_key_values` (the model card's name) is the generation's cache, without the
    deprecation warning transformers gives for that name once its field is called `cache`."""
    import logging

    from huginn.infer.kv_cache import HuginnStaticCache
    from tests.conftest import tiny_model

    model = tiny_model(seed=2)
    with caplog.at_level(logging.WARNING):
        out = model.generate(
            torch.ones(1, 3, dtype=torch.long),
            max_new_tokens=3,
            num_steps=2,
            init_scale=0.0,
            return_dict_in_generate=True,
        )
        cache = out.past_key_values
    assert isinstance(cache, HuginnStaticCache) and cache.length == 5
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
