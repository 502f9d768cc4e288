"""The built-in training corpus: generated multi-hop variable chains, character-level.

Each problem interleaves two or three chains of assignments and asks for the last variable of one:

    q=7;k=2;b=q;x=k+5;m=b+3;m?0

The answer after `?` needs one lookup per hop back to the chain's root (plus small additions mod 10),
which a model can only do by spending depth on it (the recurrence's job). Rows are a
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
    """Two or three interleaved chains of copies (`b=a` copies a's digit) and a question about the
    last variable of one chain: answering needs one lookup per hop, i.e. depth (pointer chasing).
    One assignment in three adds a constant mod 10 (`c=b+3`), so values are computed, not only copied."""
    n_chains = rng.randint(2, 3)
    lengths = [rng.randint(1, 4) for _ in range(n_chains)]
    names = iter(rng.sample(string.ascii_lowercase, sum(lengths) + n_chains))
    chains: list[list[tuple[str, str, int]]] = []
    for length in lengths:
        root, value = next(names), rng.randrange(10)
        chain = [(root, str(value), value)]
        for _ in range(length):
            src, prev = chain[-1][0], chain[-1][2]
            if rng.random() < 1 / 3:
                c = rng.randrange(1, 10)
                chain.append((next(names), f"{src}+{c}", (prev + c) % 10))
            else:
                chain.append((next(names), src, prev))
        chains.append(chain)
    # interleave: a random merge that keeps every chain's own order (definitions before uses)
    order = [i for i, ch in enumerate(chains) for _ in ch]
    rng.shuffle(order)
    pos = [0] * n_chains
    parts = []
    for i in order:
        name, expr, _ = chains[i][pos[i]]
        parts.append(f"{name}={expr}")
        pos[i] += 1
    asked = rng.choice(chains)[-1]
    return ";".join(parts) + f";{asked[0]}?{asked[2]}\n"


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
