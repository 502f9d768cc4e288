"""The two CPU kernels of `huginn.model.products`, side by side on the model's own products.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_products.py [--threads 1]

For each row count (2 to 2,048) and each weight shape of the `small` model (2+4+2, width 256,
GLU 768, vocab 4096), fp32, no gradients: oneDNN's speed over `F.linear`'s (best of 20 calls each,
the two alternating per shape), and the GFLOP/s of each at the largest row count. The row count
where oneDNN starts to win is what `products.MIN_ROWS` is set from; the probe's own verdict for
this host is printed first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from huginn import RecurrentLM, named_shape
    from huginn.model import products

    model = RecurrentLM(named_shape("small"))
    shapes = sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    print(
        f"{args.threads} thread(s); probe: oneDNN {'faster' if products.probe() else 'not 10% faster'} here; "
        f"MIN_ROWS = {products.MIN_ROWS}"
    )
    print("oneDNN / F.linear speed by rows (columns: weight shapes N x K)")
    print(f"{'rows':>6} " + " ".join(f"{f'{n}x{k}':>10}" for n, k in shapes))
    rates: dict[tuple[int, int], tuple[float, float]] = {}
    with torch.inference_mode():
        for rows in (2, 4, 8, 16, 32, 64, 256, 2048):
            cells = []
            for n, k in shapes:
                x, w = torch.randn(rows, k), torch.randn(n, k)
                blas = products.best_time(lambda x=x, w=w: F.linear(x, w), reps=20)
                onednn = products.best_time(lambda x=x, w=w: products.onednn_linear(x, w), reps=20)
                cells.append(f"{blas / onednn:>9.2f}x")
                rates[(n, k)] = (2 * rows * n * k / blas / 1e9, 2 * rows * n * k / onednn / 1e9)
            print(f"{rows:>6} " + " ".join(cells))
    print(
        "GFLOP/s at 2,048 rows (F.linear | oneDNN): "
        + ", ".join(f"{n}x{k} {b:.0f} | {o:.0f}" for (n, k), (b, o) in rates.items())
    )


if __name__ == "__main__":
    main()
