"""The lm-eval model `huginn` on tiny models: batched == one request at a time == a direct forward,
rolling windows, generation == model.generate, and a retrofitted Llama == lm-eval's own hf model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lm_eval")

from huginn.eval.lm import HuginnLM
from huginn.eval.score import Tally, loglikelihoods
from huginn.infer.exits import make_criterion
from huginn.infer.generate import Depth
from tests.conftest import tiny_model
from tests.eval.eval_helpers import char_tokenizer, instances

CONTEXTS = ["The cat sat on", "Q: 12+7=? A:", "x", "Once upon a time there was a long story about"]
CHOICES = [" the mat", " 19", " a dog and a frog", " y"]
TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def lm_at(model, tok, **kw) -> HuginnLM:
    return HuginnLM(pretrained=model, tokenizer=tok, **kw)


def requests():
    """Every context with every choice (shared contexts), plus an empty context."""
    return [(c, x) for c in CONTEXTS for x in CHOICES] + [("", "standalone text")]


@torch.no_grad()
def direct(model, lm: HuginnLM, context: str, continuation: str, num_steps: int) -> tuple[float, bool]:
    """One unbatched forward of context + continuation; the continuation's summed log-probs."""
    if context:
        c, x = lm._encode_pair(context, continuation)
    else:
        c, x = [lm.prefix_token_id], lm.tok_encode(continuation, add_special_tokens=False)
    ids = torch.tensor([(c + x)[:-1]])
    logits = model(ids, num_steps=num_steps, init_scale=0.0).logits[0, -len(x) :, : model.model_config.vocab_size]
    logp = logits.float().log_softmax(-1)
    t = torch.tensor(x)
    return float(logp.gather(-1, t[:, None]).sum()), bool((logp.argmax(-1) == t).all())


@pytest.mark.parametrize("num_steps, batch_size", [(1, 8), (8, 8), (8, 3)])
def test_loglikelihood_batched_equals_direct_forward(model, tok, num_steps, batch_size):
    """Batches hold shared contexts of different lengths (padded) and unshared requests."""
    reqs = requests()
    lm = lm_at(model, tok, num_steps=num_steps, batch_size=batch_size)
    got = lm.loglikelihood(instances("loglikelihood", reqs))
    want = [direct(model, lm, c, x, num_steps) for c, x in reqs]
    for (lp, greedy), (wlp, wgreedy) in zip(got, want, strict=True):
        assert abs(lp - wlp) < TOL * max(1.0, abs(wlp))
        assert greedy == wgreedy
    assert lm.tally.mean_steps == num_steps
    # the depth matters (so the comparison above could fail)
    other = lm_at(model, tok, num_steps=num_steps + 3, batch_size=batch_size).loglikelihood(
        instances("loglikelihood", reqs)
    )
    assert max(abs(a[0] - b[0]) for a, b in zip(got, other, strict=True)) > 1e-3


def test_greedy_flag_can_be_true(model, tok):
    """A continuation made of the model's own greedy tokens is flagged greedy."""
    lm = lm_at(model, tok, num_steps=4)
    c = lm.tok_encode("Hello")
    ids = torch.tensor([c])
    with torch.no_grad():
        nxt = int(model(ids, num_steps=4, init_scale=0.0).logits[0, -1, : model.model_config.vocab_size].argmax())
    _, greedy = loglikelihoods(model, [(c, [nxt])], lm.depth(), 1)[0]
    assert greedy


def test_loglikelihood_with_exit_is_per_sequence_in_batches(model, tok):
    """Each row exits on its own: batched == one request at a time == a direct forward at the
    depth that request exited at."""
    reqs = requests()
    pairs = [lm_at(model, tok)._encode_pair(c, x) if c else None for c, x in reqs]
    pairs = [p for p in pairs if p is not None]
    depth = lambda: Depth(24, make_criterion("latent-diff", 0.02), init_scale=0.0)
    batched = loglikelihoods(model, pairs, depth(), 5)
    steps = []
    for pair, (lp, greedy) in zip(pairs, batched, strict=True):
        tally = Tally()
        (alone,) = loglikelihoods(model, [pair], depth(), 1, tally=tally)
        assert abs(alone[0] - lp) < TOL * max(1.0, abs(lp)) and alone[1] == greedy
        n = round(tally.mean_steps)
        steps.append(n)
        c, x = pair
        ids = torch.tensor([(c + x)[:-1]])
        with torch.no_grad():
            logits = model(ids, num_steps=n, init_scale=0.0).logits[0, -len(x) :, : model.model_config.vocab_size]
        want = float(logits.float().log_softmax(-1).gather(-1, torch.tensor(x)[:, None]).sum())
        assert abs(want - lp) < TOL * max(1.0, abs(want))
    assert len(set(steps)) > 1 and max(steps) < 24  # rows exited early, at different depths


