"""The built-in training corpus: rows of generated task problems (`huginn.train.tasks`), character level.

A row packs problems of random difficulty (uniform over the trained range) one after another and
is cut at its length; with the default parity task:

    \\n0110=0\\n1=1\\n10111011010=0\\n0010...

Only the answers (the character after each `=`) are deterministic given the prefix; `answer_mask`
marks them and `answer_labels` keeps only them as targets, so the loss is on answers alone (the
bits are random: a loss on them is noise that depth cannot lower). Rows are a pure function of
(seed, task, difficulty range, row index), so no file, no download, and resuming or changing the
world size never changes what a row holds. Rows from VAL_OFFSET on draw held-out strings.
Tokens are characters of a fixed 48-symbol alphabet (id 0 is padding).
Non-goals: natural text (use `data.kind: packed`), tokenizer training.
"""

from __future__ import annotations

import random
import string

import torch

from huginn.train import tasks

ALPHABET = "\x00\n;=?+-*" + string.digits + string.ascii_lowercase  # 44 symbols; \x00 is padding
VOCAB_SIZE = 48  # the alphabet, rounded up
STOI = {c: i for i, c in enumerate(ALPHABET)}
VAL_OFFSET = 1 << 40  # held-out rows come from a disjoint index range
IGNORE = -100  # label of a position without loss


def row_text(
    seed: int,
    index: int,
    length: int,
    task: str = tasks.DEFAULT_TASK,
    difficulty: tuple[int, int] = tasks.DEFAULT_DIFFICULTY,
) -> str:
    """Row `index`: problems of difficulty uniform in `difficulty` (inclusive), cut to `length` characters."""
    t = tasks.TASKS[task]
    rng = random.Random(seed * 1_000_000_007 + index)
    split: tasks.Split = "held-out" if index >= VAL_OFFSET else "train"
    text = ""
    while len(text) < length:
        text += t.problem(rng, rng.randint(*difficulty), split)
    return text[:length]


def encode(text: str) -> list[int]:
    return [STOI[c] for c in text]


def decode(ids) -> str:
    return "".join(ALPHABET[i] if 0 < i < len(ALPHABET) else "" for i in ids)


def rows(
    seed: int,
    indices: list[int],
    length: int,
    task: str = tasks.DEFAULT_TASK,
    difficulty: tuple[int, int] = tasks.DEFAULT_DIFFICULTY,
) -> torch.Tensor:
    """LongTensor (len(indices), length): the rows with these global indices."""
    return torch.tensor([encode(row_text(seed, i, length, task, difficulty)) for i in indices], dtype=torch.long)


def answer_mask(inputs: torch.Tensor, task: str = tasks.DEFAULT_TASK) -> torch.Tensor:
    """True where the next token is an answer (the input is the task's marker): the tokens that are
    deterministic given the prefix and need the computation depth pays for."""
    return inputs == STOI[tasks.TASKS[task].marker]


def answer_labels(row: torch.Tensor, task: str = tasks.DEFAULT_TASK) -> torch.Tensor:
    """Next-token labels of rows (B, L + 1) -> (B, L), IGNORE everywhere but at the answers."""
    return row[:, 1:].masked_fill(~answer_mask(row[:, :-1], task), IGNORE)


def char_tokenizer():
    """A transformers fast tokenizer for the alphabet (saved with exported built-in runs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(ALPHABET)}
    for i in range(len(ALPHABET), VOCAB_SIZE):
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="\x00"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="\x00", unk_token="\x00")
