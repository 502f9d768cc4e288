"""Parallel (diffusion-forcing) sampler against sequential greedy decoding (issue 22).

1. Speed: shape `small` (2+4+2 layers, width 256, vocab 4096; random weights, seed 0) at 32 core
   steps, 64-token prompt, 64 new tokens, CPU fp32, batch 1 and 8: tokens/s and model forwards
   per token of sequential greedy decoding and of the parallel sampler over wavefront width and
   freeze threshold, eager, and with `--compile` both compiled too (`compile=True`); `same` is
   the fraction of the parallel sampler's tokens equal to sequential decoding's.
2. With `--run RUN` (the model `make run` trains in runs/quickstart, parity task), batch 1, at
   16 and 32 steps (`--run-steps`), 48 new tokens after prompts of 4 held-out problems and a
   fifth up to its `=` (both samplers compiled with `--compile`): the answer accuracy, the
   fraction of tokens equal to sequential decoding's, forwards per token and tokens/s over the
   freeze threshold (see `run_model` for why the answer accuracy cannot move).
In both, `rescored` is the quality figure over every generated token: the fraction that a
full-depth forward of the final sequence picks too (`rescored`).

Every comparison is measured in interleaved rounds (each round times every contender once; each
keeps its best round): this host's speed drifts by 30% within minutes.

    python benchmarks/bench_parallel.py [--quick] [--threads 2] [--repeats 3] [--compile] [--batches 1,8] [--run runs/quickstart]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

import huginn  # noqa: F401
from huginn import RavenConfig, RavenForCausalLM, named_shape
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.parallel import ParallelSampling, parallel_generate


def small_model() -> RavenForCausalLM:
    torch.manual_seed(0)
    return RavenForCausalLM(RavenConfig.from_model_config(named_shape("small"))).eval()


def contenders(quick: bool) -> list[tuple[str, ParallelSampling]]:
    grid = [(4, None), (8, None), (8, 0.03), (8, 0.1), (16, 0.03), (16, 0.1)]
    if quick:
        grid = [(8, None), (8, 0.03)]
    out = []
    for W, thr in grid:
        name = f"parallel W={W:<2} r=4 thr={'fixed' if thr is None else thr}"
        out.append((name, ParallelSampling(wavefront=W, inner_steps=4, freeze_threshold=thr)))
    return out


def rescored(model, sequences: torch.Tensor, prompt: int, steps: int) -> float:
    """The fraction of generated tokens that a full-depth forward of the final sequences (no cache,
    zero initial state) also picks greedily at their positions: the model's own choice given what
    precedes them. Sequential greedy decoding scores 1 up to float rounding (a cached token at full
    depth is that forward); a parallel sampler loses where it froze a position before the model
    would have picked its token. Unlike `same`, it does not count later tokens that differ only
    because an earlier one did."""
    with torch.no_grad():
        logits = model(sequences[:, :-1], num_steps=steps, init_scale=0.0).logits
    picks = logits[:, prompt - 1 :].argmax(dim=-1)
    return (picks == sequences[:, prompt:]).float().mean().item()


def speed(model, B: int, steps: int, prompt: int, new: int, repeats: int, quick: bool, compile: bool) -> None:
    ids = torch.randint(0, 4096, (B, prompt), generator=torch.Generator().manual_seed(B))
    depth, stopping = Depth(steps, init_scale=0.0), Stopping(new)
    runs = {"sequential eager": lambda: generate(model, ids, depth, stopping)}
    if compile:
        runs["sequential compiled"] = lambda: generate(model, ids, depth, stopping, compile=True)
    for name, ps in contenders(quick):
        runs[name] = lambda ps=ps: parallel_generate(model, ids, depth, stopping, ps)
        if compile:
            runs[f"{name} compiled"] = lambda ps=ps: parallel_generate(model, ids, depth, stopping, ps, compile=True)
    with torch.no_grad():
        results = {name: fn() for name, fn in runs.items()}  # warm-up (compiles) and the outputs
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    ref = results["sequential eager"].sequences[:, prompt:]
    base = min(best[k] for k in runs if k.startswith("sequential"))
    for name, res in results.items():
        tok_s = B * new / best[name]
        fwd = res.extras.get("forwards", new)  # sequential: the prompt's forward and one per later token
        same = (res.sequences[:, prompt:] == ref).float().mean().item()
        steps_tok = res.compute_steps[:, 1:].float().mean().item()
        agree = rescored(model, res.sequences, prompt, steps)
        print(
            f"batch {B} {name:<41} {tok_s:8.1f} tok/s (x{base / best[name]:.2f} the faster sequential)  "
            f"forwards/token {fwd / new:.2f}  steps/token {steps_tok:4.1f}  same {same:.2f}  rescored {agree:.3f}",
            flush=True,
        )


# --- the make-run model (parity task) ------------------------------------------------------------


def parity_prompts(n: int, shots: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, answer): `shots` held-out problems with answers, then one more up to its `=`."""
    from huginn.train.tasks import Parity

    task, rng = Parity(), random.Random(seed)
    out = []
    for _ in range(n):
        text = ""
        for i in range(shots + 1):
            k = rng.randint(4, 12)
            v = task.draw(rng, k, "held-out")
            text += task.prompt(k, v) + (task.answer(k, v) if i < shots else "")
        out.append((text, task.answer(k, v)))
    return out