def test_loglikelihood_rolling_equals_the_windows(model, tok):
    from lm_eval import utils

    text = "The quick brown fox jumps over the lazy dog. " * 3  # 135 characters
    lm = lm_at(model, tok, num_steps=4, max_length=40, batch_size=3)
    (got,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))
    ids = lm.tok_encode(text)
    windows = [
        utils.make_disjoint_window(w)
        for w in utils.get_rolling_token_windows(ids, lm.prefix_token_id, max_seq_len=40, context_len=1)
    ]
    assert len(windows) >= 4
    want = 0.0
    for c, x in windows:
        inp = torch.tensor([(c + x)[:-1]])
        assert inp.shape[1] <= 40
        with torch.no_grad():
            logits = model(inp, num_steps=4, init_scale=0.0).logits[0, -len(x) :, : model.model_config.vocab_size]
        want += float(logits.float().log_softmax(-1).gather(-1, torch.tensor(x)[:, None]).sum())
    assert abs(got - want) < TOL * abs(want)


@pytest.mark.parametrize("exit_rule", [None, "latent-diff"])
def test_generate_until_equals_model_generate(model, tok, exit_rule):
    prompts = ["Hi", "The cat sat on the", "Q: what is 2+2? A:", "abc", "A much longer prompt than the others"]
    until = ["e", "?"]
    kw = dict(criterion=exit_rule, exit_threshold=0.05) if exit_rule else {}
    lm = lm_at(model, tok, num_steps=6, batch_size=3, **kw)
    got = lm.generate_until(instances("generate_until", [(p, {"until": until, "max_gen_toks": 12}) for p in prompts]))
    cut = 0
    for p, text in zip(prompts, got, strict=True):
        ids = torch.tensor([lm.tok_encode(p)])
        extra = dict(criterion=exit_rule, exit_threshold=0.05) if exit_rule else {}
        out = model.generate(
            ids,
            num_steps=6,
            init_scale=0.0,
            max_new_tokens=12,
            do_sample=False,
            stop_strings=until,
            tokenizer=tok,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **extra,
        )
        want = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        cut += any(s in want for s in until)
        for s in until:
            want = want.split(s)[0]
        assert text == want
    assert cut > 0  # some generation did stop at a stop string


def test_retrofitted_llama_equals_lm_eval_hf(tok):
    """The identity-mapped retrofit of a tiny random Llama at one step scores like lm-eval's own
    `--model hf` on the Llama (loglikelihood and rolling)."""
    from lm_eval.models.huggingface import HFLM

    from huginn.retrofit import LayerMap, convert
    from tests.retrofit.helpers import tiny_base

    base = tiny_base("llama-gqa-tied")
    model = convert(base, LayerMap((0, 1), (2, 3, 4), (5,)), "identity")
    reqs = requests()
    ours = HuginnLM(pretrained=model, tokenizer=tok, num_steps=1, batch_size=4, max_length=48)
    theirs = HFLM(pretrained=base, tokenizer=tok, batch_size=4, max_length=48, device="cpu")
    got = ours.loglikelihood(instances("loglikelihood", reqs))
    want = theirs.loglikelihood(instances("loglikelihood", reqs))
    assert max(abs(a[0]) for a in want) > 1.0
    for (lp, g), (wlp, wg) in zip(got, want, strict=True):
        assert abs(lp - wlp) < 1e-4 * max(1.0, abs(wlp)) and g == wg
    text = [("A rolling text longer than one window of forty-eight characters, twice over. " * 2,)]
    (r,) = ours.loglikelihood_rolling(instances("loglikelihood_rolling", text))
    (wr,) = theirs.loglikelihood_rolling(instances("loglikelihood_rolling", text))
    assert abs(r - wr) < 1e-4 * abs(wr)


def test_bad_model_args_are_one_line(model, tok):
    from huginn.errors import HuginnError

    for kw, needle in [
        (dict(num_step=4), "did you mean 'num_steps'"),
        (dict(num_steps=0), "num_steps must be an integer >= 1"),
        (dict(num_steps="x"), "num_steps"),
        (dict(criterion="nope"), "nope"),
        (dict(exit_threshold=0.1), "needs criterion"),
        (dict(dtype="int8"), "dtype"),
        (dict(num_steps=4, mean_recurrence=8), "same setting"),
        (dict(max_length=100_000), "block size"),
        (dict(init_scale="big"), "init_scale"),
        (dict(batch_size="many"), "batch_size"),
    ]:
        with pytest.raises(HuginnError, match=needle) as err:
            lm_at(model, tok, **kw)
        assert "\n" not in str(err.value)
    lm = lm_at(model, tok, mean_recurrence="5")
    assert lm.setting.num_steps == 5


def test_auto_batch_size_scores_the_same(model, tok):
    reqs = instances("loglikelihood", requests())
    auto = lm_at(model, tok, num_steps=2, batch_size="auto", max_batch_size=16)
    one = lm_at(model, tok, num_steps=2, batch_size=1)
    assert auto._batch_for(64) in (1, 2, 4, 8, 16)
    got, want = auto.loglikelihood(reqs), one.loglikelihood(reqs)
    for (a, _), (b, _) in zip(got, want, strict=True):
        assert abs(a - b) < TOL * max(1.0, abs(b))
