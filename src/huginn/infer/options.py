"""One set of generation options: how deep, when to exit, how to cache, how to sample.

`GenerationOptions` is a typed value, parsed once at each boundary: from `huginn generate` / `chat`
flags (`huginn.cli.generate`), from `model.generate(**kwargs)` and the reference's strings
(`from_kwargs`, called by `huginn.infer.hf_bridge`). `for_model` checks it against the model's
config once (a `latest-mN` cache string must name the model's core size; the default depth is its
`mean_recurrence`), and `generate_with` runs it: plain, adaptive, speculative decoding or the
parallel (diffusion-forcing) sampler (`huginn.infer.parallel`, `sampler="parallel"`).

`init_scale` is None by default at every entry point: the model's `state_init_scale` (1.0 for
published checkpoints, the reference's default); 0 gives a zero initial state (deterministic).
Non-goals: stopping (`Stopping`: max tokens, eos, stop strings come with the generation config or
the tokenizer), the transformers output types (`hf_bridge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.infer.exits import ExitCriterion, make_criterion, parse_exit
from huginn.infer.generate import Depth, Generation, Stopping, generate
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.parallel import ParallelSampling, check_parallel, parallel_generate
from huginn.infer.sampling import Sampling
from huginn.infer.speculative import Speculation, check_speculative, speculative_generate
from huginn.model.recurrent import check_init_scale, normalize_steps


def _count(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise HuginnError(f"{name} must be an integer >= {least}, got {value!r}")


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise HuginnError(f"{name} must be True or False, got {value!r}")
    return value


def _number(value: float) -> str:
    """The shortest spelling that reads back as the same float."""
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


@dataclass(frozen=True)
class ExitRule:
    """When one token stops iterating: a criterion by name ("none": never) and its threshold (None:
    the published "auto"), or a criterion object; checked after every `check_every`-th step once
    `min_steps` have run; `in_prefill=False` lets the prompt run all steps (`do_not_exit_in_prefill`)."""

    criterion: str | ExitCriterion = "none"
    threshold: float | None = None
    min_steps: int = 0
    check_every: int = 1
    in_prefill: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, str) and self.threshold is not None:
            raise HuginnError("exit_threshold applies to a named criterion; a criterion object holds its own")
        make_criterion(self.criterion, self.threshold)  # name and threshold range, now (one line)
        _count("min_steps", self.min_steps, 0)
        _count("check_criterion_every_n_steps", self.check_every, 1)
        _flag("in_prefill", self.in_prefill)

    @classmethod
    def parse(cls, spec: str) -> ExitRule:
        """'kl:5e-4', 'latent-diff' (its "auto" threshold), 'none' (the CLI's --exit)."""
        name, threshold = parse_exit(spec)
        return cls(name, None if threshold == "auto" else float(threshold))

    def __str__(self) -> str:
        if not isinstance(self.criterion, str):
            return type(self.criterion).__name__
        return self.criterion if self.threshold is None else f"{self.criterion}:{_number(self.threshold)}"

    @property
    def adaptive(self) -> bool:
        return self.criterion != "none"

    def make(self) -> ExitCriterion | None:
        """The criterion for one generation (a new object: criteria keep per-row state)."""
        return make_criterion(self.criterion, self.threshold)


# the N of a reference "latest-mN" / "available-mN" string (and of composites starting with one)
_CORE_LAYERS = re.compile(r"\s*(?:latest|available)-m(\d+)(?:-|\s*$)", re.IGNORECASE)


@dataclass(frozen=True)
class CacheSpec:
    """A cache policy and the core size its reference string named (`latest-m4`: 4; None: the model's own)."""

    policy: CachePolicy = field(default_factory=CachePolicy)
    core_layers: int | None = None

    @classmethod
    def parse(cls, spec: str | CachePolicy | CacheSpec | None) -> CacheSpec:
        """The reference's strings ("latest-m4-compress-s16", "compress-r2", "skip", "full", ...) or
        ours ("latest", "s8"); the core size is checked against a model by `check`."""
        if spec is None or isinstance(spec, CacheSpec):
            return spec or cls()
        m = _CORE_LAYERS.match(spec) if isinstance(spec, str) else None
        n = int(m.group(1)) if m else None
        return cls(CachePolicy.parse(spec, 4 if n is None else n), n)

    def check(self, n_core_layers: int) -> None:
        if self.core_layers is not None and self.core_layers != n_core_layers:
            fix = replace(self, core_layers=n_core_layers)
            raise HuginnError(
                f"cache policy {str(self)!r} assumes a {self.core_layers}-layer core but this model's core has "
                f"{n_core_layers} layers; use {str(fix)!r} (or {str(replace(self, core_layers=None))!r})"
            )

    def __str__(self) -> str:
        p = self.policy
        lookup = "skip" if p.lookup == "skip" else "latest" + (f"-m{self.core_layers}" if self.core_layers else "")
        if p.share == "none":
            return lookup
        share = f"compress-{'s' if p.share == 'cycle' else 'r'}{p.n}"
        return share if lookup == "latest" else f"{lookup}-{share}"


@dataclass(frozen=True)
class GenerationOptions:
    """Everything but the prompt and the stopping rule (see the module docstring)."""

    num_steps: int | None = None  # core steps per token (the maximum with an exit); None: mean_recurrence
    exit: ExitRule = field(default_factory=ExitRule)
    cache: CacheSpec = field(default_factory=CacheSpec)
    sampling: Sampling = field(default_factory=Sampling)
    continuous: bool = False  # each token starts from the previous token's final latent
    init_scale: float | None = None  # None: the model's state_init_scale; 0: a zero initial state
    speculative: Speculation | None = None
    compile: Literal[False, True, "frozen"] = False
    parallel: ParallelSampling | None = None  # the diffusion-forcing sampler (huginn.infer.parallel)

    def __post_init__(self) -> None:
        if self.num_steps is not None:
            _count("num_steps", self.num_steps, 1)
        check_init_scale(self.init_scale)
        _flag("continuous_compute", self.continuous)
        if self.compile not in (False, True, "frozen"):
            raise HuginnError(f"compile={self.compile!r} is not a decoding mode; use False, True or 'frozen'")
        if self.parallel is not None:
            check_parallel(self.exit.adaptive, self.sampling, self.compile, self.speculative is not None)
            if self.continuous:
                raise HuginnError(
                    "with the parallel sampler, continuous state is its init='previous' "
                    "(ParallelSampling(init='previous')); drop continuous"
                )
        if self.speculative is not None:
            check_speculative(self.exit.adaptive, self.continuous, self.sampling, self.compile)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], sampling: Sampling = Sampling()) -> GenerationOptions:
        """The model card's `generate` keywords (those in `KWARGS`; see `huginn.infer.hf_bridge`)."""
        get = kwargs.get
        steps = get("num_steps")
        criterion = get("exit_evaluator") or get("criterion")
        if criterion is None:
            criterion = "entropy-diff" if "exit_threshold" in kwargs else "none"
        threshold = get("exit_threshold")
        exit = ExitRule(
            criterion,
            None if threshold == "auto" else threshold,
            get("min_steps", 0),
            get("check_criterion_every_n_steps", 1),
            not _flag("do_not_exit_in_prefill", get("do_not_exit_in_prefill", False)),
        )
        speculative = None
        if any(k in kwargs for k in ("draft_steps", "lookahead_for_draft", "verification_threshold")):
            speculative = Speculation(
                get("draft_steps"), get("lookahead_for_draft", 4), get("verification_threshold", 1.0)
            )
        parallel = _parallel(kwargs)
        continuous = get("continuous_compute", False)
        if parallel is not None and _flag("continuous_compute", continuous):
            parallel, continuous = replace(parallel, init="previous"), False  # the reference's meaning there
        return cls(
            num_steps=None if steps is None else sum(normalize_steps(steps, 1)),  # no gradients: a pair is its total
            exit=exit,
            cache=CacheSpec.parse(_cache_string(kwargs)),
            sampling=sampling,
            continuous=continuous,
            init_scale=get("init_scale"),
            speculative=speculative,
            compile=get("compile", False),
            parallel=parallel,
        )

    def for_model(self, config) -> GenerationOptions:
        """Checked against the model's config (`ModelConfig`), with its defaults filled in."""
        self.cache.check(config.n_layers_in_recurrent_block)
        n = self.num_steps or config.mean_recurrence
        spec = self.speculative.for_depth(n) if self.speculative is not None else None
        if self.parallel is not None:
            self.parallel.check_depth(n)
        return replace(self, num_steps=n, speculative=spec)

    def depth(self) -> Depth:
        """The typed depth of one generation (after `for_model`, which fills in num_steps)."""
        assert self.num_steps is not None, "for_model() fills in num_steps"
        e = self.exit
        return Depth(
            self.num_steps, e.make(), e.min_steps, e.check_every, self.continuous, self.init_scale, e.in_prefill
        )


