"""The test-time-scaling report of a run: validation loss against num_steps, as a table and a plot.

Writes RUN/scaling.json, RUN/scaling.md (a Markdown table) and RUN/scaling.png (matplotlib, Agg).
On the built-in corpus it also reports the loss and accuracy on the answer tokens alone: they are
deterministic given the prefix and need the chained lookups, so that is where depth shows; the
all-token loss averages them with table and question tokens that depth cannot improve.
Non-goal: computing the losses (the loop's `evaluate`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

Answers = dict[int, dict[str, float]]  # num_steps -> {"loss": nats per answer token, "acc": fraction}


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
