"""The test-time-scaling report of a run: what depth buys, as a table, a plot and JSON.

On a built-in task (`huginn.train.tasks`) it is a depth sweep: answer accuracy on held-out problems
for every difficulty (the trained ones and harder ones) x num_steps, from a zero initial state, and
the same problems with an adaptive exit (the exit criterion checked after every core step, at most
`max(num_steps)` steps): mean core steps per answer and accuracy, per difficulty. One trajectory per
difficulty gives all of it: the core runs to the largest num_steps once, the coda reads the answer
position at the num_steps asked for and, for each problem, at the step where its criterion first
fires (problems in a batch do not interact, so this equals running each alone through
`huginn.infer.generate.run_tokens` with that `Depth`; tested). On other data it is the validation
loss against num_steps.

Writes RUN/scaling.json, RUN/scaling.md (a Markdown table) and RUN/scaling.png (matplotlib, Agg).
Non-goals: the validation loss itself (the loop's `evaluate`), choosing the exit criterion's threshold.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from huginn.infer.exits import make_criterion
from huginn.model.recurrence import Schedule
from huginn.train import corpus, tasks

# The default exit criterion of the report: the relative change of the state between core steps,
# averaged over the positions, at its published threshold (0.03, `huginn.infer.exits`). It finds
# the depth a problem needs (the state settles once the answer is computed); logit criteria (kl,
# entropy-diff) exit too early on hard problems, whose prediction sits still near chance while
# the bits are still being read (measured: docs/training.md).
EXIT_CRITERION = "latent-diff"

Answers = dict[int, dict[str, float]]  # num_steps -> {"loss": nats per answer token, "acc": fraction}


@dataclass
class Sweep:
    """A depth sweep; `to_json` is the scaling.json contract."""

    task: str
    num_steps: list[int]
    difficulties: list[int]
    trained_difficulties: list[int]
    train_mean_steps: int
    accuracy: list[list[float]]  # [difficulty][num_steps], fractions
    exit_criterion: str
    exit_threshold: float | None  # None: criterion "none"
    exit_mean_steps: list[float]  # per difficulty
    exit_accuracy: list[float]
    max_steps: int
    examples: int
    chance: float
    overlap: list[float]  # per difficulty: fraction of its problems that training may also draw
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # e.g. {"step": ..., "val_loss": {...}}

    def to_json(self) -> dict:
        d = asdict(self)
        out = {k: d[k] for k in ("num_steps", "difficulties", "trained_difficulties", "train_mean_steps", "accuracy")}
        out["exit"] = {
            "criterion": self.exit_criterion,
            "threshold": self.exit_threshold,
            "mean_steps": self.exit_mean_steps,
            "accuracy": self.exit_accuracy,
            "max_steps": self.max_steps,
        }
        out |= {k: d[k] for k in ("examples", "chance", "task", "overlap", "seconds")}
        return out | self.extra


def problems(task: str, k: int, n: int) -> tuple[Tensor, Tensor]:
    """(prompts (n, S), answers (n,)): the n evaluation problems of difficulty k, token ids."""
    t = tasks.TASKS[task]
    strings = t.instances(k, n)
    prompts = torch.tensor([corpus.encode(t.prompt(k, v)) for v in strings], dtype=torch.long)
    answers = torch.tensor([corpus.STOI[t.answer(k, v)] for v in strings], dtype=torch.long)
    return prompts, answers


class _SweepHook:
    """`model.recur`'s hook for one difficulty: reads the answer at the num_steps asked for and,
    per problem, at the step where the exit criterion first fires; never changes the state."""

    def __init__(self, model, ctx, answers: Tensor, num_steps: list[int], criterion, state: Tensor):
        self.model, self.ctx, self.answers, self.criterion = model, ctx, answers, criterion
        self.grid, self.max_steps = set(num_steps), max(num_steps)
        n, device = answers.shape[0], answers.device
        self.acc: dict[int, float] = {}
        self.steps = torch.full((n,), self.max_steps, dtype=torch.long, device=device)
        self.correct = torch.zeros(n, dtype=torch.bool, device=device)
        self.running = torch.ones(n, dtype=torch.bool, device=device)
        if criterion is not None:
            criterion.reset(state, None)

    def __call__(self, step: int, state: Tensor, previous: Tensor) -> None:
        crit, last = self.criterion, step == self.max_steps
        logits = None
        if step in self.grid or (crit is not None and crit.uses_logits):
            logits = self.model.predict(state, self.ctx, last_only=True)[0]
            if step in self.grid:
                self.acc[step] = float((logits.argmax(-1) == self.answers).float().mean())
        if crit is None:
            if last and logits is not None:
                self.correct = logits.argmax(-1) == self.answers
            return None
        exits = crit.check(state, logits, None) & self.running
        if last:
            exits = self.running  # the rest stop at the maximum, as generation does
        if bool(exits.any()):
            rows = exits.nonzero()[:, 0]
            if logits is None:  # the coda reads only the problems that stop here
                at = self.model.predict(state[rows], self.ctx, last_only=True)[0]
            else:
                at = logits[rows]
            self.correct[rows] = at.argmax(-1) == self.answers[rows]
            self.steps[rows] = step
            self.running &= ~exits
        return None


@torch.no_grad()
def trajectory(
    model, prompts: Tensor, answers: Tensor, num_steps: list[int], criterion=None
) -> tuple[list[float], Tensor, Tensor]:
    """Accuracy at each of `num_steps`, and per problem the core steps its exit `criterion` spends
    and whether its answer is then right (None: every problem runs max(num_steps) steps).
    Zero initial state; the answer is predicted at the last position of each prompt."""
    ctx = model.context(*prompts.shape)
    e = model.embed(prompts, ctx)
    state = model.initialize_state(e, init_scale=0.0)
    hook = _SweepHook(model, ctx, answers, num_steps, criterion, state)
    model.recur(state, e, ctx, Schedule.plain(max(num_steps)), hook=hook)
    return [hook.acc[r] for r in num_steps], hook.steps, hook.correct


def depth_sweep(
    model,
    task: str,
    difficulties: list[int],
    trained: tuple[int, int],
    num_steps: list[int],
    train_mean: int,
    criterion: str = EXIT_CRITERION,
    threshold: float | None = None,
    examples: int = tasks.EXAMPLES,
) -> Sweep:
    """Accuracy per difficulty x num_steps and the adaptive exit per difficulty (see the module doc);
    `threshold` None is the criterion's published one; criterion "none" runs max(num_steps) steps."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    num_steps = sorted(set(num_steps))
    spec = "auto" if threshold is None else threshold
    probe = make_criterion(criterion, spec)  # validates the name and threshold once
    acc, exit_steps, exit_acc = [], [], []
    for k in difficulties:
        prompts, answers = problems(task, k, examples)
        crit = make_criterion(criterion, spec)  # fresh: a criterion keeps per-row state
        row, steps, correct = trajectory(model, prompts.to(device), answers.to(device), num_steps, crit)
        acc.append(row)
        exit_steps.append(float(steps.float().mean()))
        exit_acc.append(float(correct.float().mean()))
    model.train(was_training)
    t = tasks.TASKS[task]
    return Sweep(
        task=task,
        num_steps=num_steps,
        difficulties=list(difficulties),
        trained_difficulties=[k for k in difficulties if trained[0] <= k <= trained[1]],
        train_mean_steps=train_mean,
        accuracy=acc,
        exit_criterion=criterion,
        exit_threshold=getattr(probe, "threshold", None),
        exit_mean_steps=exit_steps,
        exit_accuracy=exit_acc,
        max_steps=max(num_steps),
        examples=examples,
        chance=t.chance,
        overlap=[t.overlap(k) if trained[0] <= k <= trained[1] else 0.0 for k in difficulties],
        seconds=time.perf_counter() - start,
    )


