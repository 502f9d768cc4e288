"""Capture: the kept states, layer outputs, attention and logit lens are the model's own, and
capturing changes nothing, for a forward and for a generation (fixed depth and adaptive exits)."""

from __future__ import annotations

import pytest
import torch

from huginn.analysis import Selection, capture, capture_generation
from huginn.analysis.capture import attention_probs
from huginn.errors import HuginnError
from huginn.infer.exits import make_criterion
from huginn.infer.generate import Depth, Stopping, generate
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))


def _seed():
    return torch.Generator().manual_seed(7)


def test_states_and_logits_equal_the_models_own_forward(model, ids):
    ref = model(ids, num_steps=6, return_states=True, generator=_seed())
    cap = capture(model, ids, 6, generator=_seed())
    assert cap.states.shape == (2, 11, 6, 64)
    for t in range(6):
        assert torch.equal(cap.states[:, :, t], ref.states[t])
    assert torch.equal(cap.logits, ref.logits)  # capturing leaves the output unchanged
    assert torch.equal(cap.final_state, ref.hidden_states)
    ctx = model.context(2, 11)
    assert torch.equal(cap.e, model.embed(ids, ctx))


def test_a_selection_keeps_exactly_those_positions_and_steps(model, ids):
    full = capture(model, ids, 6, generator=_seed())
    part = capture(model, ids, 6, Selection(positions=[-1, 2, 5], steps=[1, 4, 6]), generator=_seed())
    assert part.positions.tolist() == [2, 5, 10] and part.steps.tolist() == [1, 4, 6]
    assert torch.equal(part.states, full.states[:, [2, 5, 10]][:, :, [0, 3, 5]])
    assert torch.equal(part.logits, full.logits[:, [2, 5, 10]])


def test_layer_outputs_and_the_logit_lens_are_the_models(model, ids):
    cap = capture(model, ids, 5, Selection(steps=[2, 5], layers=[1, 3], lens=True), generator=_seed())
    # the last core layer's output is the state; an inner layer's output is what the blocks compute
    assert torch.equal(cap.layers[:, :, :, 1], cap.states)
    ctx = model.context(2, 11)
    e = model.embed(ids, ctx)
    full = capture(model, ids, 5, generator=_seed())
    x = model.transformer.adapter(torch.cat([full.states[:, :, 0], e], dim=-1))  # inject, step 2
    x = model.transformer.core_block[0](x, ctx, 0)
    x = model.transformer.core_block[1](x, ctx, 0)
    assert torch.allclose(cap.layers[:, :, 0, 0], x, atol=1e-6)
    # the lens at step t is what a forward of t steps predicts
    for col, t in enumerate([2, 5]):
        assert torch.equal(cap.lens[:, :, col], model(ids, num_steps=t, generator=_seed()).logits)


def test_attention_probabilities_reproduce_the_attention_output(model, ids):
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    cap = capture(model, ids, 4, Selection(attention=[(3, 2)]), generator=_seed(), attention_mask=mask)
    probs = cap.attention[(3, 2)]
    assert probs.shape == (2, 4, 11, 11)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 11))
    assert float(probs[0].triu(1).abs().max()) == 0.0  # causal
    assert float(probs[1, :, 3:, :3].abs().max()) == 0.0  # padding is never attended to
    # probabilities @ values, projected, equal the attention module's own output at that call
    attn = model.transformer.core_block[2].attn
    seen = {}

    def keep(module, args, output):
        seen.setdefault("n", 0)
        seen["n"] += 1
        if seen["n"] == 3:  # the third core step's call of this layer
            seen["x"], seen["ctx"], seen["y"] = args[0], args[1], output

    handle = attn.register_forward_hook(keep)
    try:
        model(ids, num_steps=4, generator=_seed(), attention_mask=mask)
    finally:
        handle.remove()
    x, ctx = seen["x"], seen["ctx"]
    assert torch.allclose(attention_probs(attn, x, ctx), probs, atol=1e-6)
    B, S, _ = x.shape
    v = attn.Wqkv(x)[..., 2 * attn.n_heads * attn.hd :].view(B, S, attn.n_kv, attn.hd).transpose(1, 2)
    y = attn.proj((probs @ v).transpose(1, 2).reshape(B, S, -1))
    assert torch.allclose(y[0], seen["y"][0], atol=1e-5)
    assert torch.allclose(y[1, 3:], seen["y"][1, 3:], atol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (Selection(positions=[11]), "positions \\[11\\] are out of range"),
        (Selection(steps=[0]), "steps \\[0\\] are out of range"),
        (Selection(steps=[7]), "steps \\[7\\] are out of range"),
        (Selection(layers=[4]), "core layers \\[4\\]"),
        (Selection(attention=[(7, 0)]), "attention \\(step 7, layer 0\\)"),
    ],
)
def test_a_selection_out_of_range_is_one_line(model, ids, bad, match):
    with pytest.raises(HuginnError, match=match):
        capture(model, ids, 6, bad)


