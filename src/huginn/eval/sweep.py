"""The depth sweep behind `huginn eval`: every task at every depth, one model load, resumable.

A sweep is a list of cells (task, num_steps, exit rule). Each cell is one lm-eval run of one task
(`lm_eval.simple_evaluate` on the loaded `HuginnLM`, its depth set per cell) whose results are
written to `OUT/results/TASK/CELL.json` at once (written whole, then renamed: a crash loses at most
the cell in progress), so a re-run with the same OUT skips the cells already there. From all cell
files: `results.csv` (task, filter, metric, num_steps, exit, value, stderr, mean core steps per
token, FLOPs per token from `huginn.model.cost`), a printed table and `depth.png` (each metric
against num_steps and against FLOPs/token, stderr bars; an exit sweep's thresholds are plotted at
the mean core steps they spent).

`--text` cells measure loss by depth on local text through `loglikelihood_rolling` (lm-eval's
wikitext metric): token-level loss (nats), perplexity and bits per byte. Non-goals: argument parsing
(`huginn.cli.eval`), the scoring itself (`huginn.eval.lm`, `huginn.eval.score`), the progress
display (`huginn.eval.progress`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huginn.errors import HuginnError
from huginn.infer.options import ExitRule

CSV_FIELDS = (
    "task",
    "filter",
    "metric",
    "num_steps",
    "exit",
    "value",
    "stderr",
    "mean_core_steps",
    "flops_per_token",
)


# --- parsing --------------------------------------------------------------------------------------
def parse_num_steps(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8] (each an integer >= 1, in the order given, repeats dropped)."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not re.fullmatch(r"[+-]?\d+", part):
            raise HuginnError(f"--num-steps {text!r} is not a list of integers; write e.g. --num-steps 1,2,4,8")
        n = int(part)
        if n < 1:
            raise HuginnError(f"--num-steps must all be >= 1, got {n}; write e.g. --num-steps 1,2,4,8")
        if n not in out:
            out.append(n)
    return out


def parse_exit_sweep(text: str) -> list[ExitRule]:
    """'kl:1e-3,5e-4,1e-4' -> one rule per threshold; 'latent-diff' -> its published default."""
    name, _, thresholds = str(text).partition(":")
    name = name.strip()
    if not thresholds.strip():
        return [ExitRule.parse(name)]
    rules = []
    for t in thresholds.split(","):
        t = t.strip()
        try:
            value = float(t)
        except ValueError:
            raise HuginnError(
                f"--exit {text!r}: threshold {t!r} is not a number; write e.g. --exit kl:1e-3,5e-4"
            ) from None
        rules.append(ExitRule(name, value))
    return rules


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


@dataclass(frozen=True)
class Cell:
    """One task at one depth: `num_steps` core steps (the maximum with an adaptive `exit`)."""

    task: str
    num_steps: int
    exit: ExitRule = field(default_factory=ExitRule)

    @property
    def name(self) -> str:
        tail = f"_exit-{safe_name(str(self.exit))}" if self.exit.adaptive else ""
        return f"steps-{self.num_steps}{tail}"

    def path(self, out: Path) -> Path:
        return out / "results" / safe_name(self.task) / f"{self.name}.json"


def plan(tasks: list[str], steps: list[int], exits: list[ExitRule]) -> list[Cell]:
    """Every task at every depth; with exits, every threshold at the largest depth (its cap)."""
    cells = [Cell(t, n) for t in tasks for n in steps]
    cells += [Cell(t, max(steps), e) for t in tasks for e in exits]
    return cells


# --- tasks ----------------------------------------------------------------------------------------
def _lm_eval_task_files() -> tuple[str, set[str]]:
    """All of lm-eval's task YAML text, and the task / group / tag names declared in it."""
    import lm_eval

    chunks = [p.read_text(errors="ignore") for p in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml")]
    text = "\n".join(chunks)
    listed = set(re.findall(r"^(?:task|group|tag):\s*['\"]?([\w.\-]+)", text, re.M))
    return text, listed


def _unknown(name: str, known: set[str]) -> None:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `python -m huginn.eval ls tasks`"
    raise HuginnError(f"unknown task {name!r}; {hint} (your own YAMLs: --include-path DIR)")


def task_manager(names: list[str], include_paths: Iterable[str | Path] = (), metadata: dict | None = None):
    """lm-eval's task index over huginn's offline tasks and the user's YAML folders, and lm-eval's
    own tasks only when a name needs them (indexing them all takes seconds); unknown names are one
    line naming the first. `metadata` goes to every task (a custom dataset's keywords: `path`)."""
    import logging

    from lm_eval.tasks import TaskManager

    from huginn.eval import TASKS_DIR

    paths = [str(TASKS_DIR)]
    for p in include_paths:
        if not Path(p).is_dir():
            raise HuginnError(f"--include-path {p} is not a folder; pass a folder of lm-eval task YAMLs")
        paths.append(str(p))
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    missing = [n for n in names if n not in set(manager.all_tasks)]
    if missing:
        # a name that appears in none of lm-eval's task files is unknown: say so without the
        # full index (it takes seconds to build)
        text, listed = _lm_eval_task_files()
        for name in missing:
            if name not in text:
                _unknown(name, listed | set(manager.all_tasks))
        manager = TaskManager(include_path=paths, metadata=metadata)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            _unknown(name, known)
    return manager


# --- running cells --------------------------------------------------------------------------------
def flops_at(cfg, mean_steps: float) -> float:
    """Forward FLOPs per token at a (mean) number of core steps: the cost model is linear in steps."""
    from huginn.model.cost import flops_per_token

    one, two = flops_per_token(cfg, 1), flops_per_token(cfg, 2)
    return one + (mean_steps - 1) * (two - one)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write whole, then rename: a reader (or a re-run) never sees half a file."""
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=handle_non_serializable))
    os.replace(tmp, path)


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's own progress bars (it passes `disable=` itself, so TQDM_DISABLE cannot) and its
    git probe's stderr off while a cell runs: the sweep has one display."""
    import subprocess

    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator_module
    import lm_eval.loggers.utils as log_utils

    bar, probe = task_module.tqdm, log_utils.get_git_commit_hash

    def quiet_bar(*args: Any, **kwargs: Any) -> Any:
        return bar(*args, **{**kwargs, "disable": True})

    def quiet_probe() -> str | None:
        try:
            out = subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL)
            return out.strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return None

    task_module.tqdm = quiet_bar
    log_utils.get_git_commit_hash = evaluator_module.get_git_commit_hash = quiet_probe
    try:
        yield
    finally:
        task_module.tqdm = bar
        log_utils.get_git_commit_hash = evaluator_module.get_git_commit_hash = probe


