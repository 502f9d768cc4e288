"""Eager decoding and a training step of the 2+4+2 width-256 shape (`small`) at 8 steps, one thread:
the figures to compare before and after a change to the recurrence. Run it on two checkouts in
interleaved rounds (`PYTHONPATH=OTHER/src python benchmarks/bench_recurrence.py`), since a
single machine's speed drifts; it prints tokens/s of batch-1 eager decoding (32 new tokens) and
the seconds of one training step (2 x 256 tokens, 4 no-grad + 4 grad steps, forward + backward)."""

import time

import torch

from huginn import named_shape
from huginn.infer.generate import Depth, Stopping, generate
from huginn.model.recurrent import RecurrentLM
from huginn.train.forward import TrainForward

torch.set_num_threads(1)

torch.manual_seed(0)
m = RecurrentLM(named_shape("small")).eval()
ids = torch.randint(0, 4000, (1, 32))
generate(m, ids, Depth(8, init_scale=0.0), Stopping(4))
t = time.perf_counter()
generate(m, ids, Depth(8, init_scale=0.0), Stopping(32))
dec = 31 / (time.perf_counter() - t)
tf = TrainForward(m.train())
x = torch.randint(0, 4000, (2, 256))
rows = torch.arange(2)
for _ in range(3):
    t = time.perf_counter()
    tf(x, x, 4, 4, rows).backward()
    tr = time.perf_counter() - t
print(f"decode_tok_s {dec:.1f} train_step_s {tr:.3f}")
