"""The built-in corpus: answers are the k-fold lookups they claim to be; rows are pure functions of their index."""

from __future__ import annotations

import random

import torch

from huginn.train import corpus
from huginn.train.report import table


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, int, str]]]:
    head, tail = text.rstrip("\n").split("*")
    f = dict(entry.split("=") for entry in head.strip(";").split(";"))
    queries = [(q[0], int(q[1]), q[3]) for q in tail.split(";")]
    return f, queries


def test_answers_are_k_fold_lookups_in_a_permutation():
    rng = random.Random(3)
    for _ in range(200):
        f, queries = parse(corpus.problem(rng))
        assert (
            sorted(f) == sorted(f.values()) and corpus.LETTERS[0] <= len(f) <= corpus.LETTERS[1]
        )  # a permutation of its letters
        assert (
            len({(x, k) for x, k, _ in queries}) == len(queries) == min(corpus.QUERIES, len(f) * corpus.MAX_HOPS)
        )  # no repeat
        hops = set()
        for x, k, y in queries:
            z = x
            for _ in range(k):
                z = f[z]
            assert y == z
            hops.add(k)
        assert max(hops) <= corpus.MAX_HOPS


def test_rows_are_pure_and_answer_mask_marks_the_answers():
    a = corpus.rows(0, [5, 6], 129)
    assert torch.equal(a, corpus.rows(0, [5, 6], 129)) and not torch.equal(a[0], a[1])
    assert not torch.equal(corpus.rows(1, [5], 129)[0], a[0])
    text = corpus.row_text(0, 5, 129)
    mask = corpus.answer_mask(a[0, :-1])
    targets = [text[i + 1] for i in mask.nonzero().flatten().tolist()]
    assert len(targets) >= 15 and all(c.isalpha() for c in targets)
    assert corpus.decode(corpus.encode(text)) == text.replace("\x00", "")


def test_report_table_has_answer_columns():
    t = table({1: 1.0, 4: 0.5}, {1: {"loss": 2.0, "acc": 0.2}, 4: {"loss": 0.1, "acc": 0.95}}, train_mean=4)
    assert "| 4 (train mean) | 0.5000 | 1.649 | 0.1000 | 95.0% |" in t and "answer loss" in t