def run_task_cell(lm, cell: Cell, manager, settings: dict[str, Any]) -> dict[str, Any]:
    """One lm-eval run of `cell.task` at the cell's depth: its results plus the compute spent."""
    from lm_eval import simple_evaluate

    lm.set_depth(cell.num_steps, cell.exit)
    lm.tally.tokens = lm.tally.step_tokens = 0
    t0 = time.perf_counter()
    with quiet_lm_eval():
        results = simple_evaluate(
            model=lm,
            tasks=[cell.task],
            task_manager=manager,
            log_samples=False,
            verbosity="ERROR",
            **settings,
        )
    assert results is not None
    results.pop("samples", None)
    return _record(lm, cell, t0, results)


def _record(lm, cell: Cell, t0: float, lm_eval: dict[str, Any]) -> dict[str, Any]:
    """A finished cell as written to its JSON: lm-eval's results with the compute it took."""
    mean = lm.tally.mean_steps or float(cell.num_steps)
    return {
        "task": cell.task,
        "num_steps": cell.num_steps,
        "exit": str(cell.exit) if cell.exit.adaptive else "",
        "mean_core_steps": mean,
        "flops_per_token": flops_at(lm.model.model_config, mean),
        "seconds": time.perf_counter() - t0,
        "lm_eval": lm_eval,
    }