# the parallel sampler's knobs (the reference routes to its diffusion sampler on some of them)
PARALLEL_KWARGS = (
    "wavefront",
    "max_wavefront",
    "inner_recurrence",
    "freeze_threshold",
    "exit_t",
    "freeze_strategy",
    "state_noise_mixing",
    "headway",
)
KWARGS = (
    "num_steps",
    "init_scale",
    "criterion",
    "exit_threshold",
    "exit_evaluator",
    "min_steps",
    "check_criterion_every_n_steps",
    "do_not_exit_in_prefill",
    "continuous_compute",
    "cache_lookup_strategy",
    "cache_kwargs",
    "draft_steps",
    "lookahead_for_draft",
    "verification_threshold",
    "compile",
    "sampler",
    *PARALLEL_KWARGS,
)
SAMPLERS = ("sequential", "parallel")
FREEZE_STRATEGIES = ("latent-diff", "fixed")


def _parallel(kwargs: dict[str, Any]) -> ParallelSampling | None:
    """`sampler="parallel"` and its knobs (ours or the reference's names), or None."""
    sampler = kwargs.get("sampler", "sequential")
    if sampler not in SAMPLERS:
        raise HuginnError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    given = sorted(k for k in PARALLEL_KWARGS if k in kwargs)
    if sampler == "sequential":
        if given and "sampler" in kwargs:
            raise HuginnError(f"{', '.join(given)} apply to sampler='parallel', not 'sequential'")
        if not given:
            return None
    for ours, theirs in (("wavefront", "max_wavefront"), ("freeze_threshold", "exit_t")):
        if ours in kwargs and theirs in kwargs:
            raise HuginnError(f"{ours} and {theirs} are the same knob; pass one")
    if kwargs.get("headway", 1) != 1:
        raise HuginnError(f"headway must be 1 (one new position per forward), got {kwargs['headway']!r}")
    strategy = kwargs.get("freeze_strategy", "latent-diff")
    if strategy not in FREEZE_STRATEGIES:
        raise HuginnError(f"unknown freeze_strategy {strategy!r}; valid: {', '.join(FREEZE_STRATEGIES)}")
    threshold = kwargs.get("freeze_threshold", kwargs.get("exit_t", 0.03))
    if strategy == "fixed":
        if "freeze_threshold" in kwargs or "exit_t" in kwargs:
            raise HuginnError("freeze_strategy='fixed' freezes at num_steps only; drop freeze_threshold")
        threshold = None
    default = ParallelSampling()
    return ParallelSampling(
        wavefront=kwargs.get("wavefront", kwargs.get("max_wavefront", default.wavefront)),
        inner_steps=kwargs.get("inner_recurrence", default.inner_steps),
        freeze_threshold=threshold,
        noise_mixing=kwargs.get("state_noise_mixing", default.noise_mixing),
    )