# --- writing ---------------------------------------------------------------------------------
def sweep_table(s: Sweep) -> str:
    """Markdown: one row per difficulty, accuracy (%) per num_steps, then the adaptive exit."""
    heads = [f"{r} (train mean)" if r == s.train_mean_steps else str(r) for r in s.num_steps]
    lines = [
        "| difficulty | " + " | ".join(heads) + " | exit: mean steps | exit: acc |",
        "|---:|" + "---:|" * (len(heads) + 2),
    ]
    for i, k in enumerate(s.difficulties):
        label = str(k) if k in s.trained_difficulties else f"{k} (untrained)"
        if s.overlap[i] > 0:
            label += " *"
        cells = [f"{100 * a:.1f}" for a in s.accuracy[i]]
        cells += [f"{s.exit_mean_steps[i]:.1f}", f"{100 * s.exit_accuracy[i]:.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_caption(s: Sweep) -> str:
    trained = s.trained_difficulties
    which = f"trained on difficulties {trained[0]}-{trained[-1]}" if trained else "no trained difficulty swept"
    return (
        f"Answer accuracy (%) on {s.examples} problems per difficulty ({s.task}; chance {100 * s.chance:.0f}%; "
        f"{which}) by num_steps, from a zero initial state; then "
        f"with the exit criterion {s.exit_criterion} at {s.exit_threshold} (max_steps {s.max_steps}): mean "
        f"core steps per answer and accuracy. * too few distinct problems to hold any out of training."
    )


def write_sweep(run: Path, s: Sweep) -> str:
    """RUN/scaling.json, scaling.md and scaling.png of a depth sweep; returns the table."""
    run = Path(run)
    text = sweep_table(s)
    # one top-level key per line, lists kept on their line: the accuracy grid stays readable
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in s.to_json().items())
    (run / "scaling.json").write_text("{\n" + body + "\n}\n")
    (run / "scaling.md").write_text(f"{sweep_caption(s)}\n\n{text}\n")
    plot_sweep(run / "scaling.png", s)
    return text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(path: Path, s: Sweep) -> None:
    """Left: accuracy against num_steps, one line per difficulty (dashed: untrained), the training
    mean marked. Right: per difficulty, the exit's mean steps and the fixed depth it needs."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("viridis")
    top = max(s.difficulties)
    for i, k in enumerate(s.difficulties):
        trained = k in s.trained_difficulties
        ax.plot(
            s.num_steps,
            [100 * a for a in s.accuracy[i]],
            "-" if trained else "--",
            marker="o" if trained else "s",
            ms=3,
            lw=1.2,
            color=cmap(k / top * 0.95),
        )
    ax.axvline(s.train_mean_steps, color="gray", ls=":", lw=1.2)
    ax.text(s.train_mean_steps * 1.05, 3, f"training mean ({s.train_mean_steps})", color="gray", fontsize=8)
    ax.axhline(100 * s.chance, color="gray", lw=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(s.num_steps, [str(x) for x in s.num_steps])
    ax.set_ylim(0, 102)
    ax.set_xlabel("num_steps (core iterations at test time)")
    ax.set_ylabel("answer accuracy (%)")
    ax.set_title(f"{s.task}: one line per difficulty (dashed: harder than trained)", fontsize=9)
    ax.grid(alpha=0.3)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, top / 0.95))
    fig.colorbar(sm, ax=ax, label="difficulty")

    needed = [_steps_to(s, i, 0.95) for i in range(len(s.difficulties))]
    ax2.plot(s.difficulties, s.exit_mean_steps, "o-", ms=3, color="tab:red", label=f"exit ({s.exit_criterion})")
    ax2.plot(s.difficulties, needed, "s--", ms=3, color="tab:blue", label="fixed depth reaching 95% of best")
    if s.trained_difficulties:
        ax2.axvline(max(s.trained_difficulties), color="gray", ls=":", lw=1.2)
        ax2.text(max(s.trained_difficulties) * 1.03, 1.1, "hardest trained", color="gray", fontsize=8)
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("difficulty")
    ax2.set_ylabel("core steps per answer")
    ax2.set_title(f"adaptive exit, max_steps {s.max_steps}", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _steps_to(s: Sweep, i: int, fraction: float) -> int:
    """The smallest num_steps whose accuracy reaches `fraction` of difficulty i's best."""
    best = max(s.accuracy[i])
    return next(r for r, a in zip(s.num_steps, s.accuracy[i], strict=True) if a >= fraction * best)


