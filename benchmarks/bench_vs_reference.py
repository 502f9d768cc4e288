"""huginn against the reference implementation, side by side on one random checkpoint (issue 21).

The reference is seal-rg/recurrent-pretraining at commit 59e0b69, its `recpre/raven_modeling_minimal.py`
(the model file the published checkpoint ships), run in its own virtual environment with
transformers 4.56.2 (it breaks on 5.x). Set-up, once:

    git clone https://github.com/seal-rg/recurrent-pretraining /tmp/recurrent-pretraining
    git -C /tmp/recurrent-pretraining checkout 59e0b69
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 && .venv-ref/bin/pip install transformers==4.56.2 safetensors

Then:

    .venv/bin/python benchmarks/bench_vs_reference.py --reference /tmp/recurrent-pretraining \
        [--ref-python .venv-ref/bin/python] [--rounds 3] [--cases train-fp32,train-bf16,...] \
        [--baseline /tmp/base/src]     # also an older tree's huginn (baseline-*), to measure a change

huginn writes one random checkpoint of the 2+4+2 width-256 shape (4 heads, GLU 768, vocab 4096) in
the published format; both implementations load it. Every measurement runs in a fresh process (so
peak memory is per case) with 2 threads (`--threads`), and the rounds interleave the two implementations case by
case, so a slow phase of a shared host hits both alike; each contender keeps its best round.

Cases (tokens/s unless stated):
- train-fp32 / train-bf16: one optimizer step on 4 x 256 tokens, 4 no-grad + 4 grad core steps,
  AdamW; the bf16 case runs both under `torch.autocast("cpu", dtype=torch.bfloat16)` with fp32
  weights. huginn is measured three ways: the model's forward with `labels` from a user's loop
  (`huginn-forward`, as the HF Trainer calls it) and `huginn train`'s own step (`huginn-train`:
  chunked loss, fused AdamW), and that step with every block compiled (`huginn-compiled`,
  `train.compile: true`).
- prefill: one 512-token prompt through the model at 8 steps, no gradients.
- decode: batch 1, 32-token prompt, 64 new tokens at 8 steps, greedy; the reference through its
  model card's `generate`; huginn eager, `compile=True` (fp32) and `compile="frozen"` in bf16.
- memory: peak resident memory above the loaded model of one fp32 training step at 32 no-grad +
  8 grad steps (MiB; lower is better), with glibc's mmap threshold fixed so that resident memory
  follows the live tensors (see `run_one`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train import PeakRSS  # this folder is on sys.path when a script here runs

SHAPE = dict(n_layers_in_prelude=2, n_layers_in_recurrent_block=4, n_layers_in_coda=2, n_embd=256, n_heads=4)
BATCH, SEQ, STEPS = 4, 256, (4, 4)
PREFILL, DECODE_PROMPT, DECODE_NEW, DEPTH = 512, 32, 64, 8
CASES = ("train-fp32", "train-bf16", "prefill", "decode", "memory")


# --- the checkpoint --------------------------------------------------------------------------------


def write_checkpoint(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    from huginn import RavenConfig, RavenForCausalLM, named_shape

    torch.manual_seed(0)
    cfg = RavenConfig.from_model_config(named_shape("small", mean_recurrence=DEPTH))
    model = RavenForCausalLM(cfg)
    model.save_pretrained(out)


# --- the workers (one measurement per process) --------------------------------------------------------


def _timed(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def load_reference(ckpt: Path, repo: Path):
    """The reference's model class from its repository, as a package (it imports its config relatively)."""
    pkg = Path(tempfile.mkdtemp()) / "recpre_ref"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("raven_modeling_minimal.py", "raven_config_minimal.py"):
        shutil.copy(repo / "recpre" / name, pkg / name)
    sys.path.insert(0, str(pkg.parent))
    from recpre_ref.raven_config_minimal import RavenConfig  # type: ignore[import-not-found]
    from recpre_ref.raven_modeling_minimal import RavenForCausalLM  # type: ignore[import-not-found]

    cfg = RavenConfig.from_pretrained(ckpt)
    return RavenForCausalLM.from_pretrained(ckpt, config=cfg)