def read_text_docs(path: str | Path, limit: int | None = None) -> list[str]:
    """Documents of a local text: a .txt file is one document; a .parquet file one per row of its
    `text` column."""
    file = Path(path)
    if not file.is_file():
        raise HuginnError(f"--text {file} does not exist; pass a .txt or .parquet file")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as err:  # pyarrow raises several types for "not parquet"
            raise HuginnError(f"--text {file} is not a readable parquet file ({type(err).__name__})") from None
        if "text" not in table.column_names:
            raise HuginnError(f"--text {file} has no 'text' column (columns: {', '.join(table.column_names)})")
        docs = [d for d in table.column("text").to_pylist() if d]
    else:
        try:
            docs = [file.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise HuginnError(f"--text {file} is not UTF-8 text; pass a .txt or .parquet file") from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise HuginnError(f"--text {file} holds no text")
    return docs[:limit] if limit else docs


def run_text_cell(lm, cell: Cell, docs: list[str]) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of `docs` at the cell's depth (lm-eval's rolling windows)."""
    from lm_eval.api.instance import Instance

    lm.set_depth(cell.num_steps, cell.exit)
    lm.tally.tokens = lm.tally.step_tokens = 0
    t0 = time.perf_counter()
    reqs = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    lls = lm.loglikelihood_rolling(reqs)
    tokens = sum(len(lm.tok_encode(d)) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    nll = -sum(lls)
    loss = nll / tokens
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": nll / n_bytes / math.log(2)}
    results = {"results": {cell.task: {f"{k},none": v for k, v in metrics.items()}}}
    return {**_record(lm, cell, t0, results), "tokens": tokens, "bytes": n_bytes, "documents": len(docs)}


# --- outputs --------------------------------------------------------------------------------------
def rows_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """results.csv rows of one cell: one per (task, filter, metric) that lm-eval reported."""
    rows = []
    for task, metrics in sorted(record["lm_eval"].get("results", {}).items()):
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "filter": filt,
                    "metric": metric,
                    "num_steps": record["num_steps"],
                    "exit": record["exit"],
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else "",
                    "mean_core_steps": round(record["mean_core_steps"], 4),
                    "flops_per_token": round(record["flops_per_token"]),
                }
            )
    return rows


def collect(out: Path, cells: list[Cell]) -> list[dict[str, Any]]:
    """The rows of every finished cell of the plan, in plan order."""
    rows = []
    for cell in cells:
        path = cell.path(out)
        if path.is_file():
            rows.extend(rows_of(json.loads(path.read_text())))
    return rows


def write_csv(out: Path, rows: list[dict[str, Any]]) -> Path:
    path = out / "results.csv"
    tmp = path.with_name("results.csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table: one line per (task, metric, depth)."""
    head = ("task", "metric", "num_steps", "exit", "value", "stderr", "core steps", "GFLOP/token")
    body = [
        (
            r["task"],
            r["metric"] + ("" if r["filter"] == "none" else f" ({r['filter']})"),
            str(r["num_steps"]),
            r["exit"] or "-",
            f"{r['value']:.4f}",
            f"{r['stderr']:.4f}" if isinstance(r["stderr"], float) else "-",
            f"{r['mean_core_steps']:.2f}",
            f"{r['flops_per_token'] / 1e9:.4f}",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]]
    return "\n".join(lines)


def plot(out: Path, rows: list[dict[str, Any]]) -> Path | None:
    """depth.png: per (task, metric) a row of two panels: value against num_steps (fixed depth; exit
    thresholds at their mean core steps) and against FLOPs per token; stderr as error bars."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["task"], r["metric"], r["filter"]), []).append(r)
    fig, axes = plt.subplots(len(series), 2, figsize=(10, 3.2 * len(series)), squeeze=False)
    for (task, metric, filt), (ax_steps, ax_flops) in zip(series, axes, strict=True):
        rs = series[(task, metric, filt)]
        label = f"{task}: {metric}" + ("" if filt == "none" else f" ({filt})")
        for adaptive in (False, True):
            pts = sorted((r for r in rs if bool(r["exit"]) == adaptive), key=lambda r: r["mean_core_steps"])
            if not pts:
                continue
            y = [r["value"] for r in pts]
            err = [r["stderr"] if isinstance(r["stderr"], float) else 0.0 for r in pts]
            name = "exit: " + ", ".join(sorted({r["exit"].split(":")[0] for r in pts})) if adaptive else "fixed depth"
            style = dict(marker="s" if adaptive else "o", capsize=3, label=name, linestyle="--" if adaptive else "-")
            ax_steps.errorbar([r["mean_core_steps"] for r in pts], y, yerr=err, **style)
            ax_flops.errorbar([r["flops_per_token"] for r in pts], y, yerr=err, **style)
        for ax, xlabel in ((ax_steps, "core steps per token (num_steps; exits: mean)"), (ax_flops, "FLOPs per token")):
            ax.set_xscale("log", base=2 if ax is ax_steps else 10)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
        ax_steps.legend(fontsize=8)
    fig.tight_layout()
    path = out / "depth.png"
    tmp = out / "depth.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def requests_of(record: dict[str, Any]) -> int:
    """How many requests a finished cell ran (for the progress total)."""
    return int(record.get("requests", 0))
