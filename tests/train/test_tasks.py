"""The built-in tasks: answers checked by an independent solver, difficulty sets what is asked,
held-out problems disjoint from training wherever there are enough strings, the overlap reported
where there are not."""

from __future__ import annotations

import random
from functools import reduce
from operator import xor

import pytest

from huginn.train import corpus, tasks

PARITY = tasks.TASKS["parity"]


def solve(prompt: str) -> str:
    """Parity by folding xor over the characters (the generator counts set bits of an integer)."""
    bits = prompt.strip("\n").removesuffix("=")
    assert set(bits) <= {"0", "1"}
    return str(reduce(xor, (int(b) for b in bits), 0))


def test_answers_match_an_independent_solver_at_every_difficulty():
    rng = random.Random(0)
    for k in [*range(1, 25), 32, 48, 64, 100]:
        for split in ("train", "held-out"):
            for _ in range(20):
                text = PARITY.problem(rng, k, split)
                prompt, answer = text[:-1], text[-1]
                assert text.startswith("\n") and prompt.endswith("=")
                assert answer == solve(prompt)


def test_difficulty_is_the_number_of_bits_asked_about():
    rng = random.Random(1)
    for k in (1, 7, 16, 48):
        prompts = {PARITY.problem(rng, k, "train")[:-1] for _ in range(50)}
        assert {len(p) for p in prompts} == {k + 2}  # "\n", k bits, "="
    # both answers occur at every difficulty, in about equal numbers (chance is 1/2)
    answers = [PARITY.problem(rng, 9, "train")[-1] for _ in range(2000)]
    assert 0.45 < answers.count("1") / len(answers) < 0.55


@pytest.mark.parametrize("k", [11, 12, 16, 20])
def test_held_out_problems_never_appear_in_training(k):
    rng = random.Random(k)
    evaluated = PARITY.instances(k)
    assert len(set(evaluated)) == len(evaluated) == tasks.EXAMPLES  # distinct
    assert all(PARITY.held_out(k, v) for v in evaluated) and PARITY.overlap(k) == 0.0
    trained = {PARITY.draw(rng, k, "train") for _ in range(20_000)}
    assert not trained & set(evaluated)
    # the split is a property of the string, the same for every seed and draw
    assert all(not PARITY.held_out(k, v) for v in trained)


def test_the_hold_out_is_exactly_an_eighth_where_the_space_allows():
    # 11 is the smallest difficulty with EXAMPLES strings to spare: 2^11 / 8 = 256
    for k in (11, 12, 15):
        held = [v for v in range(1 << k) if PARITY.held_out(k, v)]
        assert len(held) == (1 << k) // 8 and PARITY.holds_out(k)
        assert set(PARITY.instances(k)) <= set(held)
        # spread over the strings, not a block of them: both answers and every leading bit occur
        assert {PARITY.answer(k, v) for v in held} == {"0", "1"} and {v & 1 for v in held} == {0, 1}
    assert not PARITY.holds_out(10)


@pytest.mark.parametrize("k", [1, 3, 8, 10])
def test_small_difficulties_report_their_overlap(k):
    evaluated = PARITY.instances(k)
    assert len(evaluated) == tasks.EXAMPLES and PARITY.overlap(k) == 1.0
    if 1 << k <= tasks.EXAMPLES:  # every string, equally often
        assert set(evaluated) == set(range(1 << k))
        assert max(evaluated.count(v) for v in set(evaluated)) - min(evaluated.count(v) for v in set(evaluated)) <= 1


def test_evaluation_problems_do_not_depend_on_the_seed_or_call():
    assert PARITY.instances(24) == PARITY.instances(24) and PARITY.instances(24) != PARITY.instances(25)


def test_eval_difficulties_reach_three_times_the_hardest_trained():
    ks = tasks.eval_difficulties((1, 16))
    assert ks == [*range(1, 17), 20, 24, 32, 40, 48, 64]
    assert tasks.eval_difficulties((4, 8)) == [4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32]


def test_validation_rows_draw_held_out_strings_and_training_rows_never_do():
    for index, held in ((3, False), (corpus.VAL_OFFSET + 3, True)):
        for i in range(index, index + 40):
            for line in corpus.row_text(0, i, 400, difficulty=(11, 14)).split("\n")[1:-1]:
                bits, answer = line.split("=")
                v = sum(1 << j for j, b in enumerate(bits) if b == "1")
                assert PARITY.held_out(len(bits), v) == held and answer == solve(bits + "=")
