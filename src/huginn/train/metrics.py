"""Training metrics: FLOP accounting, `metrics.jsonl`, a progress bar, optional TensorBoard / W&B.

FLOPs of one optimizer step (retrofitted-recurrence accounting, head included):
    6 * D * N1 + 2 * D * N2,  N1 = prelude + k * core + coda + head,  N2 = n * core
with D tokens, k grad steps, n no-grad steps and `core` = the core blocks plus the adapter (the
parameters run once per iteration). Recomputation under activation checkpointing is not counted
(model FLOPs, as MFU is usually reported). Non-goal: attention FLOPs (small at these lengths).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ParamCounts:
    prelude: int
    core: int
    coda: int
    head: int

    def step_flops(self, tokens: int, no_grad_steps: int, grad_steps: int) -> float:
        n1 = self.prelude + grad_steps * self.core + self.coda + self.head
        n2 = no_grad_steps * self.core
        return 6.0 * tokens * n1 + 2.0 * tokens * n2


def count_params(model: nn.Module) -> ParamCounts:
    t = model.transformer

    def n(mods) -> int:
        return sum(p.numel() for m in mods for p in m.parameters())

    core = [*t.core_block] + ([t.adapter] if "adapter" in t else [])
    return ParamCounts(prelude=n(t.prelude), core=n(core), coda=n([*t.coda, t.ln_f]), head=model.lm_head.weight.numel())


class Metrics:
    """Rank 0 writes; other ranks' calls are no-ops."""

    def __init__(self, run: Path, enabled: bool, start_step: int, max_steps: int, cfg: Any):
        self.enabled, self.cfg = enabled, cfg
        self.path = Path(run) / "metrics.jsonl"
        self.bar = self.tb = self.wandb = None
        self.t_last, self.tokens_since, self.flops_since = time.perf_counter(), 0, 0.0
        if not enabled:
            return
        self._truncate_after(start_step)
        if cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run) / "tensorboard"))
            except ImportError:
                pass
        if cfg.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project="huginn", dir=str(run), resume="allow")
            except ImportError:
                pass

    def _truncate_after(self, step: int) -> None:
        """Drop records past the checkpoint we resume from, so the file reads as one clean run."""
        if not self.path.is_file():
            return
        keep = [
            line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def count(self, tokens: int, flops: float) -> None:
        self.tokens_since += tokens
        self.flops_since += flops

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def log_step(
        self, step: int, loss: float, lr: float, no_grad_steps: int, grad_steps: int, grad_norm: float, log: bool
    ) -> None:
        """Advance the bar; every `log.every` steps (and when `log`) write a record with rates."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not log:
            return
        now = time.perf_counter()
        dt = max(now - self.t_last, 1e-9)
        record = {
            "step": step,
            "loss": round(loss, 6),
            "lr": lr,
            "depth": [no_grad_steps, grad_steps],
            "grad_norm": round(grad_norm, 6),
            "tokens_per_s": round(self.tokens_since / dt, 1),
            "tflops_per_s": round(self.flops_since / dt / 1e12, 6),
        }
        if self.cfg.peak_flops:
            record["mfu"] = round(self.flops_since / dt / self.cfg.peak_flops, 5)
        self.t_last, self.tokens_since, self.flops_since = now, 0, 0.0
        self.write(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")

    def log_eval(self, step: int, losses: dict[int, float], extra: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        record = {"step": step, "eval": {str(r): round(v, 6) for r, v in losses.items()}}
        record.update(extra or {})
        self.write(record)
        if self.bar is not None:
            self.bar.write(f"eval @{step}: " + "  ".join(f"r={r}: {v:.4f}" for r, v in losses.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
