"""The built-in corpus: rows of task problems, pure functions of their index; answers marked and labelled."""

from __future__ import annotations

import torch

from huginn.train import corpus


def test_rows_are_pure_functions_of_seed_and_index():
    a = corpus.rows(0, [5, 6], 65)
    assert a.shape == (2, 65) and torch.equal(a, corpus.rows(0, [5, 6], 65)) and not torch.equal(a[0], a[1])
    assert not torch.equal(corpus.rows(1, [5], 65)[0], a[0])
    assert not torch.equal(corpus.rows(0, [5], 65, difficulty=(30, 40))[0], a[0])


def test_rows_pack_problems_of_the_trained_difficulties():
    text = "".join(corpus.row_text(0, i, 300, difficulty=(3, 5)) for i in range(20))
    lines = [line for line in text.split("\n") if line]
    complete = [line for line in lines[:-1] if "=" in line and len(line.split("=")[1]) == 1]
    assert len(complete) > 100 and {len(line.split("=")[0]) for line in complete} == {3, 4, 5}
    assert corpus.row_text(0, 0, 64).startswith("\n")  # a row starts at a problem


def test_answer_mask_and_labels_keep_only_the_answers():
    row = corpus.rows(0, [7], 65)
    text = corpus.decode(row[0].tolist())
    mask = corpus.answer_mask(row[:, :-1])[0]
    labels = corpus.answer_labels(row)[0]
    answers = [i for i, c in enumerate(text[:-1]) if c == "="]
    assert mask.nonzero().flatten().tolist() == answers and len(answers) >= 3
    assert all(text[i + 1] in "01" and labels[i] == corpus.STOI[text[i + 1]] for i in answers)
    assert int((labels != corpus.IGNORE).sum()) == len(answers)
    assert corpus.decode(corpus.encode(text)) == text
