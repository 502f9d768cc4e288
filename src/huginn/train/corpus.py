"""The built-in training corpus: generated multi-hop lookups in a permutation table, character-level.

Each problem writes a random cycle through 4 or 5 letters as a shuffled table, then asks for
f^k(x), the letter k hops after x, for every distinct (x, k) with k in 1..2, in random order:

    i=d;p=s;d=p;s=i;*s1?i;i2?p;d2?s;p1?s;...

The answer after `?` is deterministic given the prefix and needs k chained lookups (pointer
chasing), which a model can only do by spending depth on it (the recurrence's job). `answer_mask`
marks those tokens so evaluation can report their loss and accuracy apart from the rest. Rows are a
pure function of (seed, row index), so no file, no download, and resuming or changing the world
size never changes what a row holds. Tokens are characters of a fixed 48-symbol alphabet (id 0 is padding).
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
QUERIES = 20  # at most this many queries per table
MAX_HOPS = 2
LETTERS = (4, 5)  # letters per table (inclusive). Small tables and two hops are what a width-64 model
# learns on 2 CPU cores in minutes (in-context lookup needs an induction circuit to form first);
# 5-8 letters with 1-4 hops stayed at chance after 600 steps.


def problem(rng: random.Random) -> str:
    """A random cyclic permutation f of LETTERS letters written as a table, then queries `x k ? f^k(x)`.

        i=d;p=s;d=p;s=i;*s1?i;i2?p;d2?s;...

    The answer after `?` is deterministic given the prefix but needs k chained lookups in the table
    (pointer chasing), i.e. sequential computation that depth (the recurrence) can supply. Hops are
    1 to MAX_HOPS; dense queries make one token in five an answer."""
    letters = rng.sample(string.ascii_lowercase, rng.randint(*LETTERS))
    # one cycle through all letters: f^k(x) != x for k < len(letters), so no answer is the query itself
    f = {a: letters[(i + 1) % len(letters)] for i, a in enumerate(letters)}
    table = [f"{a}={f[a]}" for a in rng.sample(letters, len(letters))]
    queries = []
    # distinct (x, k) pairs: a repeated query could be answered by copying, without any lookup
    pairs = [(x, k) for x in letters for k in range(1, MAX_HOPS + 1)]
    for x, k in rng.sample(pairs, min(QUERIES, len(pairs))):
        y = x
        for _ in range(k):
            y = f[y]
        queries.append(f"{x}{k}?{y}")
    return ";".join(table) + ";*" + ";".join(queries) + "\n"


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


def answer_mask(inputs: torch.Tensor) -> torch.Tensor:
    """True where the next token is an answer (the input is '?'): deterministic given the prefix,
    and the tokens that need the chained lookups."""
    return inputs == STOI["?"]


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