def load_huginn(ckpt: Path):
    # HUGINN_SRC: another tree's `src` (the `--baseline` contenders), else this checkout's
    sys.path.insert(0, os.environ.get("HUGINN_SRC") or str(Path(__file__).resolve().parents[1] / "src"))
    from huginn import RavenForCausalLM

    return RavenForCausalLM.from_pretrained(ckpt)


def train_step_fn(impl: str, model, bf16: bool, steps: tuple[int, int]):
    """One optimizer step of the chosen implementation as a closure."""
    import torch

    torch.manual_seed(1)
    ids = torch.randint(0, 4096, (BATCH, SEQ + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()  # the reference `view`s its labels
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    if impl in ("huginn-train", "huginn-compiled"):
        from huginn.train.forward import TrainForward, blocks

        if impl == "huginn-compiled":  # `train.compile: true`: every block compiled (in the warm-up call)
            for block in (*blocks(model, "prelude"), *blocks(model, "core_block"), *blocks(model, "coda")):
                block.compile()
        fwd = TrainForward(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        rows = torch.arange(BATCH)

        def step() -> None:
            with autocast:
                loss = fwd(x, y, steps[0], steps[1], rows)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    num_steps = torch.tensor(steps) if impl == "reference" else steps

    def step() -> None:
        with autocast:
            loss = model(x, labels=y, num_steps=num_steps).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def decode_fn(impl: str, model, mode: str):
    import torch

    torch.manual_seed(2)
    ids = torch.randint(0, 4096, (1, DECODE_PROMPT))
    model.eval()
    if impl == "reference":
        from transformers import GenerationConfig

        gc = GenerationConfig(
            max_new_tokens=DECODE_NEW, min_new_tokens=DECODE_NEW, do_sample=False, use_cache=True, eos_token_id=None
        )
        return lambda: model.generate(ids, gc, num_steps=DEPTH)
    from huginn.infer.generate import Depth, Stopping, generate

    if mode == "frozen-bf16":
        model.to(torch.bfloat16)
    compile: bool | str = {"eager": False, "compiled": True, "frozen-bf16": "frozen"}[mode]
    return lambda: generate(model, ids, Depth(DEPTH, init_scale=0.0), Stopping(DECODE_NEW), compile=compile)


def worker(impl: str, case: str, ckpt: Path, repo: Path | None, repeats: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = load_reference(ckpt, repo) if impl == "reference" else load_huginn(ckpt)  # type: ignore[arg-type]
    kind = impl.split(":")[1] if ":" in impl else ""
    impl = impl.split(":")[0].replace("baseline-", "huginn-")  # the same measurement on the baseline tree
    if case in ("train-fp32", "train-bf16"):
        step = train_step_fn(impl, model, case == "train-bf16", STEPS)
        return {"value": BATCH * SEQ / _timed(step, repeats), "unit": "tok/s"}
    if case == "memory":
        step = train_step_fn(impl, model, False, (32, 8))
        step()  # optimizer state and allocator pools exist before the measured step
        rss = PeakRSS().start()
        step()
        return {"value": rss.stop() / 2**20, "unit": "MiB", "lower_is_better": True}
    if case == "prefill":
        model.eval()
        ids = torch.randint(0, 4096, (1, PREFILL))
        steps = torch.tensor([DEPTH, 0]) if impl == "reference" else DEPTH  # the reference reads a pair

        def prefill() -> None:
            with torch.no_grad():
                model(ids, num_steps=steps)

        return {"value": PREFILL / _timed(prefill, repeats), "unit": "tok/s"}
    if case == "decode":
        fn = decode_fn(impl, model, kind)
        with torch.no_grad():
            return {"value": DECODE_NEW / _timed(fn, repeats), "unit": "tok/s"}
    raise SystemExit(f"unknown case {case}")


# --- the driver ---------------------------------------------------------------------------------------

CONTENDERS = {
    "train-fp32": ["reference", "huginn-forward", "huginn-train", "huginn-compiled"],
    "train-bf16": ["reference", "huginn-forward", "huginn-train", "huginn-compiled"],
    "prefill": ["reference", "huginn-forward"],
    "decode": ["reference", "huginn-forward:eager", "huginn-forward:compiled", "huginn-forward:frozen-bf16"],
    "memory": ["reference", "huginn-forward", "huginn-train"],
}


BASELINE = ("huginn-forward", "huginn-train")  # the contenders `--baseline` repeats on the other tree


def run_one(
    python: str, impl: str, case: str, ckpt: Path, repo: Path, repeats: int, baseline: Path | None, threads: int
) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if case == "memory":
        # a fixed mmap threshold: glibc then returns every freed large buffer at once, so resident
        # memory follows the live tensors. With its default (a threshold that grows as buffers are
        # freed) the heap keeps what the warm-up step freed, and the peak above it measured anything
        # from 137 to 345 MiB for one contender across runs; fixed, it repeats within 1%. (Not for the
        # timed cases: an mmap and page faults per buffer would slow them.)
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if impl.startswith("baseline-") and baseline is not None:
        env["HUGINN_SRC"] = str(baseline)
    cmd = [python, __file__, "--worker", impl, "--case", case, "--ckpt", str(ckpt), "--reference", str(repo)]
    cmd += ["--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, help="a clone of seal-rg/recurrent-pretraining at 59e0b69")
    ap.add_argument("--ref-python", default=".venv-ref/bin/python", help="python of the reference's venv")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (best kept)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--threads", type=int, default=2, help="threads per worker (1 where other jobs hold a core: OpenMP spin-waits)"
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another huginn tree's src/ (e.g. `git archive HEAD src | tar -x -C /tmp/base`): adds its "
        "huginn contenders as baseline-*, interleaved with the rest, to measure a change in one run",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.case, args.ckpt, args.reference, args.repeats)))
        return
    if args.reference is None or not (args.reference / "recpre" / "raven_modeling_minimal.py").exists():
        raise SystemExit("--reference must be a clone of seal-rg/recurrent-pretraining (see this file's docstring)")
    if not Path(args.ref_python).exists():
        raise SystemExit(f"{args.ref_python} does not exist: create the reference's venv (see this file's docstring)")
    cases = [c for c in args.cases.split(",") if c]
    ckpt = Path(tempfile.mkdtemp()) / "ckpt"
    write_checkpoint(ckpt)
    best: dict[tuple[str, str], dict] = {}
    contenders = {case: list(CONTENDERS[case]) for case in cases}
    if args.baseline is not None:
        for case in cases:
            contenders[case] += [i.replace("huginn-", "baseline-") for i in CONTENDERS[case] if i in BASELINE]
    for r in range(args.rounds):
        for case in cases:
            for impl in contenders[case]:
                python = args.ref_python if impl == "reference" else sys.executable
                res = run_one(python, impl, case, ckpt, args.reference, args.repeats, args.baseline, args.threads)
                key = (case, impl)
                print(f"round {r + 1} {case:10s} {impl:26s} {res}", flush=True)
                if "error" in res:
                    best.setdefault(key, res)
                    continue
                old = best.get(key)
                lower = res.get("lower_is_better", False)
                if (
                    old is None
                    or "error" in old
                    or (res["value"] < old["value"] if lower else res["value"] > old["value"])
                ):
                    best[key] = res
    print(f"\n{'case':11s} {'contender':26s} {'value':>10s}  unit    vs reference")
    for case in cases:
        ref = best.get((case, "reference"), {})
        for impl in contenders[case]:
            res = best.get((case, impl), {})
            if "error" in res or not res:
                print(f"{case:11s} {impl:26s} {'failed':>10s}  {res.get('error', '')}")
                continue
            ratio = ""
            if "value" in ref and impl != "reference":
                x = ref["value"] / res["value"] if res.get("lower_is_better") else res["value"] / ref["value"]
                ratio = f"{x:.2f}x" + (" (less memory)" if res.get("lower_is_better") else "")
            print(f"{case:11s} {impl:26s} {res['value']:10.1f}  {res['unit']:6s}  {ratio}")
    if ("train-fp32", "reference") in best and ("train-bf16", "huginn-train") in best:
        ref32, ours = best[("train-fp32", "reference")], best[("train-bf16", "huginn-train")]
        if "value" in ref32 and "value" in ours:
            print(f"huginn-train bf16 against the reference in fp32: {ours['value'] / ref32['value']:.2f}x")
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    print(
        f"\nhost: {os.cpu_count()} cpus, {args.threads} thread(s) per worker, load average {os.getloadavg()[0]:.1f} (other work on the host skews all figures)"
    )


if __name__ == "__main__":
    main()
