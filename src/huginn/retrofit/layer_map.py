"""Layer maps: which layers of a pretrained base become the prelude, the core and the coda.

Three ways to say it, all ending in one validated `LayerMap`:
- explicit lists: `parse_layers("0-3")`, `parse_layers("10-17")`, `parse_layers("0,2,5-7")`;
- the `(p, r, c)` shape: the first p layers, the r layers just before the last c, the last c
  (`LayerMap.from_shape(4, 8, 4, n_layers=22)` is TinyLlama's 0-3 | 10-17 | 18-21);
- a published map by name (`PUBLISHED_MAPS`, from McLeish et al. 2025, arXiv 2511.07384).
Layers not named anywhere are dropped. Non-goal: weights (see `huginn.retrofit.convert`).
"""

from __future__ import annotations

from dataclasses import dataclass

from huginn.errors import HuginnError, one_of


def parse_layers(text: str, *, part: str = "layer list") -> tuple[int, ...]:
    """'0-3,7,9-10' -> (0, 1, 2, 3, 7, 9, 10). Empty text (or 'none') is the empty list."""
    text = text.strip()
    if text.lower() in ("", "none", "-"):
        return ()
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        try:
            start, stop = (int(lo), int(hi)) if sep else (int(item), int(item))
        except ValueError:
            raise HuginnError(
                f"{part}: cannot read {item!r}; use layer indices, ranges and commas, e.g. 0-3 or 0,2,5-7"
            ) from None
        if stop < start:
            raise HuginnError(f"{part}: range {item!r} runs backwards; write it as {stop}-{start}")
        out.extend(range(start, stop + 1))
    return tuple(out)


def format_layers(layers: tuple[int, ...] | list[int]) -> str:
    """(0, 1, 2, 3, 7, 9, 10) -> '0-3,7,9-10'; the empty list -> 'none'."""
    if not layers:
        return "none"
    runs: list[str] = []
    start = prev = layers[0]
    for i in [*list(layers[1:]), None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(runs)


@dataclass(frozen=True)
class LayerMap:
    """Base-layer indices of each part, in the order they run."""

    prelude: tuple[int, ...]
    core: tuple[int, ...]
    coda: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "prelude", tuple(int(i) for i in self.prelude))
        object.__setattr__(self, "core", tuple(int(i) for i in self.core))
        object.__setattr__(self, "coda", tuple(int(i) for i in self.coda))
        if not self.core:
            raise HuginnError("the core needs at least one layer; pass e.g. --core 10-17")
        seen: dict[int, str] = {}
        for part, layers in self.parts():
            for i in layers:
                if i < 0:
                    raise HuginnError(f"{part} layer {i} is negative; layer indices start at 0")
                if i in seen:
                    where = "twice in the " + part if seen[i] == part else f"in both the {seen[i]} and the {part}"
                    raise HuginnError(f"layer {i} appears {where}; each base layer may be used once")
                seen[i] = part

    def parts(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return (("prelude", self.prelude), ("core", self.core), ("coda", self.coda))

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.prelude), len(self.core), len(self.coda)

    @property
    def layers(self) -> tuple[int, ...]:
        """Every mapped layer, in the order one recurrent step runs them (prelude, core, coda)."""
        return self.prelude + self.core + self.coda

    def dropped(self, n_layers: int) -> tuple[int, ...]:
        used = set(self.layers)
        return tuple(i for i in range(n_layers) if i not in used)

    def validate(self, n_layers: int) -> LayerMap:
        """Check every index against a base with `n_layers` layers; returns self."""
        for part, layers in self.parts():
            bad = [i for i in layers if i >= n_layers]
            if bad:
                raise HuginnError(
                    f"{part} layer {bad[0]} is out of range: the base has {n_layers} layers (0-{n_layers - 1})"
                )
        return self

    def describe(self) -> str:
        p, r, c = self.shape
        return (
            f"({p},{r},{c}): prelude {format_layers(self.prelude)} | core {format_layers(self.core)} | "
            f"coda {format_layers(self.coda)}"
        )

    def to_dict(self) -> dict[str, list[int]]:
        return {"prelude": list(self.prelude), "core": list(self.core), "coda": list(self.coda)}

    @classmethod
    def from_lists(cls, prelude: str, core: str, coda: str) -> LayerMap:
        return cls(
            parse_layers(prelude, part="--prelude"),
            parse_layers(core, part="--core"),
            parse_layers(coda, part="--coda"),
        )

    @classmethod
    def from_shape(cls, p: int, r: int, c: int, *, n_layers: int) -> LayerMap:
        """First p layers, the r layers just before the last c, the last c (the middle is dropped)."""
        if min(p, r, c) < 0 or r < 1:
            raise HuginnError(f"shape ({p},{r},{c}) needs p, c >= 0 and r >= 1")
        if p + r + c > n_layers:
            raise HuginnError(f"shape ({p},{r},{c}) needs {p + r + c} layers but the base has {n_layers}")
        return cls(tuple(range(p)), tuple(range(n_layers - c - r, n_layers - c)), tuple(range(n_layers - c, n_layers)))


