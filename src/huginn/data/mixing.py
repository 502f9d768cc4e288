"""Mix tokenized sources with weights, split train/validation, and shuffle the result globally.

A source is a tokenized dataset directory with a weight, as in the reference's `sources.yaml`
(`weight` there upsamples whole files; here it works on rows, which is finer and exact):

    sources:
      wiki: {path: tok/wiki, weight: 4}     # every row 4 times
      web:  {path: tok/web,  weight: 1.5}   # every row once, a random half of them twice
      code: {path: tok/code, weight: 0.25}  # a random quarter of the rows
    val_fraction: 0.05
    seed: 0

Each source's rows are split into validation and training rows first (a seeded choice of
round(val_fraction * rows) rows), so a row and its upsampled copies never cross the split; the
weight then applies within each split: floor(w) copies of every row plus one more copy of a
random round(frac(w) * rows) of them. Both splits are written by the global shuffle
(`huginn.data.shuffle`) to OUT/train and OUT/val; OUT/mix.json records the plan.

Non-goals: token-level mixing targets (weights are per row), curricula that change the mix over
training (mix again, or train on several loaders).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from huginn.errors import HuginnError
from huginn.outdir import check_writable_out


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    weight: float = 1.0


class MixConfig(TypedDict):
    """What a sources YAML holds (see the module docstring)."""

    sources: list[Source]
    val_fraction: float
    seed: int


def parse_source_spec(spec: str) -> Source:
    """`[NAME=]DIR[:WEIGHT]` -> Source."""
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path, weight = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep:
        try:
            path, weight = head, float(tail)
        except ValueError:
            path = rest
    return _source(name or Path(path).name, path, weight)


def _source(name: str, path: str, weight) -> Source:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise HuginnError(f"source {name}: weight {weight!r} is not a number") from None
    if not (w >= 0 and np.isfinite(w)):
        raise HuginnError(f"source {name}: weight {w} must be a finite number >= 0")
    return Source(name, str(path), w)


def _config_number(path: str | Path, key: str, value, kind: type):
    """`value` as a `kind` (float or int), or a one-line error naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise HuginnError(f"mix config {path}: {key} {value!r} is not {'an integer' if kind is int else 'a number'}")
    return kind(value)


def load_mix_config(path: str | Path) -> MixConfig:
    """Read a sources YAML (see the module docstring); unknown per-source fields are ignored."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise HuginnError(f"mix config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise HuginnError(f"mix config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("sources"), dict):
        raise HuginnError(f"mix config {path} needs a mapping `sources: {{name: {{path: DIR, weight: W}}}}`")
    base = Path(path).parent
    sources = []
    for name, entry in cfg["sources"].items():
        if not isinstance(entry, dict) or "path" not in entry:
            raise HuginnError(f"mix config {path}: source {name} needs a `path`")
        p = Path(entry["path"])
        sources.append(_source(str(name), str(p if p.is_absolute() else base / p), entry.get("weight", 1.0)))
    return {
        "sources": sources,
        "val_fraction": _config_number(path, "val_fraction", cfg.get("val_fraction", 0.05), float),
        "seed": _config_number(path, "seed", cfg.get("seed", 0), int),
    }


def _multiply(rows: np.ndarray, weight: float, rng: np.random.Generator) -> np.ndarray:
    """floor(w) copies of every row plus one more of a random round(frac(w)*n) of them."""
    whole = int(np.floor(weight))
    extra = round((weight - whole) * len(rows))
    picked = rng.choice(rows, size=extra, replace=False) if extra else rows[:0]
    return np.sort(np.concatenate([np.repeat(rows, whole), picked]))


def plan_mix(sources: Sequence[Source], val_fraction: float, seed: int) -> list[dict]:
    """Per source: its files and, per split, the row indices (with repeats) of each file."""
    from huginn.data.shuffle import check_seed
    from huginn.data.tokenize import read_manifest

    if not 0 <= val_fraction < 1:
        raise HuginnError(f"val_fraction {val_fraction} must be in [0, 1)")
    check_seed(seed)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise HuginnError(f"source names repeat ({', '.join(names)}); give each source its own name")
    plans = []
    for s in sources:
        m = read_manifest(s.path)
        counts = np.array([f["rows"] for f in m["files"]], np.int64)
        n = int(counts.sum())
        # keyed by the source's name, so adding a source does not change the others' split
        rng = np.random.default_rng([seed, zlib.crc32(s.name.encode())])
        perm = rng.permutation(n)
        n_val = round(val_fraction * n)
        splits = {}
        for split, rows in (("val", np.sort(perm[:n_val])), ("train", np.sort(perm[n_val:]))):
            chosen = _multiply(rows, s.weight, rng)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            per_file = [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in itertools.pairwise(bounds)]
            splits[split] = per_file
        plans.append(
            {
                "source": s,
                "manifest": m,
                "files": [str(Path(s.path) / f["name"]) for f in m["files"]],
                "rows": n,
                "splits": splits,
            }
        )
    return plans


def mix_sources(
    sources: Sequence[Source],
    out_dir: str | Path,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    rows_per_file: int | None = None,
    row_group_rows: int | None = None,
) -> dict[str, dict]:
    """Write OUT/train and OUT/val (shuffled packed datasets) and OUT/mix.json; return manifests."""
    import shutil

    from huginn.data.shuffle import check_compatible, write_shuffled
    from huginn.data.tokenize import _atomic_write_json, check_count

    check_writable_out(out_dir)
    check_count("--rows-per-file", rows_per_file)
    check_count("--row-group-rows", row_group_rows)
    plans = plan_mix(sources, val_fraction, seed)
    base = check_compatible([p["manifest"] for p in plans], [p["source"].path for p in plans])
    out = Path(out_dir)
    created = not out.exists()
    result = {}
    try:
        for i, split in enumerate(("train", "val")):
            files = [(f, p["source"].name) for p in plans for f in p["files"]]
            copies = [c for p in plans for c in p["splits"][split]]
            if sum(len(c) for c in copies) == 0:
                if split == "val" and val_fraction == 0:
                    continue
                raise HuginnError(f"the {split} split is empty; use more data, larger weights or another val_fraction")
            # distinct seeds per split so the two orders are unrelated
            result[split] = write_shuffled(
                files,
                copies,
                out / split,
                base_manifest=base,
                seed=seed * 2 + i,
                rows_per_file=rows_per_file,
                row_group_rows=row_group_rows,
                extra={"split": split},
            )
        _atomic_write_json(
            out / "mix.json",
            {
                "seed": seed,
                "val_fraction": val_fraction,
                "sources": [
                    {
                        "name": p["source"].name,
                        "path": p["source"].path,
                        "weight": p["source"].weight,
                        "rows": p["rows"],
                        **{f"{k}_rows": int(sum(len(c) for c in v)) for k, v in p["splits"].items()},
                    }
                    for p in plans
                ],
            },
        )
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return result