def test_an_empty_text_and_bad_depth_are_refused(model):
    with pytest.raises(HuginnError, match="empty"):
        capture(model, torch.zeros(1, 0, dtype=torch.long), 4)
    with pytest.raises(HuginnError, match="num_steps"):
        capture(model, torch.zeros(1, 3, dtype=torch.long), 0)


# --- generation ---------------------------------------------------------------------------------

DEPTHS = {
    "fixed": lambda: Depth(4, init_scale=0.0),
    "exits": lambda: Depth(12, make_criterion("latent-diff", 0.05), init_scale=0.0),
}


@pytest.mark.parametrize("name", DEPTHS)
def test_capturing_a_generation_changes_nothing_and_keeps_each_tokens_steps(reference_model, expected, name):
    ids = expected["input_ids"][:, -6:]
    plain = generate(reference_model, ids, DEPTHS[name](), Stopping(5))
    cap = capture_generation(reference_model, ids, DEPTHS[name](), Stopping(5))
    assert torch.equal(cap.sequences, plain.sequences)
    assert torch.equal(cap.compute_steps, plain.compute_steps)
    assert len(cap.forwards) == plain.compute_steps.shape[1]
    for f, states in enumerate(cap.forwards):
        assert states.shape[:3] == (2, 6 if f == 0 else 1, int(plain.compute_steps[:, f].max()))
        for row in range(2):
            taken = int(plain.compute_steps[row, f])
            assert cap.token_states(f, row).shape[0] == taken
            for later in range(taken, states.shape[2]):  # a row that exited keeps its state
                assert torch.equal(states[row, :, later], states[row, :, taken - 1])
    # the prefill's states are exactly the model's own forward's (zero initial state, same depth)
    first = int(plain.compute_steps[:, 0].max())
    ref = reference_model(ids, num_steps=first, init_scale=0.0, return_states=True)
    for row in range(2):  # up to the step where that row exited
        for t in range(int(plain.compute_steps[row, 0])):
            assert torch.equal(cap.forwards[0][row, :, t], ref.states[t][row])
    if name == "fixed":
        # a new token's states are those of a forward over the whole sequence so far, at its position
        # (cached attention against a full forward: equal up to float rounding)
        seq = cap.sequences[:, : 6 + 2]
        whole = reference_model(seq, num_steps=4, init_scale=0.0, return_states=True)
        for t in range(4):
            assert torch.allclose(cap.forwards[2][:, 0, t], whole.states[t][:, -1], atol=1e-5)


def test_generation_capture_keeps_the_selected_prompt_positions_and_steps(reference_model, expected):
    ids = expected["input_ids"][:1, -6:]
    full = capture_generation(reference_model, ids, Depth(4, init_scale=0.0), Stopping(3))
    part = capture_generation(
        reference_model, ids, Depth(4, init_scale=0.0), Stopping(3), Selection(positions=[0, 5], steps=[2, 4])
    )
    assert torch.equal(part.forwards[0], full.forwards[0][:, [0, 5]][:, :, [1, 3]])
    assert torch.equal(part.forwards[1], full.forwards[1][:, :, [1, 3]])
    with pytest.raises(HuginnError, match="forward"):
        capture_generation(reference_model, ids, Depth(4), Stopping(3), Selection(attention=[(1, 0)]))


def test_generation_capture_keeps_core_layer_outputs(reference_model, expected):
    ids = expected["input_ids"][:1, -6:]
    depth = Depth(4, init_scale=0.0)
    plain = capture_generation(reference_model, ids, depth, Stopping(3))
    cap = capture_generation(reference_model, ids, depth, Stopping(3), Selection(steps=[1, 3], layers=[0, 3]))
    assert torch.equal(cap.sequences, plain.sequences) and cap.layer_outputs is not None
    assert [t.shape for t in cap.layer_outputs] == [(1, 6, 2, 2, 64), (1, 1, 2, 2, 64), (1, 1, 2, 2, 64)]
    for f in range(3):  # the core's last layer writes the state of its step
        assert torch.equal(cap.layer_outputs[f][:, :, :, 1], plain.forwards[f][:, :, [0, 2]])
    # the prefill's layers are those of a forward capture of the prompt
    fwd = capture(reference_model, ids, 4, Selection(steps=[1, 3], layers=[0, 3]), init_scale=0.0)
    assert fwd.layers is not None and torch.equal(cap.layer_outputs[0], fwd.layers)