def run_model(run: Path, steps: int, new: int, n_prompts: int, quick: bool, repeats: int, compile: bool) -> None:
    """The answer accuracy and the agreement with sequential decoding over the freeze threshold.
    The answer is the first new token, which the prompt's forward decides in both samplers (the
    task trains only the answer, so what follows is not scored): accuracy is equal by
    construction, and the agreement of the later tokens with sequential decoding is the figure
    that moves."""
    from huginn.train.corpus import decode, encode
    from huginn.train.export import load_run_model

    model, _ = load_run_model(run)
    model.eval()
    prompts = parity_prompts(4 if quick else n_prompts, 4)
    thresholds = [None, 0.1] if quick else [None, 0.3, 0.1, 0.05, 0.03, 0.01]
    depth = Depth(steps, init_scale=0.0)
    settings: list[tuple[str, ParallelSampling | None]] = [("sequential", None)]
    for thr in thresholds:
        name = f"parallel W=8 r=2 thr={'fixed' if thr is None else thr}"
        settings.append((name, ParallelSampling(wavefront=8, inner_steps=2, freeze_threshold=thr)))
    how = "compiled" if compile else "eager"
    print(f"\n{run} at {steps} steps, {len(prompts)} parity prompts, {new} new tokens, batch 1, {how}", flush=True)
    encoded = [(torch.tensor([encode(p)]), answer) for p, answer in prompts]

    def run_all(ps: ParallelSampling | None) -> list:
        with torch.no_grad():
            if ps is None:
                return [generate(model, ids, depth, Stopping(new), compile=compile) for ids, _ in encoded]
            return [parallel_generate(model, ids, depth, Stopping(new), ps, compile=compile) for ids, _ in encoded]

    results = {name: run_all(ps) for name, ps in settings}
    best = dict.fromkeys(results, float("inf"))
    for _ in range(repeats):  # interleaved rounds over every prompt, each setting keeps its best
        for name, ps in settings:
            t0 = time.perf_counter()
            run_all(ps)
            best[name] = min(best[name], time.perf_counter() - t0)
    ref = [r.sequences[0, ids.shape[1] :].tolist() for r, (ids, _) in zip(results["sequential"], encoded)]
    tokens = new * len(encoded)
    for name, res in results.items():
        correct = same = forwards = 0
        steps = agree = 0.0
        for r, (ids, answer), want in zip(res, encoded, ref):
            gen = r.sequences[0, ids.shape[1] :].tolist()
            correct += decode(gen[:1]) == answer
            same += sum(a == b for a, b in zip(gen, want))
            forwards += r.extras.get("forwards", new)
            steps += r.compute_steps[0, 1:].float().mean().item() / len(encoded)
            agree += rescored(model, r.sequences, ids.shape[1], depth.num_steps) / len(encoded)
        print(
            f"  {name:<30} answer accuracy {correct / len(encoded):6.1%}  same tokens {same / tokens:6.1%}  "
            f"rescored {agree:6.1%}  "
            f"forwards/token {forwards / tokens:.2f}  steps/token {steps:4.1f}  {tokens / best[name]:6.1f} tok/s "
            f"(x{best['sequential'] / best[name]:.2f})",
            flush=True,
        )


def figure(out: Path) -> None:
    """The wavefront over positions x forwards on the reference fixture (docs/inference.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from transformers import AutoModelForCausalLM

    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "huginn-reference-tiny"
    model = AutoModelForCausalLM.from_pretrained(str(fixture)).eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 129, 3, 7, 11]])
    n, new = 16, 16
    trace: list = []
    ps = ParallelSampling(wavefront=6, inner_steps=2, freeze_threshold=0.1)
    parallel_generate(model, ids, Depth(n, init_scale=0.0), Stopping(new + 1), ps, trace=trace)
    F = len(trace)
    grid = np.full((F, new), np.nan)
    frozen = np.zeros((F, new), dtype=bool)
    for f, (front, steps, k) in enumerate(trace):
        for i, s in enumerate(steps):
            if front + i < new:
                grid[f, front + i] = s
        frozen[f, front : front + k] = True
        grid[f + 1 :, front : front + k] = -1  # committed: shown as done from the next forward on
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_under("#dddddd")
    cmap.set_bad("white")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=n, aspect="auto", origin="upper")
    ys, xs = np.nonzero(frozen)
    ax.scatter(xs, ys, marker="s", s=36, facecolors="none", edgecolors="red", linewidths=1.2, label="frozen here")
    ax.set_xlabel("position (new tokens)")
    ax.set_ylabel("model forward")
    ax.set_title(
        f"wavefront 6, {ps.inner_steps} core steps per forward; frozen at {n} steps or latent change < 0.1",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="core steps run so far")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"figure: {out} ({F} forwards of {ps.inner_steps} steps for {new} tokens; one at a time: {new} of {n})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time both samplers compiled")
    ap.add_argument("--run", type=Path, default=None, help="a training run (make run: runs/quickstart)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--run-steps", default="16,32", help="depths for --run, comma-separated")
    ap.add_argument("--batches", default="1,8", help="batch sizes of the speed part, comma-separated")
    ap.add_argument("--figure", type=Path, default=None, help="only draw the wavefront figure to this PNG")
    ap.add_argument("--skip-speed", action="store_true", help="only the --run part")
    args = ap.parse_args()
    if args.figure is not None:
        figure(args.figure)
        return
    torch.set_num_threads(args.threads)
    new = 16 if args.quick else 64
    model = small_model()
    if not args.skip_speed:
        print(
            f"speed: shape small, {args.steps} steps, prompt 64, {new} new tokens, {args.threads} threads", flush=True
        )
    batches = [int(b) for b in args.batches.split(",")]
    for B in () if args.skip_speed else (1,) if args.quick else batches:
        speed(model, B, args.steps, 64, new, 1 if args.quick else args.repeats, args.quick, args.compile)
    if args.run is not None:
        for steps in (int(n) for n in args.run_steps.split(",")):
            run_model(args.run, steps, 48, 32, args.quick, 1 if args.quick else args.repeats, args.compile)


if __name__ == "__main__":
    main()
