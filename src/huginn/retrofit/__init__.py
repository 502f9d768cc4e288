"""Retrofit recurrence into a pretrained transformer (McLeish et al. 2025, arXiv 2511.07384).

    from huginn.retrofit import retrofit
    retrofit("SmolLM2-135M-Instruct.Q4_1.gguf", "out/smollm2-rec", shape=(4, 8, 4), injection="identity")

Pieces: `layer_map` (which base layers become prelude / core / coda), `base` (loading a folder or
a .gguf, supported families), `convert` (weights, RoPE permutation, injection init), `check`
(num_steps=1 equals the base cut to the mapped layers). `retrofit` below ties them together and
writes a folder that `AutoModelForCausalLM.from_pretrained` loads after `import huginn`.
Non-goal: continued training (`huginn.train`; presets in configs/retrofit-*.yaml).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huginn.errors import HuginnError
from huginn.outdir import check_writable_out
from huginn.retrofit.base import FAMILIES, SUPPORTED, BaseSpec, base_spec, load_base, load_base_config
from huginn.retrofit.check import CheckResult, check_conversion
from huginn.retrofit.convert import INJECTIONS, Injection, convert, model_config_for, permute_heads, rope_permutation
from huginn.retrofit.layer_map import (
    PUBLISHED_MAPS,
    LayerMap,
    format_layers,
    parse_layers,
    parse_shape,
    published_map,
    resolve_layer_map,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RetrofitResult:
    out: Path
    layer_map: LayerMap
    base_layers: int
    n_params: int
    check: CheckResult | None


def retrofit(
    base: str | Path,
    out: str | Path,
    *,
    prelude: str | None = None,
    core: str | None = None,
    coda: str | None = None,
    shape: str | tuple[int, int, int] | None = None,
    map_name: str | None = None,
    injection: Injection = "identity",
    mean_recurrence: int = 4,
    mean_backprop_depth: int = 4,
    block_size: int | None = None,
    dtype: str = "float32",
    check: bool = True,
    overwrite: bool = False,
    seed: int = 0,
    progress: Callable[[str], Any] = lambda msg: None,
) -> RetrofitResult:
    """Convert the base at `base` (folder or .gguf) and write a huginn checkpoint to `out`.

    Everything that can be checked without weights (paths, family, map, injection) is checked
    before loading; `out` appears only when everything succeeded (written to a temporary sibling
    folder, then renamed)."""
    out = check_writable_out(out, "output")
    if dtype not in DTYPES:
        raise HuginnError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if injection not in INJECTIONS:
        raise HuginnError(f"unknown injection {injection!r}; valid: {', '.join(INJECTIONS)}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise HuginnError(f"output {str(out)!r} already exists; choose a new folder or pass --overwrite")
        if not (out / "config.json").exists():
            raise HuginnError(
                f"refusing to overwrite {str(out)!r}: it is not empty and holds no checkpoint (config.json)"
            )
    progress(f"reading the config of {base}")
    spec = base_spec(load_base_config(base))
    layer_map = resolve_layer_map(spec.n_layers, prelude=prelude, core=core, coda=coda, shape=shape, name=map_name)
    model_config_for(
        spec,
        layer_map,
        injection,
        mean_recurrence=mean_recurrence,
        mean_backprop_depth=mean_backprop_depth,
        block_size=block_size,
    )  # shape errors now, not after loading
    progress(f"loading the base ({spec.family}, {spec.n_layers} layers)")
    base_model, tokenizer = load_base(base)
    progress(f"converting: {layer_map.describe()}, injection {injection}")
    model = convert(
        base_model,
        layer_map,
        injection,
        mean_recurrence=mean_recurrence,
        mean_backprop_depth=mean_backprop_depth,
        block_size=block_size,
        seed=seed,
        source=Path(base).name,
    )
    result = None
    if check:
        progress("checking num_steps=1 against the base")
        result = check_conversion(base_model, model, layer_map)
        if not result.ok():
            raise RuntimeError(
                f"conversion check failed: max |logit difference| {result.max_abs_diff:.3g} with logits up to "
                f"{result.max_abs_logit:.3g} (a bug; please report)"
            )
    del base_model
    progress(f"writing {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.to(DTYPES[dtype]).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return RetrofitResult(out, layer_map, spec.n_layers, n_params, result)


__all__ = [
    "FAMILIES",
    "INJECTIONS",
    "PUBLISHED_MAPS",
    "SUPPORTED",
    "BaseSpec",
    "CheckResult",
    "LayerMap",
    "RetrofitResult",
    "base_spec",
    "check_conversion",
    "convert",
    "format_layers",
    "load_base",
    "load_base_config",
    "model_config_for",
    "parse_layers",
    "parse_shape",
    "permute_heads",
    "published_map",
    "resolve_layer_map",
    "retrofit",
    "rope_permutation",
]
