"""The parallel (diffusion-forcing) sampler: exact in its degenerate settings, batched == solo,
frozen tokens re-score, one-line errors, the cost it reports, `model.generate` and the CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from huginn.cli import cli
from huginn.errors import HuginnError
from huginn.infer import compiled
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.parallel import ParallelSampling, default_policy, parallel_generate
from huginn.infer.sampling import Sampling
from huginn.model.recurrence import Schedule
from tests.infer.test_batching import _left_pad, _prompts

COMPRESS_S4 = default_policy(4, 1, 4)  # the fixture's 4-layer core: one slot per core layer


def _parallel(model, ids, n, new, mask=None, **knobs):
    return parallel_generate(
        model, ids, Depth(n, init_scale=0.0), Stopping(new), ParallelSampling(**knobs), attention_mask=mask
    )


def test_default_policy_is_kv_sharing_unless_one_forward_per_position():
    assert (COMPRESS_S4.share, COMPRESS_S4.n) == ("cycle", 4)
    assert default_policy(4, 8, 8).share == "none"


def test_wavefront_one_without_freezing_is_the_reference_greedy(reference_model, expected):
    """One position, num_steps in one forward: the published greedy tokens (any cache policy)."""
    out = reference_model.generate(
        expected["input_ids"][:1, :10],
        max_new_tokens=12,
        num_steps=4,
        init_scale=0.0,
        sampler="parallel",
        wavefront=1,
        inner_recurrence=4,
        freeze_strategy="fixed",
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, expected["generate_greedy_steps4"])
    assert out.compute_steps.tolist() == [[4] * 12]
    assert out.forwards == 12 and out.sampler_stats["early_freezes"] == 0


@pytest.mark.parametrize("inner", [1, 2])
def test_wavefront_one_in_several_forwards_equals_sequential_greedy(reference_model, expected, inner):
    """Each token's steps spread over num_steps / inner forwards (states carried, KV rewritten)."""
    ids = expected["input_ids"][1:2, :9]
    seq = generate(reference_model, ids, Depth(4, init_scale=0.0), Stopping(10), policy=COMPRESS_S4)
    par = _parallel(reference_model, ids, 4, 10, wavefront=1, inner_steps=inner, freeze_threshold=None)
    assert torch.equal(par.sequences, seq.sequences)
    assert torch.equal(par.compute_steps, seq.compute_steps)
    assert par.extras["forwards"] == 1 + 9 * (4 // inner)


def test_wavefront_one_in_a_padded_batch_equals_sequential_greedy(reference_model, expected):
    ids, mask = _left_pad(_prompts(expected))
    seq = generate(reference_model, ids, Depth(6, init_scale=0.0), Stopping(8), attention_mask=mask, policy=COMPRESS_S4)
    par = _parallel(reference_model, ids, 6, 8, mask, wavefront=1, inner_steps=2, freeze_threshold=None)
    assert torch.equal(par.sequences, seq.sequences)
    assert torch.equal(par.compute_steps, seq.compute_steps)


def test_batched_equals_one_at_a_time_with_freezing_and_eos(reference_model, expected):
    """Rows freeze on their own (holes in the shared cache columns) and stop at eos on their own."""
    prompts = _prompts(expected)
    ids, mask = _left_pad(prompts)
    knobs = dict(wavefront=4, inner_steps=2, freeze_threshold=0.3)
    free = _parallel(reference_model, ids, 16, 10, mask, **knobs)
    T = ids.shape[1]
    eos = int(free.sequences[1, T + 4])  # row 1 stops at its fifth token
    stopping = Stopping(10, eos_ids=(eos,), pad_token_id=0)
    sampler = ParallelSampling(**knobs)
    batch = parallel_generate(reference_model, ids, Depth(16, init_scale=0.0), stopping, sampler, attention_mask=mask)
    early = 0
    for i, p in enumerate(prompts):
        solo = parallel_generate(reference_model, p[None], Depth(16, init_scale=0.0), stopping, sampler)
        n = solo.sequences.shape[1] - len(p)
        assert torch.equal(batch.sequences[i, T : T + n], solo.sequences[0, len(p) :]), i
        assert torch.equal(batch.compute_steps[i, :n], solo.compute_steps[0]), i
        assert (batch.sequences[i, T + n :] == 0).all() and (batch.compute_steps[i, n:] == 0).all()
        early += solo.extras["early_freezes"]
    assert early > 0 and (batch.compute_steps[:, 1:] < 16).any()  # positions did freeze early
    assert (batch.sequences[1, T + 5 :] == 0).all() and int(batch.sequences[1, T + 4]) == eos
    assert batch.cache.get_seq_length() > T + 10  # rows committed different counts: holes in the cache


@pytest.mark.compile
def test_compiled_wavefront_equals_eager_in_a_padded_batch(reference_model, expected):
    """compile=True runs every wavefront forward as one compiled graph (the wavefront's width a
    dynamic dimension) and gives the eager sampler's tokens, step counts and forwards."""
    ids, mask = _left_pad(_prompts(expected))
    knobs = ParallelSampling(wavefront=4, inner_steps=2, freeze_threshold=0.3)
    depth, stopping = Depth(16, init_scale=0.0), Stopping(10)
    eager = parallel_generate(reference_model, ids, depth, stopping, knobs, attention_mask=mask)
    graph = compiled.compiled_graph("span")
    widths = []

    def spy(model, ids, *args):
        widths.append(ids.shape[1])
        return graph(model, ids, *args)

    compiled._compiled["span"] = spy
    try:
        comp = parallel_generate(reference_model, ids, depth, stopping, knobs, attention_mask=mask, compile=True)
    finally:
        compiled._compiled["span"] = graph
    assert torch.equal(comp.sequences, eager.sequences)
    assert torch.equal(comp.compute_steps, eager.compute_steps)
    assert comp.extras["forwards"] == eager.extras["forwards"]
    assert len(widths) == comp.extras["forwards"] - 1  # every wavefront forward (the prompt's runs eagerly)
    assert len(set(widths)) >= 3 and min(widths) >= 2  # several widths, a lone position padded to two
    # other prompt lengths, wavefronts, thresholds and lengths reuse the graph (dynamo's recompile
    # limit would otherwise stop a benchmark's sweep): at most one more graph for all of them
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for n, W, thr, new in [(3, 3, 0.1, 7), (5, 6, 0.05, 9), (4, 5, None, 12)]:
        sweep = ParallelSampling(wavefront=W, inner_steps=2, freeze_threshold=thr)
        one = expected["input_ids"][:1, :n]
        eager = parallel_generate(reference_model, one, depth, Stopping(new), sweep)
        comp = parallel_generate(reference_model, one, depth, Stopping(new), sweep, compile=True)
        assert torch.equal(comp.sequences, eager.sequences) and torch.equal(comp.compute_steps, eager.compute_steps)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 2


def _states(model, ids, num_steps, init):
    ctx = model.context(1, ids.shape[1], None, None, None)
    e = model.embed(ids, ctx)
    return model.recur(init if init is not None else torch.zeros_like(e), e, ctx, Schedule.plain(num_steps)).state


@torch.no_grad()
@pytest.mark.parametrize("row", [0, 1])
def test_frozen_tokens_rescore_under_a_full_depth_forward(reference_model, expected, row):
    """Every committed state was computed from the token that ended up at its position, its readout
    over the final sequence gives exactly the emitted tokens, and wherever the sampler froze a
    position early (converged) a full-depth forward of the final sequence picks the same token."""
    model, n = reference_model, 32
    ids = expected["input_ids"][row : row + 1, :12]
    res = parallel_generate(
        model,
        ids,
        Depth(n, init_scale=0.0),
        Stopping(20),
        ParallelSampling(wavefront=4, inner_steps=4, freeze_threshold=0.03),
        record_states=True,
    )
    T, seq = ids.shape[1], res.sequences
    states = torch.stack(res.extras["states"][0])[None]  # (1, N, d) committed positions T .. T+N-1
    N = states.shape[1]
    early = torch.tensor(res.extras["early"][0])
    assert N == 19 and int(early.sum()) >= 10 and res.extras["early_freezes"] == int(early.sum())
    assert res.extras["inputs"][0] == seq[0, T : T + N].tolist()
    ctx = model.context(1, T + N, None, None, None)
    prompt = _states(model, seq[:, :T], n, None)
    readout = model.predict(torch.cat([prompt, states], dim=1), ctx)[0][0, T:].argmax(-1)
    assert torch.equal(readout, seq[0, T + 1 : T + N + 1])
    full = model.predict(_states(model, seq[:, : T + N], n, None), ctx)[0][0, T:].argmax(-1)
    assert torch.equal(full[early], seq[0, T + 1 : T + N + 1][early])


def test_sampling_is_seeded_and_streams_frozen_tokens(reference_model, expected):
    class Collect:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    ids = expected["input_ids"][:1, :10]
    kw = dict(
        max_new_tokens=12,
        num_steps=8,
        do_sample=True,
        temperature=0.8,
        top_k=20,
        top_p=0.9,
        min_p=0.05,
        sampler="parallel",
        wavefront=4,
        inner_recurrence=2,
        continuous_compute=True,
    )
    stream = Collect()
    a = reference_model.generate(ids, generator=torch.Generator().manual_seed(1), streamer=stream, **kw)
    b = reference_model.generate(ids, generator=torch.Generator().manual_seed(1), **kw)
    c = reference_model.generate(ids, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert stream.ended and stream.parts[0] == ids[0].tolist()
    assert [t for part in stream.parts[1:] for t in part] == a[0, 10:].tolist()


def test_parallel_generate_refuses_what_it_does_not_do(reference_model, expected):
    ids = expected["input_ids"][:1, :6]
    with pytest.raises(HuginnError, match="repetition_penalty"):
        parallel_generate(
            reference_model, ids, Depth(4), Stopping(3), ParallelSampling(), Sampling(repetition_penalty=1.3)
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="parallel", wavefront=0), "wavefront must be an integer >= 1"),
        (dict(sampler="parallel", max_wavefront=-2), "wavefront must be an integer >= 1"),
        (dict(sampler="parallel", freeze_threshold=-0.1), "freeze_threshold must be a number >= 0"),
        (dict(sampler="parallel", inner_recurrence=0), "inner_steps must be an integer >= 1"),
        (dict(sampler="parallel", num_steps=6), r"num_steps \(6\) must be a multiple of inner_recurrence \(4\)"),
        (dict(sampler="parallel", draft_steps=2), "do not compose"),
        (dict(sampler="parallel", criterion="kl"), "drop criterion"),
        (dict(sampler="parallel", compile="frozen"), "drop .frozen."),
        (dict(sampler="parallel", state_noise_mixing=2.0), "state_noise_mixing must be a number in"),
        (dict(sampler="diffusion"), "unknown sampler 'diffusion'; valid: sequential, parallel"),
        (dict(sampler="sequential", wavefront=4), "apply to sampler='parallel'"),
        (dict(headway=2), "headway must be 1"),
        (dict(freeze_strategy="token-stability"), "unknown freeze_strategy"),
        (dict(freeze_strategy="fixed", exit_t=0.1), "drop freeze_threshold"),
        (dict(wavefront=2, max_wavefront=3), "same knob"),
    ],
)
def test_bad_knobs_are_one_line_errors(reference_model, expected, kwargs, match):
    with pytest.raises(HuginnError, match=match) as err:
        reference_model.generate(expected["input_ids"][:1, :6], max_new_tokens=3, **kwargs)
    assert "\n" not in str(err.value)


