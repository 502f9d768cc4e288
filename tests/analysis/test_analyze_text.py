"""`analyze_text`: its logit lens (read one step at a time) is capture's lens, and its numbers are the
metrics of the captured states."""

from __future__ import annotations

import torch

from huginn.analysis import Selection, capture, metrics
from huginn.analysis.analyze import analyze_text, choose_orbit_positions
from tests.conftest import tiny_model


def test_the_analysis_is_the_metrics_of_the_captured_trajectories():
    model = tiny_model(seed=6)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0)).tolist()[0]
    a = analyze_text(model, ids, lambda i: f"<{i[0]}>", num_steps=10, threshold=1e-2, seed=4)
    cap = capture(model, torch.tensor([ids]), 10, Selection(lens=True), generator=torch.Generator().manual_seed(4))
    lens = cap.lens[0]
    probs = lens.double().softmax(-1)
    assert torch.equal(a.lens_top, probs.argmax(-1))
    assert torch.allclose(a.lens_prob, probs.max(-1).values)
    assert torch.allclose(a.kl, metrics.successive_kl(lens))
    states = cap.with_initial()[0]
    assert torch.equal(a.relative_change, metrics.successive_distance(states, relative=True))
    assert torch.equal(a.steps_to_converge, metrics.steps_to_convergence(states, 1e-2, first_step=0))
    assert [c.kind for c in a.classes] == [c.kind for c in metrics.classify(states, tail=5, floor=1e-2)]
    assert a.tokens == [f"<{i}>" for i in ids] and a.tail == 5
    assert a.probe is not None and a.probe.chance == 1 / 10


def test_the_orbit_grid_shows_every_class_first():
    kinds = ["fixed point", "fixed point", "orbit", "not converged", "fixed point", "slider", "orbit"]
    classes = [metrics.Classification(k, 0, 0, 0, 0, 0) for k in kinds]
    steps = torch.tensor([3, 9, -1, -1, 5, -1, -1])
    assert choose_orbit_positions(classes, steps, n=4) == [1, 3, 5, 6]
    assert choose_orbit_positions(classes, steps, n=6) == [1, 2, 3, 4, 5, 6]