def parse_shape(text: str) -> tuple[int, int, int]:
    """'4,8,4' (or '(4,8,4)', '4-8-4') -> (4, 8, 4)."""
    parts = text.strip().strip("()").replace("-", ",").replace("x", ",").split(",")
    try:
        p, r, c = (int(x) for x in parts)
    except ValueError:
        raise HuginnError(f"cannot read shape {text!r}; write prelude,core,coda layer counts, e.g. 4,8,4") from None
    return p, r, c


@dataclass(frozen=True)
class PublishedMap:
    base: str  # the base model it was published for
    n_layers: int
    layer_map: LayerMap


# McLeish et al. 2025, convert_llama.py / convert_olmo.py (reference notes, section 1.1)
PUBLISHED_MAPS: dict[str, PublishedMap] = {
    "tinyllama": PublishedMap(
        "TinyLlama-1.1B-intermediate-step-1431k-3T",
        22,
        LayerMap(tuple(range(4)), tuple(range(10, 18)), tuple(range(18, 22))),
    ),
    "olmo2-1b": PublishedMap(
        "OLMo-2-0425-1B", 16, LayerMap(tuple(range(4)), tuple(range(6, 12)), tuple(range(12, 16)))
    ),
}


def published_map(name: str, n_layers: int | None = None) -> LayerMap:
    """A published map by name; with `n_layers`, also check that the base has the right depth."""
    key = name.lower().replace("_", "-")
    key = {"olmo2": "olmo2-1b", "olmo-2-1b": "olmo2-1b", "olmo-2": "olmo2-1b", "tiny-llama": "tinyllama"}.get(key, key)
    if key not in PUBLISHED_MAPS:
        raise one_of("published layer map", name, PUBLISHED_MAPS)
    pub = PUBLISHED_MAPS[key]
    if n_layers is not None and n_layers != pub.n_layers:
        raise HuginnError(
            f"map {key!r} is for {pub.base} ({pub.n_layers} layers) but the base has {n_layers} layers; "
            f"use --shape {','.join(map(str, pub.layer_map.shape))} to apply the same shape"
        )
    return pub.layer_map


def resolve_layer_map(
    n_layers: int,
    *,
    prelude: str | None = None,
    core: str | None = None,
    coda: str | None = None,
    shape: str | tuple[int, int, int] | None = None,
    name: str | None = None,
) -> LayerMap:
    """The one map that exactly one of (explicit lists, shape, published name) describes, validated
    against a base with `n_layers` layers."""
    explicit = any(x is not None for x in (prelude, core, coda))
    given = [
        k for k, v in (("layer lists", explicit), ("--shape", shape is not None), ("--map", name is not None)) if v
    ]
    if len(given) > 1:
        raise HuginnError(f"give one of --map, --shape or --prelude/--core/--coda, not {' and '.join(given)}")
    if name is not None:
        return published_map(name, n_layers).validate(n_layers)
    if shape is not None:
        p, r, c = parse_shape(shape) if isinstance(shape, str) else shape
        return LayerMap.from_shape(p, r, c, n_layers=n_layers)
    if core is None:
        raise HuginnError(
            f"say which layers to use: --map {'|'.join(PUBLISHED_MAPS)}, --shape P,R,C, or --core (with --prelude/--coda); "
            f"the base has {n_layers} layers"
        )
    return LayerMap.from_lists(prelude or "", core, coda or "").validate(n_layers)