def _left_padded(expected):
    ids = expected["input_ids"]
    prompts = [ids[0, 14:], ids[1, 18:]]
    batch, mask = torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, 10, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, 10 - len(p) :], mask[i, 10 - len(p) :] = p, 1
    return batch, mask


@pytest.mark.parametrize("name", DEPTHS)
def test_the_generation_lens_at_each_tokens_last_step_predicts_that_token(reference_model, expected, name):
    ids, mask = _left_padded(expected)
    cap = capture_generation(
        reference_model, ids, DEPTHS[name](), Stopping(5), Selection(lens=True), attention_mask=mask
    )
    assert cap.lens is not None and len(cap.lens) == len(cap.forwards)
    for f, lens in enumerate(cap.lens):
        assert lens.shape[:3] == cap.forwards[f].shape[:3]
        for row in range(2):
            last = int(cap.compute_steps[row, f]) - 1  # the step the row's token was read at (greedy)
            assert int(lens[row, -1, last].argmax()) == int(cap.sequences[row, 10 + f])


def test_the_generation_lens_reads_each_step_with_the_earlier_tokens_final_states(reference_model, expected):
    ids = expected["input_ids"][:1, -6:]
    cap = capture_generation(reference_model, ids, Depth(4, init_scale=0.0), Stopping(4), Selection(lens=True))
    whole = capture(reference_model, cap.sequences[:, :8], 4, Selection(lens=True), init_scale=0.0)
    assert torch.allclose(cap.lens[0], whole.lens[:, :6], atol=1e-4)  # the prefill: all positions move together
    # the second new token (position 7): its state at step t, the final states before it as the coda's context
    ctx = reference_model.context(1, 8)
    for t in range(4):
        context = torch.cat([whole.final_state[:, :7], whole.states[:, 7:8, t]], dim=1)
        logits = reference_model.predict(context, ctx)[0][:, -1]
        assert torch.allclose(cap.lens[2][:, 0, t], logits, atol=1e-4)
    assert torch.allclose(cap.lens[2][:, 0, -1], whole.logits[:, 7], atol=1e-4)  # the last step: the output


RETROFIT_SHAPES = {
    # what `huginn retrofit` produces: Llama-style pre-norm blocks with grouped-query attention, or
    # OLMo-2-style post-norm blocks with qk norm; additive injection; no norm before the coda
    "llama": dict(block_type="prenorm", n_kv_heads=2, qk_bias=False, injection_type="add", coda_input_norm=False),
    "olmo2": dict(block_type="postnorm", qk_norm=True, qk_bias=False, injection_type="add", coda_input_norm=False),
}


@pytest.mark.parametrize("name", RETROFIT_SHAPES)
def test_capture_is_exact_for_retrofitted_shapes(name):
    model = tiny_model(seed=4, **RETROFIT_SHAPES[name])
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(0))
    ref = model(ids, num_steps=4, return_states=True, generator=_seed())
    cap = capture(model, ids, 4, Selection(layers=[3], attention=[(2, 1)], lens=True), generator=_seed())
    for t in range(4):
        assert torch.equal(cap.states[:, :, t], ref.states[t])
    assert torch.equal(cap.layers[:, :, :, 0], cap.states)
    assert torch.equal(cap.lens[:, :, -1], ref.logits)
    # attention probabilities @ values reproduce the attention output (GQA, qk norm)
    attn = model.transformer.core_block[1].attn
    seen = []
    handle = attn.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1], out)))
    try:
        model(ids, num_steps=4, generator=_seed())
    finally:
        handle.remove()
    x, ctx, y = seen[1]
    probs = cap.attention[(2, 1)]
    assert torch.allclose(attention_probs(attn, x, ctx), probs, atol=1e-6)
    B, S, _ = x.shape
    v = attn.Wqkv(x)[..., (attn.n_heads + attn.n_kv) * attn.hd :].view(B, S, attn.n_kv, attn.hd).transpose(1, 2)
    v = v.repeat_interleave(attn.n_heads // attn.n_kv, dim=1)
    assert torch.allclose(attn.proj((probs @ v).transpose(1, 2).reshape(B, S, -1)), y, atol=1e-5)