def test_cli_parallel_prints_the_text_and_the_cost(fixture_dir, tmp_path):
    from tests.infer.test_cli import _byte_tokenizer

    _byte_tokenizer(tmp_path)
    base = ["generate", str(fixture_dir), "The raven", "--tokenizer", str(tmp_path), "--init-scale", "0"]
    base += ["--max-new-tokens", "8", "--num-steps", "4"]
    plain = CliRunner().invoke(cli, base)
    par = CliRunner().invoke(cli, [*base, "--parallel", "--wavefront", "1", "--freeze-threshold", "0", "--stream"])
    assert par.exit_code == 0, par.output
    assert par.stdout == plain.stdout  # the degenerate setting: the sequential text
    assert "parallel: 8 forwards, 1.00/token" in par.stderr and "x1.00" in par.stderr
    fast = CliRunner().invoke(cli, [*base, "--parallel", "--wavefront", "4", "--inner-recurrence", "2"])
    assert fast.exit_code == 0 and "/token (one at a time: 1.00)" in fast.stderr
    wrong = CliRunner().invoke(cli, [*base, "--wavefront", "4"])
    assert isinstance(wrong.exception, HuginnError) and "--wavefront needs --parallel" in str(wrong.exception)


@pytest.mark.compile
def test_cli_parallel_compiled_prints_the_eager_text(fixture_dir, tmp_path):
    from tests.infer.test_cli import _byte_tokenizer

    _byte_tokenizer(tmp_path)
    base = ["generate", str(fixture_dir), "The raven", "--tokenizer", str(tmp_path), "--init-scale", "0"]
    base += ["--max-new-tokens", "8", "--num-steps", "4", "--parallel", "--wavefront", "4", "--inner-recurrence", "2"]
    eager = CliRunner().invoke(cli, base)
    comp = CliRunner().invoke(cli, [*base, "--compile"])
    assert comp.exit_code == 0, comp.output
    assert comp.stdout == eager.stdout and "parallel:" in comp.stderr
    frozen = CliRunner().invoke(cli, [*base, "--freeze"])
    assert isinstance(frozen.exception, HuginnError) and "drop 'frozen'" in str(frozen.exception)


