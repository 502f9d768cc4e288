"""The figures of `huginn analyze`, drawn with matplotlib (Agg) from an `Analysis` as PNG bytes.

- convergence: heatmap of the relative change ||s_t - s_{t-1}|| / ||s_t|| (log scale), tokens x steps;
- waterfall: each token's coordinate on the first principal component of all states, over steps,
  one row per token (the reference notebook's PCA waterfall);
- orbits: per chosen token, its tail's coordinates on its own components 1-2, 3-4, 5-6, centred
  on its mean (the reference's orbit plots);
- lens: the logit lens's top token at a few steps, per token, shaded by its probability;
- steps: steps to convergence per token, coloured by class.
Non-goals: interactivity, the HTML around them (`report`).
"""

from __future__ import annotations

import io
import math

from huginn.analysis.analyze import Analysis

CLASS_COLORS = {"fixed point": "#2a7ab9", "orbit": "#d9542c", "slider": "#7a52b3", "not converged": "#8c8c8c"}
MAX_ROWS = 64  # tokens shown in a per-token figure (the last ones of a longer text)


def label(text: str) -> str:
    """A token's text as a plain, visible label (no mathtext, escapes for whitespace)."""
    shown = repr(text)[1:-1] if text else "∅"
    if text and text.strip() == "" and "\\" not in shown:
        shown = "␣" * len(text)
    return shown.replace("$", r"\$")


def _rows(a: Analysis) -> list[int]:
    S = len(a.tokens)
    return list(range(max(0, S - MAX_ROWS), S))


def _png(fig, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight" if tight else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lens_steps(num_steps: int, most: int = 12) -> list[int]:
    """Steps shown as columns of the logit-lens table: 1, 2, 4, ... and the last."""
    steps = sorted({min(num_steps, 2**i) for i in range(int(math.log2(num_steps)) + 1)} | {num_steps})
    if len(steps) > most:
        steps = steps[-most:]
    return steps


def convergence(a: Analysis) -> bytes:
    plt = _plt()
    rows = _rows(a)
    data = a.relative_change[rows].clamp_min(1e-12).log10().numpy()
    fig, ax = plt.subplots(figsize=(min(14, 4 + a.num_steps * 0.12), 1.5 + 0.22 * len(rows)))
    im = ax.imshow(
        data,
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(0.5, a.num_steps + 0.5, len(rows) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(rows)), [f"{p}: {label(a.tokens[p])}" for p in rows], fontsize=7)
    ax.set_xlabel("core step t")
    ax.set_title("relative change of the state  log10 ||s_t - s_{t-1}|| / ||s_t||", fontsize=10)
    fig.colorbar(im, ax=ax, label="log10 relative change")
    return _png(fig)


def waterfall(a: Analysis) -> bytes:
    plt = _plt()
    rows = _rows(a)
    pc1 = a.waterfall[rows]
    scale = float(pc1.abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.22 * len(rows)))
    steps = range(a.num_steps + 1)
    for i, p in enumerate(rows):
        ax.plot(steps, i - 0.45 * (pc1[i] / scale).numpy(), color=CLASS_COLORS[a.classes[p].kind], lw=1)
    ax.set_yticks(range(len(rows)), [f"{p}: {label(a.tokens[p])}" for p in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.set_xlabel("core step t (0: initial state)")
    ax.set_title(
        f"PCA waterfall: each token's state on PC1 of all states ({a.waterfall_explained:.0%} of variance)", fontsize=10
    )
    _legend(ax, plt)
    return _png(fig)


def _legend(ax, plt) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=c, lw=2, label=k) for k, c in CLASS_COLORS.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def orbits(a: Analysis) -> bytes:
    plt = _plt()
    n = max(1, len(a.orbit_positions))
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.6 * n), squeeze=False)
    for r, (p, coords, explained) in enumerate(zip(a.orbit_positions, a.orbits, a.orbit_explained)):
        c = a.classes[p]
        for k in range(3):
            ax = axes[r][k]
            i, j = 2 * k, 2 * k + 1
            if j >= coords.shape[1]:
                ax.axis("off")
                continue
            x, y = coords[:, i].numpy(), coords[:, j].numpy()
            ax.plot(x, y, color="#bbbbbb", lw=0.8, zorder=1)
            ax.scatter(x, y, c=range(len(x)), cmap="plasma", s=10, zorder=2, rasterized=True)
            ax.scatter(x[-1:], y[-1:], marker="x", color="black", s=30, zorder=3)
            ax.set_xlabel(f"PC{i + 1} ({float(explained[i]):.0%})", fontsize=7)
            ax.set_ylabel(f"PC{j + 1} ({float(explained[j]):.0%})", fontsize=7)
            ax.set_xticks([])  # the coordinates' values mean little; ticks cost most of the drawing
            ax.set_yticks([])
            if k == 0:
                extra = f", period {c.period}" if c.kind == "orbit" else ""
                ax.set_title(f"{p}: {label(a.tokens[p])}  ({c.kind}{extra})", fontsize=8, loc="left")
    fig.suptitle(
        f"orbits: the last {a.tail} states of each token on its own principal components",
        fontsize=10,
        y=1 - 0.15 / (2.6 * n),
    )
    fig.subplots_adjust(hspace=0.45, wspace=0.25, top=1 - 0.8 / (2.6 * n), left=0.05, right=0.98, bottom=0.04)
    return _png(fig, tight=False)  # tight layouts cost seconds for this many axes


def lens(a: Analysis) -> bytes:
    plt = _plt()
    rows = _rows(a)
    cols = lens_steps(a.num_steps)
    prob = a.lens_prob[rows][:, [t - 1 for t in cols]].numpy()
    fig, ax = plt.subplots(figsize=(1.5 + 0.75 * len(cols), 1.2 + 0.24 * len(rows)))
    ax.imshow(prob, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for i, p in enumerate(rows):
        for j, t in enumerate(cols):
            color = "white" if prob[i, j] > 0.6 else "black"
            ax.text(j, i, label(a.lens_tokens[p][t - 1])[:8], ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(len(cols)), [str(t) for t in cols], fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{p}: {label(a.tokens[p])}" for p in rows], fontsize=7)
    ax.set_xlabel("core step t")
    ax.set_title("logit lens: the coda's top next token at step t (shade: its probability)", fontsize=10)
    return _png(fig)


def steps(a: Analysis) -> bytes:
    plt = _plt()
    rows = _rows(a)
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.22 * len(rows)), 3.2))
    for i, p in enumerate(rows):
        s = int(a.steps_to_converge[p])
        kind = a.classes[p].kind
        if s > 0:
            ax.bar(i, s, color=CLASS_COLORS[kind])
        else:
            ax.bar(i, a.num_steps, color="none", edgecolor=CLASS_COLORS[kind], hatch="//")
    ax.set_xticks(range(len(rows)), [label(a.tokens[p]) for p in rows], fontsize=7, rotation=90)
    ax.set_ylabel("steps to converge")
    ax.set_ylim(0, a.num_steps + 1)
    ax.set_title(
        f"steps until the relative change stays below {a.threshold:g} (hatched: not within {a.num_steps})", fontsize=10
    )
    _legend(ax, plt)
    return _png(fig)


FIGURES = {
    "convergence": convergence,
    "waterfall": waterfall,
    "orbits": orbits,
    "lens": lens,
    "steps": steps,
}
