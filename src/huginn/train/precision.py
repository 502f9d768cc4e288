"""Training precision: fp32, bf16 autocast (fp32 master weights), or `auto`, the faster of the two.

`auto` (the default) decides per run: on a GPU with bf16, bf16; on a CPU without native bf16
instructions (AVX512-BF16 or AMX), fp32; on a CPU with them, whichever a short trial of the run's
own step shape (micro-batch x sequence length, a copy of the model, 2 grad core steps) measures
faster: bf16 autocast is ~1.5x fp32 at width 256 on a 2-core Sapphire Rapids, but ~3.5x slower at
width 128, where the casts cost more than the products save. The choice is written to the run
folder (`precision.json`) and a resumed run reads it back, so one run never mixes precisions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from huginn.model.recurrent import RecurrentLM
from huginn.train.forward import TrainForward

RECORD = "precision.json"


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32" or "bf16"
    reason: str  # why: said once at the start of the run

    def autocast(self, device: torch.device):
        """The context a forward runs in: bf16 autocast, or nothing."""
        if self.name == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 products in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def choose(
    setting: str, model: RecurrentLM, device: torch.device, rows: int, seq_len: int, run: Path | None = None
) -> Precision:
    """The precision of a run: the setting itself unless it is `auto`; a resumed run's recorded choice;
    else by device, and on a CPU with native bf16 by a trial of both (see the module docstring)."""
    if setting != "auto":
        return Precision(setting, "set in the config")
    if run is not None and (run / RECORD).is_file():
        saved = json.loads((run / RECORD).read_text())
        return Precision(saved["name"], f"auto, as chosen when the run started ({saved['reason']})")
    if not native_bf16(device):
        return Precision("fp32", f"auto: this {device.type.upper()} has no native bf16")
    if device.type == "cuda":
        return Precision("bf16", "auto: the GPU has native bf16")
    fp32, bf16 = trial(model, device, rows, seq_len)
    if bf16 < fp32:
        return Precision("bf16", f"auto: bf16 autocast ran a trial step {fp32 / bf16:.2f}x faster than fp32")
    return Precision("fp32", f"auto: fp32 ran a trial step {bf16 / fp32:.2f}x faster than bf16 autocast")


def record(run: Path, precision: Precision) -> None:
    (run / RECORD).write_text(json.dumps({"name": precision.name, "reason": precision.reason}) + "\n")


def trial(model: RecurrentLM, device: torch.device, rows: int, seq_len: int, repeats: int = 2) -> tuple[float, float]:
    """Seconds per forward + backward of (fp32, bf16 autocast) on a copy of `model`, rows x seq_len
    random tokens, 2 grad core steps; each the best of `repeats` after a warm-up, interleaved. The
    global RNG is restored, so the run that follows is the one it would be without the trial."""
    rng = torch.get_rng_state()
    try:
        twin: RecurrentLM = copy.deepcopy(model).to(device)
        fwd = TrainForward(twin)
        vocab = int(twin.model_config.vocab_size)
        ids = torch.randint(0, vocab, (rows, seq_len + 1), device=device)
        x, y, row_ids = ids[:, :-1], ids[:, 1:], torch.arange(rows)

        def step(bf16: bool) -> float:
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = fwd(x, y, 0, 2, row_ids)
            loss.backward()
            twin.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        best = {False: float("inf"), True: float("inf")}
        for bf16 in (False, True):
            step(bf16)  # warm-up: allocator pools, oneDNN primitives
        for _ in range(repeats):
            for bf16 in (False, True):
                best[bf16] = min(best[bf16], step(bf16))
        return best[False], best[True]
    finally:
        torch.set_rng_state(rng)
