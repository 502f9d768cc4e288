"""The typed training job config: one dataclass per section, read from YAML, overridable by dotted keys.

    model:      shape name + field overrides, or `init_from` a published-format checkpoint (fine-tuning)
    data:       builtin | packed | chat, paths, sequence length
    depth:      training depth sampler (scheme, mean, backprop depth, curriculum)
    optim:      optimizer and its hyperparameters, gradient clipping
    schedule:   learning-rate schedule
    train:      steps, batch sizes, precision, checkpointing of activations, loss chunking, seed
    eval:       validation depths and cadence, the final test-time-scaling sweep
    checkpoint: save cadence and how many to keep
    log:        logging cadence, TensorBoard / W&B, peak FLOP/s for MFU
    parallel:   ddp | fsdp under torchrun

Unknown keys are errors that name the valid ones; values from the command line are parsed as YAML
scalars (`--set optim.lr=1e-3`), and numbers that YAML reads as strings (`lr: 1e-3` in a file) are
numbers for number fields. `validate` checks every numeric field against its range (`RANGES`) and
the fields against each other, once, at load time. Non-goal: model shapes themselves (`huginn.config`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from huginn.errors import HuginnError, one_of
from huginn.train.optim import OptimizerName, ScheduleKind
from huginn.train.parallel import ParallelKind
from huginn.train.steps import Curriculum, Scheme
from huginn.train.tasks import TaskName


@dataclass
class ModelSection:
    shape: str = "quickstart"  # a named shape (huginn.config.SHAPES)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, e.g. {n_embd: 128}
    init_from: str | None = None  # a published-format checkpoint folder: fine-tune it (shape ignored)


@dataclass
class DataSection:
    kind: Literal["builtin", "packed", "chat"] = "builtin"
    path: str | list[str] | None = None  # packed: token shard(s); chat: a jsonl of {"messages": [...]}
    val_path: str | list[str] | None = None  # default: builtin held-out problems / the training data
    tokenizer: str | None = None  # chat: tokenizer folder (default: model.init_from)
    task: TaskName = "parity"  # builtin: the generated task (huginn.train.tasks)
    difficulty: list[int] = field(default_factory=lambda: [1, 16])  # builtin: trained difficulties [min, max]
    seq_len: int = 64  # tokens per row (inputs); rows hold seq_len + 1 tokens
    val_samples: int = 64  # held-out rows for every validation (at least one micro-batch is used)


@dataclass
class DepthSection:
    scheme: Scheme = "poisson-lognormal"
    mean_recurrence: int | None = None  # None: the model's mean_recurrence
    backprop_depth: int | None = None  # None: the model's mean_backprop_depth
    curriculum: Curriculum = "none"
    curriculum_fraction: float = 0.25  # of max_steps


@dataclass
class OptimSection:
    name: OptimizerName = "adamw"
    lr: float = 1e-3  # AdamW / ELLISAdam lr; with muon: the lr of embeddings, head, norms and biases
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_wd_on_embeddings: bool = False
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    muon_lr: float = 0.02
    muon_weight_decay: float = 0.01
    muon_momentum: float = 0.95
    muon_adjust_lr: Literal["original", "match_rms_adamw"] | None = "match_rms_adamw"
    update_clipping: bool = True  # ELLISAdam switches, as Huginn-0125 was trained
    running_init: bool = True
    atan_adam: bool = True


@dataclass
class ScheduleSection:
    kind: ScheduleKind = "wsd"
    warmup: float = 0.05  # fraction of max_steps if < 1, else steps
    decay: float = 0.2  # wsd: the final fraction (or steps) that decays to min_lr_ratio
    min_lr_ratio: float = 0.1


@dataclass
class TrainSection:
    max_steps: int = 1000
    batch_size: int = 32  # global batch in rows (over all ranks and micro-batches)
    micro_batch_size: int | None = None  # rows per rank per forward; None: batch_size / world size
    seed: int = 0
    # bf16: autocast (matmuls in bf16, master weights fp32); auto: the faster on this device and shape
    # (huginn.train.precision), said at the start and kept for the run
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    activation_checkpointing: bool = False  # per core iteration, grad steps only
    compile: bool = False  # torch.compile each block
    loss_chunk: int = 4096  # tokens per chunk of the head + loss; 0: plain loss
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = (
        None  # CPU threads; None: 1 for models of width <= 128 (faster, no spin contention), else torch's default
    )
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in this invocation


@dataclass
class EvalSection:
    every: int = 0  # validate every N steps (0: only at the end)
    num_steps: list[int] = field(default_factory=lambda: [1, 4])  # depths validated during training
    scaling: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])  # final test-time-scaling sweep
    difficulties: list[int] | None = None  # builtin: difficulties swept (None: the trained ones, then up to 4x)
    examples: int = 256  # builtin: held-out problems per difficulty in the sweep
    # builtin: the sweep's adaptive exit, a name in huginn.infer.exits; its max_steps is max(scaling)
    exit_criterion: str = "latent-diff"
    exit_threshold: float | None = None  # None: the criterion's published threshold (latent-diff: 0.03)


@dataclass
class CheckpointSection:
    save_every: int = 100  # 0: only at the end
    keep: int = 2  # newest checkpoints kept; 0 keeps all


@dataclass
class LogSection:
    every: int = 10
    tensorboard: bool = False
    wandb: bool = False
    peak_flops: float | None = None  # FLOP/s of the hardware, for MFU; None: no MFU column
    progress: bool = True


@dataclass
class ParallelSection:
    kind: ParallelKind = "ddp"  # used under torchrun (world size > 1)


@dataclass
class JobConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    depth: DepthSection = field(default_factory=DepthSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- reading ---------------------------------------------------------------------------------
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any) -> Any:
    """A string of numeric form as the number it spells (YAML 1.1 reads `1e-3` as a string); else `value`."""
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return float(text) if any(c in text for c in ".eE") else int(text)
    return value


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Validate (and lightly coerce) one value against its annotation; one-line error otherwise."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise one_of(f"value for {key}", value, typing.get_args(hint))
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, value, arg)
            except HuginnError as err:
                errors.append(str(err))
        raise HuginnError(errors[0] if len(errors) == 1 else f"bad value {value!r} for {key}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HuginnError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)[:1] or (Any,)
        return [_check_value(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise HuginnError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float:
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HuginnError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise HuginnError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        value = _number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 1e5 (YAML and --set read it as a float or a string) is a whole number
        if isinstance(value, bool) or not isinstance(value, int):
            raise HuginnError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise HuginnError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise HuginnError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f"section {prefix[:-1]!r}" if prefix else "the top level"
            raise HuginnError(f"unknown config key {full!r}; valid keys in {where}: {', '.join(names)}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise HuginnError(f"config section {full!r} must be a mapping, got {value!r}")
            kwargs[key] = _build(hint, value, f"{full}.")
        else:
            kwargs[key] = _check_value(full, value, hint)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HuginnError(f"cannot set {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001); the value is a YAML scalar or flow list."""
    if "=" not in text:
        raise HuginnError(f"override {text!r} must look like section.key=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string; numbers written that way are numbers here (also in free-form
    # places such as model.overrides, where no field type says so)
    return key.strip(), _number(value)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **explicit: Any
) -> JobConfig:
    """The job config from `path` (None: the built-in default), dotted `overrides`, then `explicit`
    dotted keys (e.g. `**{"train.max_steps": 10}`)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise HuginnError(
                f"config file {str(p)!r} does not exist; pass a YAML file (see configs/) or none for the built-in default"
            )
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise HuginnError(f"config file {str(p)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise HuginnError(f"config file {str(p)!r} must hold a mapping of sections")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    for key, value in explicit.items():
        if value is not None:
            _set_dotted(tree, key, value)
    cfg = _build(JobConfig, tree, "")
    validate(cfg)
    return cfg


# --- validation ------------------------------------------------------------------------------
class Range:
    """An allowed interval of a numeric field, e.g. Range(0, 1, hi_open=True) is [0, 1)."""

    def __init__(self, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def __contains__(self, v: float) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE, NON_NEGATIVE, UNIT, COUNT = Range(0, lo_open=True), Range(0), Range(0, 1), Range(1)
# every int / float field of JobConfig (lists: every element); None, where allowed, is not checked
RANGES: dict[str, Range] = {
    "data.seq_len": COUNT,
    "data.val_samples": COUNT,
    "data.difficulty": COUNT,
    "depth.mean_recurrence": COUNT,
    "depth.backprop_depth": COUNT,
    "depth.curriculum_fraction": Range(0, 1, lo_open=True),
    "optim.lr": NON_NEGATIVE,
    "optim.betas": Range(0, 1, hi_open=True),
    "optim.eps": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.grad_clip": NON_NEGATIVE,
    "optim.muon_lr": NON_NEGATIVE,
    "optim.muon_weight_decay": NON_NEGATIVE,
    "optim.muon_momentum": Range(0, 1, hi_open=True),
    "schedule.warmup": NON_NEGATIVE,
    "schedule.decay": NON_NEGATIVE,
    "schedule.min_lr_ratio": UNIT,
    "train.max_steps": COUNT,
    "train.batch_size": COUNT,
    "train.micro_batch_size": COUNT,
    "train.seed": NON_NEGATIVE,
    "train.loss_chunk": NON_NEGATIVE,
    "train.threads": COUNT,
    "train.stop_after": COUNT,
    "eval.every": NON_NEGATIVE,
    "eval.num_steps": COUNT,
    "eval.scaling": COUNT,
    "eval.difficulties": COUNT,
    "eval.examples": COUNT,
    "eval.exit_threshold": NON_NEGATIVE,
    "checkpoint.save_every": NON_NEGATIVE,
    "checkpoint.keep": NON_NEGATIVE,
    "log.every": COUNT,
    "log.peak_flops": POSITIVE,
}


def validate(cfg: JobConfig) -> None:
    """Every numeric field in its range (`RANGES`), then the checks that involve several fields.
    Raises a one-line `HuginnError` naming the field and the allowed values."""
    tree = cfg.to_dict()
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        value = tree[section][name]
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v not in allowed:
                each = "every element of " if isinstance(value, list) else ""
                raise HuginnError(f"{each}{key} must be {allowed}, got {v!r}")
    if len(cfg.optim.betas) != 2:
        raise HuginnError(f"optim.betas must hold two values (beta1, beta2), got {cfg.optim.betas!r}")
    s = cfg.schedule
    for key, value in (("schedule.warmup", s.warmup), ("schedule.decay", s.decay)):
        if value >= 1 and not float(value).is_integer():
            raise HuginnError(f"{key} must be a fraction of max_steps (< 1) or a whole number of steps, got {value}")
    from huginn.train.optim import check_schedule

    check_schedule(cfg.train.max_steps, s.warmup, s.decay)
    t = cfg.train
    if t.micro_batch_size is not None and t.micro_batch_size > t.batch_size:
        raise HuginnError(
            f"train.micro_batch_size {t.micro_batch_size} exceeds train.batch_size {t.batch_size}; lower it or raise the batch"
        )
    if cfg.data.kind in ("packed", "chat") and not cfg.data.path:
        raise HuginnError(
            f"data.kind {cfg.data.kind!r} needs data.path (set it in the config or with --set data.path=...)"
        )
    d = cfg.data
    if len(d.difficulty) != 2 or d.difficulty[0] > d.difficulty[1]:
        raise HuginnError(f"data.difficulty must be [min, max] with min <= max, got {d.difficulty!r}")
    if d.kind == "builtin" and d.seq_len < d.difficulty[1] + 2:
        # a row starts with a problem: a whole one (newline, k bits, marker; the answer is the label
        # after the last input) fits when seq_len >= k + 2, so no row is without an answer to learn
        raise HuginnError(
            f"data.seq_len {d.seq_len} is too short for problems of difficulty {d.difficulty[1]}; "
            f"use data.seq_len >= {d.difficulty[1] + 2} or lower data.difficulty"
        )
    from huginn.infer.exits import CRITERIA

    if cfg.eval.exit_criterion not in CRITERIA:
        raise one_of("eval.exit_criterion", cfg.eval.exit_criterion, list(CRITERIA))
    if cfg.data.kind == "chat" and not (cfg.data.tokenizer or cfg.model.init_from):
        raise HuginnError("data.kind 'chat' needs a tokenizer: set data.tokenizer or model.init_from")


def dump_config(cfg: JobConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
