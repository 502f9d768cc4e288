"""Training metrics: `metrics.jsonl` with rates, progress output, optional TensorBoard / W&B.

Progress goes to stdout: a tqdm bar on a terminal; anywhere else (CI logs, `huginn train > log`) a
plain line every ~10 s of wall time or every 5% of the steps, whichever comes first, with step,
loss, rate and ETA (`Progress`), instead of a redrawn bar that logs one line per step.

The loop counts each step's tokens and FLOPs (`Metrics.count`) with the one cost model,
`huginn.model.cost.train_flops_per_token` (matmul FLOPs: 6 x the weights a token passes through
with gradients, 2 x those without); every record turns them into tokens/s, TFLOP/s and, with
`log.peak_flops`, MFU. Non-goal: counting FLOPs here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Training progress on `stream`: a tqdm bar on a terminal, else a line every `every_s` seconds
    or `fraction` of `total` steps (whichever comes first) and at the end."""

    def __init__(
        self,
        total: int,
        initial: int,
        stream: TextIO | None = None,
        every_s: float = 10.0,
        fraction: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stdout
        self.total, self.step, self.every_s = total, initial, every_s
        self.every_steps = max(1, math.ceil(total * fraction))
        self.clock = clock
        self.bar: Any = None
        if _is_tty(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=self.stream
            )
        self.t0 = self.t_line = self.clock()
        self.start = self.line_step = initial
        self.loss_sum, self.loss_n = 0.0, 0

    def update(self, step: int, loss: float, lr: float) -> None:
        """Step `step` (1-based) is done with training loss `loss`."""
        self.step = step
        if self.bar is not None:
            self.bar.update(1)
            return
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1
        now = self.clock()
        if step % self.every_steps == 0 or step >= self.total or now - self.t_line >= self.every_s:
            self._line(now, lr)

    def _line(self, now: float, lr: float | None = None) -> None:
        rate = (self.step - self.start) / max(now - self.t0, 1e-9)
        eta = _duration((self.total - self.step) / rate) if rate > 0 else "?"
        loss = self.loss_sum / max(self.loss_n, 1)
        text = f"train step {self.step}/{self.total} ({self.step / self.total:.0%})  loss {loss:.4f}"
        text += f"  lr {lr:.2e}" if lr is not None else ""
        self.write(f"{text}  {rate:.2f} step/s  ETA {eta}")
        self.t_line, self.line_step, self.loss_sum, self.loss_n = now, self.step, 0.0, 0

    def postfix(self, **values: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.step > self.line_step:  # a run stopped early (train.stop_after): where it got to
            self._line(self.clock())


class Metrics:
    """Rank 0 writes; other ranks' calls are no-ops. Progress goes to `stream` (default stdout)."""

    def __init__(
        self, run: Path, enabled: bool, start_step: int, max_steps: int, cfg: Any, stream: TextIO | None = None
    ):
        self.enabled, self.cfg = enabled, cfg
        self.path = Path(run) / "metrics.jsonl"
        self.progress: Progress | None = None
        self.tb: Any = None
        self.wandb: Any = None
        self.t_last, self.tokens_since, self.flops_since = time.perf_counter(), 0, 0.0
        if not enabled:
            return
        self._truncate_after(start_step)
        if cfg.progress:
            self.progress = Progress(max_steps, start_step, stream)
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
        """Advance the progress output; every `log.every` steps (and when `log`) write a record with rates."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(step, loss, lr)
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
        if self.progress is not None:
            self.progress.postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")

    def log_eval(self, step: int, losses: dict[int, float], extra: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        record = {"step": step, "eval": {str(r): round(v, 6) for r, v in losses.items()}}
        record.update(extra or {})
        self.write(record)
        if self.progress is not None:
            self.progress.write(f"eval @{step}: " + "  ".join(f"r={r}: {v:.4f}" for r, v in losses.items()))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
