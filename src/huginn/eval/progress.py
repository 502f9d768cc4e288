"""The one progress display of a depth sweep: requests done, requests/s and ETA over every cell.

On a terminal a rich bar on stderr; elsewhere (CI logs, `huginn eval > log`) a line every 10 s and
after each cell. Non-goal: lm-eval's own bars (`huginn.eval.sweep.quiet_lm_eval` turns them off).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from huginn.eval.sweep import Cell


class SweepProgress:
    """One progress display over all work, in requests: a rich bar (rate, ETA) on a terminal, a line
    every `every_s` seconds elsewhere. A task's request count is learnt from its first cell; until
    then the total assumes the average of the tasks seen so far."""

    def __init__(self, cells: list[Cell], stream=None, every_s: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        self.cells, self.every_s = cells, every_s
        self.per_task: dict[str, int] = {}
        self.done = 0
        self.cell_done = 0
        self.current: Cell | None = None
        self.t0 = self.t_line = time.monotonic()
        self.done_at_start = 0
        self.bar: Any = None
        self.task_id: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self.bar.start()
            self.task_id = self.bar.add_task("eval", total=None, rate="")

    def _total(self) -> int | None:
        if not self.per_task:
            return None
        avg = sum(self.per_task.values()) / len(self.per_task)
        return round(sum(self.per_task.get(c.task, avg) for c in self.cells))

    def start_cell(self, cell: Cell, requests: int | None = None) -> None:
        self.current, self.cell_done = cell, 0
        if requests is not None:
            self.per_task.setdefault(cell.task, requests)

    def skip_cell(self, cell: Cell, requests: int) -> None:
        """A cell done by an earlier run: its requests count as done (and not in the rate)."""
        self.per_task.setdefault(cell.task, requests)
        self.done += requests
        self.done_at_start += requests
        self._show()

    def end_cell(self) -> None:
        assert self.current is not None
        self.per_task[self.current.task] = max(self.per_task.get(self.current.task, 0), self.cell_done)
        self.current = None
        self._show(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self.cell_done += n
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        rate = (self.done - self.done_at_start) / max(now - self.t0, 1e-9)
        desc = f"eval {self.current.task} @ {self.current.num_steps}" if self.current else "eval"
        if self.current is not None and self.current.exit.adaptive:
            desc += f" {self.current.exit}"
        if self.bar is not None:
            self.bar.update(
                self.task_id, completed=self.done, total=self._total(), description=desc, rate=f"{rate:.1f} req/s"
            )
            return
        if force or now - self.t_line >= self.every_s:
            total = self._total()
            left = (total - self.done) / rate if total and rate > 0 else None
            eta = f"ETA {left:.0f}s" if left is not None else "ETA ?"
            of = f"/{total}" if total else ""
            print(f"{desc}: {self.done}{of} requests, {rate:.1f} req/s, {eta}", file=self.stream, flush=True)
            self.t_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