def _cache_string(kwargs: dict[str, Any]) -> str | CachePolicy | None:
    """`cache_lookup_strategy`, or the reference's `cache_kwargs={"lookup_strategy": ...}`."""
    extra = dict(kwargs.get("cache_kwargs") or {})
    strategy = extra.pop("lookup_strategy", None)
    if extra:
        raise HuginnError(f"cache_kwargs takes only lookup_strategy, got {', '.join(sorted(extra))}")
    given = kwargs.get("cache_lookup_strategy")
    if given is not None and strategy is not None and given != strategy:
        raise HuginnError("cache_lookup_strategy and cache_kwargs['lookup_strategy'] differ; pass one")
    return given if given is not None else strategy


def generate_with(
    model,
    input_ids: Tensor,
    options: GenerationOptions,
    stopping: Stopping,
    *,
    attention_mask: Tensor | None = None,
    cache: HuginnStaticCache | None = None,
    streamer=None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Generate with `options`, checked against the model first: speculative decoding or the
    parallel sampler where they ask for it, else plain or adaptive. `cache`: an empty cache to
    decode into (its own policy)."""
    opts = options.for_model(model.model_config)
    if cache is not None and opts.cache != CacheSpec():
        raise HuginnError(f"pass a cache or a cache policy ({opts.cache}), not both")
    policy = None if cache is not None else opts.cache.policy
    depth = opts.depth()
    if opts.parallel is not None:
        # the default spec ("latest") means the sampler's own default there: compress-sR (KV sharing)
        policy = None if opts.cache == CacheSpec() else policy
        return parallel_generate(
            model, input_ids, depth, stopping, opts.parallel, opts.sampling, attention_mask, policy, cache,
            streamer, generator, compile=opts.compile is True,
        )  # fmt: skip
    if opts.speculative is not None:
        return speculative_generate(
            model, input_ids, depth, stopping, opts.speculative, opts.sampling, attention_mask, policy, cache,
            streamer, generator,
        )  # fmt: skip
    return generate(
        model, input_ids, depth, stopping, opts.sampling, attention_mask, policy, cache, streamer, generator,
        opts.compile,
    )  # fmt: skip