def test_fixed_noise_samples_the_distribution_next_token_samples():
    """Sampling proposals use each position's fixed Gumbel noise over `filtered_probs`: the same
    distribution as `next_token` (temperature, top-k, top-p, min-p), checked by frequencies."""
    from huginn.infer.parallel import _gumbel, filtered_probs
    from huginn.infer.sampling import next_token

    torch.manual_seed(0)
    logits = torch.randn(1, 32) * 2
    sampling = Sampling(do_sample=True, temperature=0.7, top_k=12, top_p=0.95, min_p=0.02)
    probs = filtered_probs(logits, sampling)[0]
    n, gen = 20000, torch.Generator().manual_seed(0)
    ours = (probs.log() + _gumbel(1, n, 32, "cpu", gen)[0]).argmax(-1)
    theirs = next_token(logits.expand(n, -1), torch.zeros(n, 1, dtype=torch.long), sampling, gen)
    f_ours, f_theirs = torch.bincount(ours, minlength=32) / n, torch.bincount(theirs, minlength=32) / n
    assert (probs == 0).sum() >= 20 and (f_ours[probs == 0] == 0).all() and (f_theirs[probs == 0] == 0).all()
    assert (f_ours - probs).abs().max() < 0.015 and (f_theirs - probs).abs().max() < 0.015
