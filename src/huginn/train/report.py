"""The test-time-scaling report of a run: validation loss against num_steps, as a table and a plot.

Writes RUN/scaling.json, RUN/scaling.md (a Markdown table) and RUN/scaling.png (matplotlib, Agg).
Non-goal: computing the losses (the loop's `evaluate`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def table(losses: dict[int, float], accuracy: dict[int, float] | None = None, train_mean: int | None = None) -> str:
    head = "| num_steps | val loss | val ppl |" + (" answer acc |" if accuracy else "")
    rule = "|---:|---:|---:|" + ("---:|" if accuracy else "")
    lines = [head, rule]
    for r, loss in losses.items():
        mark = " (train mean)" if r == train_mean else ""
        row = f"| {r}{mark} | {loss:.4f} | {math.exp(loss):.3f} |"
        if accuracy:
            row += f" {accuracy[r]:.1%} |"
        lines.append(row)
    return "\n".join(lines)


def write(run: Path, losses: dict[int, float], accuracy: dict[int, float] | None, train_mean: int, step: int) -> str:
    run = Path(run)
    text = table(losses, accuracy, train_mean)
    (run / "scaling.json").write_text(
        json.dumps({"step": step, "train_mean_recurrence": train_mean, "val_loss": {str(k): v for k, v in losses.items()},
                    "answer_accuracy": {str(k): v for k, v in (accuracy or {}).items()}}, indent=2) + "\n"
    )
    (run / "scaling.md").write_text(f"Validation loss by test-time depth after {step} steps (training mean recurrence {train_mean}).\n\n{text}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    xs = list(losses)
    ax.plot(xs, [losses[x] for x in xs], "o-", label="validation loss")
    ax.axvline(train_mean, color="gray", ls="--", lw=1, label=f"training mean ({train_mean})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("num_steps (core iterations at test time)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"test-time scaling after {step} steps")
    ax.grid(alpha=0.3)
    if accuracy:
        ax2 = ax.twinx()
        ax2.plot(xs, [accuracy[x] for x in xs], "s:", color="tab:orange", label="answer accuracy")
        ax2.set_ylabel("answer accuracy")
        ax2.set_ylim(0, 1)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run / "scaling.png")
    plt.close(fig)
    return text
