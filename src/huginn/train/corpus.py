"""The built-in training corpus: generated multi-step modular arithmetic, character-level.

Each problem is a chain of variable assignments ending in a question, e.g.

    k=7;q=k+5;b=q*3;x=b-k;b?6

Values are taken mod 10; the answer after `?` needs every step of the chain up to the asked
variable, which a model can only compute by spending depth on it (the recurrence's job). Rows are a
pure function of (seed, row index), so no file, no download, and resuming or changing the world size
never changes what a row holds. Tokens are characters of a fixed 48-symbol alphabet (id 0 is padding).
Non-goals: natural text (use `data.kind: packed`), tokenizer training.
"""

from __future__ import annotations

import random
import string

import torch

ALPHABET = "\x00\n;=?+-*" + string.digits + string.ascii_lowercase  # 44 symbols; \x00 is padding
VOCAB_SIZE = 48  # the alphabet, rounded up
STOI = {c: i for i, c in enumerate(ALPHABET)}
VAL_OFFSET = 1 << 40  # held-out rows come from a disjoint index range


def problem(rng: random.Random) -> str:
    """One chain of 2-5 assignments and a question about one of its variables."""
    hops = rng.randint(2, 5)
    names = rng.sample(string.ascii_lowercase, hops)
    values: dict[str, int] = {}
    parts = []
    first = rng.randrange(10)
    values[names[0]] = first
    parts.append(f"{names[0]}={first}")
    for i in range(1, hops):
        src = names[i - 1] if rng.random() < 0.7 else rng.choice(names[:i])
        op, c = rng.choice("+-*"), rng.randrange(10)
        if op == "+":
            v = values[src] + c
        elif op == "-":
            v = values[src] - c
        else:
            v = values[src] * c
        values[names[i]] = v % 10
        parts.append(f"{names[i]}={src}{op}{c}")
    ask = names[-1] if rng.random() < 0.6 else rng.choice(names[1:])
    return ";".join(parts) + f";{ask}?{values[ask]}\n"


def row_text(seed: int, index: int, length: int) -> str:
    rng = random.Random(seed * 1_000_000_007 + index)
    text = ""
    while len(text) < length:
        text += problem(rng)
    return text[:length]


def encode(text: str) -> list[int]:
    return [STOI[c] for c in text]


def decode(ids) -> str:
    return "".join(ALPHABET[i] if 0 < i < len(ALPHABET) else "" for i in ids)


def rows(seed: int, indices: list[int], length: int) -> torch.Tensor:
    """LongTensor (len(indices), length): the rows with these global indices."""
    return torch.tensor([encode(row_text(seed, i, length)) for i in indices], dtype=torch.long)


def answer_accuracy(logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over answer digits (targets right after a '?'): the depth-hungry tokens."""
    at_answer = inputs == STOI["?"]
    correct = (logits.argmax(-1) == targets) & at_answer
    return int(correct.sum()), int(at_answer.sum())


def char_tokenizer():
    """A transformers fast tokenizer for the alphabet (saved with exported built-in runs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(ALPHABET)}
    for i in range(len(ALPHABET), VOCAB_SIZE):
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="\x00"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="\x00", unk_token="\x00")
