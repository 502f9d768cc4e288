"""Built-in tasks with a difficulty knob: problems whose answer needs more core steps as they get harder.

A task writes one problem as characters of the built-in alphabet (`huginn.train.corpus`), with one
answer character after a marker; `difficulty` is the knob. The default, `parity`:

    1=1            difficulty 1
    0110=0         difficulty 4: the parity (xor) of the k bits before `=`
    1011010011=0   difficulty 10

Each problem starts with a newline, so rows of packed problems read one problem per line. Parity is
a fold: a model that reads one bit at a time needs a step per bit, there is no lookup shortcut for
unseen strings, and a looped model that has learned the fold can iterate longer to read longer
strings than it trained on (Schwarzschild et al. 2021, Bansal et al. 2022). Measured here: every
extra 4-6 bits need one more core step of the 2-layer core (docs/training.md).

Held-out instances: for a difficulty whose instance space is large enough (2^k / HOLD_OUT_BUCKETS
>= EXAMPLES), a fixed 1/HOLD_OUT_BUCKETS of the strings, chosen by a bijective scramble of the
k-bit strings, is never drawn for training and is the only place evaluation (and validation rows) draw from. Smaller
difficulties have too few strings to hold any out: training can draw every string evaluation
uses, which `overlap` reports. The split is a function of (k, string) alone, so it is the same for
every seed. Non-goals: tokenization (`corpus`), scoring a model (`huginn.train.report`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "held-out"]
TaskName = Literal["parity"]  # the built-in tasks (`TASKS`); data.task in a training config
HOLD_OUT_BUCKETS = 8  # one string in 8 is held out (where the difficulty has enough strings)
EXAMPLES = 256  # held-out instances per difficulty the report asks for
EVAL_SEED = 20261206  # evaluation instances do not depend on the training seed


def _scramble(k: int, v: int) -> int:
    """A bijection of the k-bit strings (an added constant, odd multiplications and xor-shifts, all
    mod 2^k): the held-out strings are those it sends below 2^k / HOLD_OUT_BUCKETS, exactly 1 in 8."""
    m = (1 << k) - 1
    x = (v + 0x2545F4914F6CDD1D) & m
    for a in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9):  # odd: invertible mod 2^k
        x = (x * a) & m
        x ^= x >> ((k + 1) // 2)
    return x


@dataclass(frozen=True)
class Parity:
    """The parity of k random bits: `\\n b1 .. bk = a` with a = b1 xor ... xor bk; difficulty k."""

    name: str = "parity"
    marker: str = "="  # the answer follows it
    chance: float = 0.5  # accuracy of a guess (two answers, equally likely)

    def holds_out(self, k: int) -> bool:
        """Whether difficulty k has enough strings to hold EXAMPLES of them out of training."""
        return (1 << k) // HOLD_OUT_BUCKETS >= EXAMPLES

    def held_out(self, k: int, v: int) -> bool:
        """Whether the k-bit string v (bit i of v is b_{i+1}) is reserved for evaluation."""
        return self.holds_out(k) and _scramble(k, v) < (1 << k) // HOLD_OUT_BUCKETS

    def draw(self, rng: random.Random, k: int, split: Split) -> int:
        """A uniformly random k-bit string of `split` (where k holds none out: any string)."""
        while True:  # rejection: 1 draw in 8 is redrawn for "train", 7 in 8 for "held-out"
            v = rng.getrandbits(k)
            if not self.holds_out(k) or self.held_out(k, v) == (split == "held-out"):
                return v

    def prompt(self, k: int, v: int) -> str:
        return "\n" + "".join("1" if (v >> i) & 1 else "0" for i in range(k)) + self.marker

    def answer(self, k: int, v: int) -> str:
        return "1" if (v & ((1 << k) - 1)).bit_count() % 2 else "0"

    def problem(self, rng: random.Random, k: int, split: Split) -> str:
        v = self.draw(rng, k, split)
        return self.prompt(k, v) + self.answer(k, v)

    def instances(self, k: int, n: int = EXAMPLES) -> list[int]:
        """The n evaluation strings of difficulty k: distinct held-out strings where k holds some out;
        where 2^k <= n every string, cycled to n; otherwise n distinct strings (overlap 1)."""
        if (1 << k) <= n:
            return [i % (1 << k) for i in range(n)]
        rng = random.Random(EVAL_SEED * 1009 + k)
        if k <= 16:  # few enough to list: a sample without replacement (the pool may be just n)
            pool = [v for v in range(1 << k) if not self.holds_out(k) or self.held_out(k, v)]
            return rng.sample(pool, n)
        seen: set[int] = set()
        out: list[int] = []
        while len(out) < n:
            v = self.draw(rng, k, "held-out")
            if v not in seen:
                seen.add(v)
                out.append(v)
        return out

    def overlap(self, k: int) -> float:
        """Fraction of the evaluation strings of difficulty k that training may also draw."""
        return 0.0 if self.holds_out(k) else 1.0


Task = Parity
TASKS: dict[str, Task] = {"parity": Parity()}
DEFAULT_TASK: TaskName = "parity"
DEFAULT_DIFFICULTY = (1, 16)  # trained difficulties, inclusive


def eval_difficulties(trained: tuple[int, int]) -> list[int]:
    """Every trained difficulty, then harder ones up to 4x the hardest trained (untrained: they
    show whether iterating longer than trained reads longer strings): 1..16, 20, 24, 32, 40, 48, 64."""
    lo, hi = trained
    harder = sorted({round(hi * f) for f in (1.25, 1.5, 2, 2.5, 3, 4)} - set(range(lo, hi + 1)))
    return list(range(lo, hi + 1)) + harder
