"""Cost of capturing latent trajectories against the plain forward (issue 20's targets).

    python benchmarks/bench_analysis.py [--positions 512] [--steps 64] [--repeats 3] [--threads 1]

On the 2+4+2 width-256 shape (`small`, random weights, zero initial state), a forward of
`positions` tokens at `steps` core steps, plain (`model(ids, num_steps)`) and through
`huginn.analysis.capture` keeping the state of every position after every step. Prints:
- time: the median of `repeats` runs each (after one warm-up), and their ratio (target <= 1.3);
- memory: in a fresh process per variant, the rise of resident memory during the run (the peak,
  VmHWM, reset through /proc/self/clear_refs just before it, minus VmRSS then: Linux), and
  (capture's rise - plain's rise) / bytes of the captured states (target <= 1.10: nothing is held
  beyond the captured tensors, which are allocated once at their final size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _setup(positions: int, threads: int):
    import torch

    from huginn import RecurrentLM, named_shape

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = RecurrentLM(named_shape("small")).eval()
    ids = torch.randint(0, model.model_config.vocab_size, (1, positions), generator=torch.Generator().manual_seed(0))
    return model, ids


def _plain(model, ids, steps):
    import torch

    with torch.no_grad():
        return model(ids, steps, init_scale=0.0)


def _capture(model, ids, steps):
    from huginn.analysis import capture

    return capture(model, ids, steps, init_scale=0.0)


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def child(kind: str, positions: int, steps: int, threads: int) -> None:
    """One variant in a fresh process: the rise of its resident memory during the run, in bytes."""
    model, ids = _setup(positions, threads)
    _plain(model, ids, 1)  # the same warm-up for both variants
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _status("VmRSS")
    out = (_plain if kind == "plain" else _capture)(model, ids, steps)
    captured = out.states.numel() * out.states.element_size() if kind == "capture" else 0
    print(json.dumps({"rise": _status("VmHWM") - before, "captured": captured}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=["plain", "capture"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.positions, args.steps, args.threads)
        return

    model, ids = _setup(args.positions, args.threads)
    _plain(model, ids, 2), _capture(model, ids, 2)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "capture": []}
    for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits both alike
        for kind, fn in (("plain", _plain), ("capture", _capture)):
            t0 = time.perf_counter()
            fn(model, ids, args.steps)
            times[kind].append(time.perf_counter() - t0)
    plain_s, capture_s = statistics.median(times["plain"]), statistics.median(times["capture"])
    print(f"shape small (2+4+2, width 256), {args.positions} positions x {args.steps} steps, {args.threads} thread(s)")
    print(f"time: plain forward {plain_s:.3f} s, capture {capture_s:.3f} s (median of {args.repeats})")
    print(f"time ratio capture / plain: {capture_s / plain_s:.3f} (target <= 1.3)")

    peaks = {}
    for kind in ("plain", "capture"):
        cmd = [sys.executable, __file__, "--child", kind, "--positions", str(args.positions)]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
        peaks[kind] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    captured = peaks["capture"]["captured"]
    extra = peaks["capture"]["rise"] - peaks["plain"]["rise"]
    mib = 2**20
    print(
        f"memory rise during the run: plain {peaks['plain']['rise'] / mib:.1f} MiB, capture {peaks['capture']['rise'] / mib:.1f} MiB; "
        f"captured states {captured / mib:.1f} MiB"
    )
    print(f"memory ratio (capture rise - plain rise) / captured: {extra / captured:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
