"""The files of `huginn analyze`: PNG figures, one self-contained report.html and analysis.json.

report.html embeds every figure as a base64 data URI and uses no script, font or style sheet from
elsewhere, so it opens offline and can be mailed as one file. All files are written into a
temporary folder next to the output folder and moved in only once everything is written: a
failure leaves nothing partial behind. `summary` is the text the command prints. Non-goals: the
numbers (`analyze`), drawing (`figures`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path

from huginn.analysis.analyze import Analysis
from huginn.analysis.figures import CLASS_COLORS, FIGURES, lens_steps
from huginn.analysis.metrics import KINDS

CAPTIONS = {
    "convergence": "Relative change of the state between successive core steps, per token (log scale). "
    "Dark rows settle; bright bands that stay bright do not.",
    "waterfall": "Each token's state over the steps, on the first principal component of all states.",
    "orbits": "The last states of chosen tokens on their own principal components (centred on their mean): "
    "a point is a fixed point, a loop an orbit, a line a slider. The black cross is the last step.",
    "lens": "Logit lens: the coda's most likely next token when it reads the state at step t.",
    "steps": "Steps until the relative change stays below the threshold, per token.",
}


def summary(a: Analysis) -> str:
    """Short text: the counts of each class, mean steps to converge, the probe."""
    counts = a.counts()
    lines = [f"{len(a.tokens)} tokens, {a.num_steps} core steps"]
    lines.append("classes: " + ", ".join(f"{counts[k]} {k}" for k in KINDS))
    mean = a.mean_steps_to_converge()
    conv = int((a.steps_to_converge > 0).sum())
    lines.append(
        f"converged (relative change < {a.threshold:g}): {conv}/{len(a.tokens)} tokens"
        + (f", mean {mean:.1f} steps" if mean is not None else "")
    )
    if a.probe is not None:
        lines.append(
            f"loop-counter probe: step read from the state with {a.probe.accuracy:.0%} held-out accuracy "
            f"(chance {a.probe.chance:.0%}, mean error {a.probe.mean_abs_error:.1f} steps)"
        )
    return "\n".join(lines)


def _esc(text: str) -> str:
    return html.escape(repr(text)[1:-1] if text.strip() == "" or "\n" in text or "\t" in text else text)


def _token_table(a: Analysis) -> str:
    cols = lens_steps(a.num_steps, most=6)
    head = "".join(f"<th>lens @{t}</th>" for t in cols)
    rows = []
    for p, tok in enumerate(a.tokens):
        c = a.classes[p]
        s = int(a.steps_to_converge[p])
        lens_cells = "".join(
            f"<td>{_esc(a.lens_tokens[p][t - 1])} <small>{float(a.lens_prob[p, t - 1]):.2f}</small></td>" for t in cols
        )
        rows.append(
            f"<tr><td>{p}</td><td><code>{_esc(tok)}</code></td>"
            f'<td style="color:{CLASS_COLORS[c.kind]}">{c.kind}</td><td>{c.period or ""}</td>'
            f"<td>{s if s > 0 else '&ndash;'}</td><td>{float(a.relative_change[p, -1]):.2e}</td>{lens_cells}</tr>"
        )
    return (
        "<table><thead><tr><th>#</th><th>token</th><th>class</th><th>period</th><th>steps to converge</th>"
        f"<th>last relative change</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_html(a: Analysis, pngs: dict[str, bytes], title: str = "huginn analyze") -> str:
    """The self-contained report: summary, figures inline (base64 PNG), a table per token."""
    figures = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>"
        for name, data in pngs.items()
    )
    text = "".join(a.tokens)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{font-size:.9em;color:#555}"
        "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}"
        "pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}"
    )
    rules = (
        f"Classes are judged on the last {a.tail} states of each trajectory: <b>fixed point</b> when the "
        f"successive distance fell to 10% of its largest value in that window (or the relative change below the threshold, {a.threshold:g}); "
        "<b>orbit</b> when the state returns within 0.35 mean steps of where it was p steps earlier; "
        "<b>slider</b> when the net displacement is at least 80% of the path; else <b>not converged</b>."
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(text)}</pre>"
        f"<pre>{html.escape(summary(a))}</pre><p>{rules}</p>{figures}"
        f"<h2>Per token</h2>{_token_table(a)}</body></html>"
    )


def write_report(a: Analysis, out: Path, title: str = "huginn analyze") -> list[Path]:
    """Write NAME.png for every figure, report.html and analysis.json into `out` (created if
    needed; files of an earlier analysis are replaced). All or nothing: the files are written into
    a temporary folder first and moved in at the end."""
    out = Path(out)
    base = out
    while not base.exists():  # the nearest existing folder: nothing is created before the end
        base = base.parent
    tmp = Path(tempfile.mkdtemp(prefix=".huginn-analyze-", dir=base))
    created = not out.exists()
    try:
        pngs = {name: draw(a) for name, draw in FIGURES.items()}
        for name, data in pngs.items():
            (tmp / f"{name}.png").write_bytes(data)
        (tmp / "report.html").write_text(render_html(a, pngs, title), encoding="utf-8")
        (tmp / "analysis.json").write_text(json.dumps(a.to_json(), allow_nan=False) + "\n", encoding="utf-8")
        if created:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the folder is the user's output
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, out)
            return sorted(out.iterdir())
        names = sorted(p.name for p in tmp.iterdir())
        for name in names:
            os.replace(tmp / name, out / name)
        return [out / n for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