# --- loss against num_steps (packed and chat data) -------------------------------------------
def table(losses: dict[int, float], answers: Answers | None = None, train_mean: int | None = None) -> str:
    head = "| num_steps | val loss | val ppl |" + (" answer loss | answer acc |" if answers else "")
    rule = "|---:|---:|---:|" + ("---:|---:|" if answers else "")
    lines = [head, rule]
    for r, loss in losses.items():
        mark = " (train mean)" if r == train_mean else ""
        row = f"| {r}{mark} | {loss:.4f} | {math.exp(loss):.3f} |"
        if answers:
            row += f" {answers[r]['loss']:.4f} | {answers[r]['acc']:.1%} |"
        lines.append(row)
    return "\n".join(lines)


def write(run: Path, losses: dict[int, float], answers: Answers | None, train_mean: int, step: int) -> str:
    run = Path(run)
    text = table(losses, answers, train_mean)
    answers = answers or {}
    (run / "scaling.json").write_text(
        json.dumps(
            {
                "step": step,
                "train_mean_recurrence": train_mean,
                "val_loss": {str(k): v for k, v in losses.items()},
                "answer_loss": {str(k): a["loss"] for k, a in answers.items()},
                "answer_accuracy": {str(k): a["acc"] for k, a in answers.items()},
            },
            indent=2,
        )
        + "\n"
    )
    (run / "scaling.md").write_text(
        f"Validation loss by test-time depth after {step} steps (training mean recurrence {train_mean}).\n\n{text}\n"
    )
    plt = _pyplot()
    xs = list(losses)
    fig, axes = plt.subplots(1, 2 if answers else 1, figsize=(9 if answers else 5, 3.4), dpi=120, squeeze=False)
    ax = axes[0][0]
    ax.plot(xs, [losses[x] for x in xs], "o-", label="all tokens")
    if answers:
        ax.plot(xs, [answers[x]["loss"] for x in xs], "^-", color="tab:red", label="answer tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"test-time scaling after {step} steps")
    panels = [ax]
    if answers:
        ax2 = axes[0][1]
        ax2.plot(xs, [answers[x]["acc"] for x in xs], "s-", color="tab:orange", label="answer accuracy")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("answer accuracy")
        ax2.set_title("answer tokens")
        panels.append(ax2)
    for a in panels:
        a.axvline(train_mean, color="gray", ls="--", lw=1, label=f"training mean ({train_mean})")
        a.set_xscale("log", base=2)
        a.set_xticks(xs, [str(x) for x in xs])
        a.set_xlabel("num_steps (core iterations at test time)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run / "scaling.png")
    plt.close(fig)
    return text
