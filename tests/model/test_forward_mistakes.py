"""The Python API's contract for its inputs: every spelling of num_steps that reference users pass
works the same in forward and generate; misspelled keywords and malformed ids, masks and
init_scale are one-line HuginnErrors naming the argument."""

import numpy as np
import pytest
import torch

from huginn import HuginnError, RecurrentLM, named_shape
from huginn.model.recurrent import normalize_steps
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))


def _logits(model, ids, num_steps, **kw):
    with torch.no_grad():
        return model(ids, num_steps=num_steps, init_scale=0.0, **kw).logits


@pytest.mark.parametrize(
    "spelling, want",
    [
        (3, (0, 3)),
        (np.int64(3), (0, 3)),
        (torch.tensor(3), (0, 3)),
        (torch.tensor([3]), (0, 3)),
        ((1, 2), (1, 2)),
        ([1, 2], (1, 2)),
        ((torch.tensor(1), torch.tensor(2)), (1, 2)),  # the reference's training code
        ((0, torch.tensor(3, dtype=torch.int32)), (0, 3)),
        (None, (0, 4)),  # the tiny shape's mean_recurrence
    ],
)
def test_num_steps_spellings(spelling, want):
    assert normalize_steps(spelling, 4) == want


def test_num_steps_same_in_forward_and_generate(model, ids):
    fixed = _logits(model, ids, 3)
    for spelling in (torch.tensor(3), (torch.tensor(1), torch.tensor(2)), [0, 3]):
        torch.testing.assert_close(_logits(model, ids, spelling), fixed, atol=0, rtol=0)
    want = model.generate(ids[:1], max_new_tokens=3, num_steps=3, init_scale=0.0)
    for spelling in (torch.tensor(3), (torch.tensor(1), torch.tensor(2)), (2, 1)):
        got = model.generate(ids[:1], max_new_tokens=3, num_steps=spelling, init_scale=0.0)
        assert torch.equal(got, want)


def test_num_steps_pair_runs_first_steps_without_grad(model, ids):
    model.train()
    try:
        out = model(ids, num_steps=(torch.tensor(2), torch.tensor(1)), init_scale=0.0)
    finally:
        model.eval()
    out.logits.sum().backward()
    assert model.transformer.core_block[0].attn.Wqkv.weight.grad is not None
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([4, 4]), "not read as a pair; pass a tuple"),
        (torch.tensor([[4]]), "single count"),
        (torch.tensor([1, 2, 3]), "single count"),
        (2.0, "must be an integer"),
        (torch.tensor(2.0), "must be an integer"),
        (True, "must be an integer"),
        ("4", "must be an integer"),
        (0, "num_steps must be an integer >= 1"),
        (-2, "num_steps must be an integer >= 1"),
        ((0, 0), "at least 1 step"),
        ((-1, 3), "non-negative"),
        ((1, 2, 3), "pair must have 2 entries"),
        ((1.5, 2), "num_steps\\[0\\]"),
    ],
)
def test_bad_num_steps_in_forward_and_generate(model, ids, bad, match):
    with pytest.raises(HuginnError, match=match) as err:
        model(ids, num_steps=bad)
    assert "num_steps" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(HuginnError, match=match):
        model.generate(ids[:1], max_new_tokens=2, num_steps=bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_step=1), "'num_step'; did you mean 'num_steps'"),
        (dict(init_scal=0.0), "'init_scal'; did you mean 'init_scale'"),
        (dict(atention_mask=None), "did you mean 'attention_mask'"),
        (dict(zzz=1), "'zzz'; valid: "),
    ],
)
def test_misspelled_keywords_are_refused(model, ids, kwargs, match):
    with pytest.raises(HuginnError, match=match):
        model(ids, **kwargs)
    core = RecurrentLM(named_shape("tiny")).eval()
    with pytest.raises(HuginnError, match=match.split(";")[0]):
        core(ids, **kwargs)


def test_transformers_machinery_keywords_are_accepted(model, ids):
    want = _logits(model, ids, 2)
    got = _logits(
        model,
        ids,
        2,
        output_attentions=False,
        output_hidden_states=True,
        return_dict=True,
        cache_position=torch.arange(7),
        use_cache=False,
        past_key_values=None,
        inputs_embeds=None,
        token_type_ids=torch.zeros_like(ids),
        attention_mask=torch.ones_like(ids),
        position_ids=torch.arange(7)[None],
        labels=None,
    )
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(HuginnError, match="inputs_embeds is not supported"):
        model(ids, inputs_embeds=torch.zeros(2, 7, 64))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ids: dict(input_ids=ids.float()), "input_ids must hold integer token ids"),
        (lambda ids: dict(input_ids=ids + 256), r"input_ids must lie in \[0, 256\)"),
        (lambda ids: dict(input_ids=ids - 300), r"input_ids must lie in \[0, 256\)"),
        (lambda ids: dict(input_ids=ids[0]), "input_ids must be 2-D"),
        (lambda ids: dict(input_ids=ids.tolist()), "input_ids must be a"),
        (lambda ids: dict(input_ids=ids, attention_mask=torch.ones(2, 1, 7)), "attention_mask must be 2-D"),
        (lambda ids: dict(input_ids=ids, attention_mask=torch.ones(3, 7)), "attention_mask must be 2-D"),
        (lambda ids: dict(input_ids=ids, attention_mask=torch.ones(2, 5)), "attention_mask has 5 columns"),
        (lambda ids: dict(input_ids=ids, attention_mask=torch.full((2, 7), 2)), "attention_mask must hold only 0"),
        (lambda ids: dict(input_ids=ids, attention_mask=torch.full((2, 7), 0.5)), "attention_mask must hold only 0"),
        (lambda ids: dict(input_ids=ids, init_scale=-1.0), "init_scale must be >= 0"),
        (lambda ids: dict(input_ids=ids, init_scale=float("nan")), "init_scale must be a number"),
    ],
)
def test_malformed_inputs_are_named(model, ids, make, match):
    kwargs = make(ids)
    with pytest.raises(HuginnError, match=match) as err:
        model(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention_mask=torch.full((1, 7), 3)), "attention_mask must hold only 0"),
        (dict(attention_mask=torch.ones(1, 5)), "attention_mask has shape"),
        (dict(init_scale=-0.5), "init_scale must be >= 0"),
    ],
)
def test_generate_checks_mask_and_init_scale(model, ids, kwargs, match):
    with pytest.raises(HuginnError, match=match):
        model.generate(ids[:1], max_new_tokens=2, **kwargs)
    with pytest.raises(HuginnError, match=r"input_ids must lie in \[0, 256\)"):
        model.generate(ids[:1] + 256, max_new_tokens=2)


def test_a_float_bool_mask_of_ones_is_fine(model, ids):
    want = _logits(model, ids, 2)
    for mask in (torch.ones(2, 7), torch.ones(2, 7, dtype=torch.bool)):
        torch.testing.assert_close(_logits(model, ids, 2, attention_mask=mask), want, atol=0, rtol=0)
