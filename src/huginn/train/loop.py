"""The training loop: pretraining and fine-tuning of a recurrent-depth model, read top to bottom.

    set up (process group, model, data, optimizer, depth sampler) -> resume from RUN if it holds a
    checkpoint -> for each step: lr, depth, micro-batches (forward, backward), clip, step, log,
    validate, save -> final checkpoint and the test-time-scaling report.

Every source of randomness in a step is a function of (seed, step, row id): depth draws, data rows
and initial states. That is what makes a resumed run equal the uninterrupted one bit for bit, and
K processes equal one process at the same global batch (up to reduction order).
Set-up, checkpointing and metrics are calls into sibling modules; there are no callbacks.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from huginn.config import ModelConfig, named_shape
from huginn.errors import HuginnError
from huginn.model.cost import train_flops_per_token
from huginn.model.recurrent import RecurrentLM
from huginn.outdir import check_writable_out
from huginn.train import checkpoint, corpus, report, tasks
from huginn.train import precision as precision_of
from huginn.train.config import JobConfig, dump_config, validate
from huginn.train.data import BuiltinSource, ChatSource, Layout, PackedSource
from huginn.train.forward import TrainForward, blocks
from huginn.train.metrics import Metrics
from huginn.train.optim import Optimizers, build_optimizer, lr_factor, set_lr
from huginn.train.parallel import Dist, all_sum, apply_parallel, barrier, init_distributed, no_sync, shutdown
from huginn.train.precision import Precision
from huginn.train.steps import DepthSampler


@dataclass
class RunResult:
    run: Path
    step: int
    losses: list[float] = field(default_factory=list)  # training loss of every step run in this call
    scaling: dict[int, float] = field(default_factory=dict)
    scaling_table: str = ""


# --- set-up pieces ---------------------------------------------------------------------------
def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not Path(path).exists():
        raise HuginnError(f"tokenizer folder {path!r} does not exist; set data.tokenizer to a saved tokenizer")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise HuginnError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from None


def build_model(cfg: JobConfig) -> RecurrentLM:
    """A fresh model of the configured shape, or the published-format checkpoint `model.init_from`."""
    if cfg.model.init_from:
        from huginn.checkpoint import load_checkpoint

        path = Path(cfg.model.init_from)
        if not (path / "config.json").is_file():
            raise HuginnError(
                f"model.init_from {str(path)!r} is not a checkpoint folder (no config.json); export a run or pass a Huginn checkpoint"
            )
        hf = load_checkpoint(path)  # one-line errors for a broken config.json or weight file
        mc = hf.model_config.replace(**cfg.model.overrides) if cfg.model.overrides else hf.model_config
        model = RecurrentLM()
        model.build(mc)
        model.load_state_dict(hf.state_dict(), strict=False)
        return model
    overrides = dict(cfg.model.overrides)
    if cfg.data.kind == "builtin" and "vocab_size" not in overrides:
        overrides.update(vocab_size=corpus.VOCAB_SIZE, padding_multiple=16)  # the character alphabet
    return RecurrentLM(named_shape(cfg.model.shape, **overrides))


def check_fits(cfg: JobConfig, mc: ModelConfig) -> None:
    """The configured sequence length against the model's (fresh or loaded) RoPE table."""
    if cfg.data.seq_len > mc.block_size:
        raise HuginnError(
            f"data.seq_len {cfg.data.seq_len} exceeds the model's block_size {mc.block_size}; shorten it or set model.overrides.block_size"
        )


def build_data(cfg: JobConfig, mc: ModelConfig, layout: Layout):
    d = cfg.data
    if d.kind == "builtin":
        if mc.vocab_size < corpus.VOCAB_SIZE:
            raise HuginnError(
                f"the built-in corpus needs vocab_size >= {corpus.VOCAB_SIZE}, the model has {mc.vocab_size}"
            )
        difficulty = (d.difficulty[0], d.difficulty[1])
        return BuiltinSource(layout, d.seq_len, cfg.train.seed, d.val_samples, d.task, difficulty)
    if d.kind == "packed":
        check_packed_vocab([d.path, d.val_path], mc.vocab_size)
        return PackedSource(layout, d.path, d.val_path, cfg.train.seed, d.val_samples, d.seq_len)
    tokenizer = d.tokenizer or cfg.model.init_from
    if not tokenizer:
        raise HuginnError("data.kind 'chat' needs a tokenizer: set data.tokenizer or model.init_from")
    tok = load_tokenizer(tokenizer)
    if len(tok) > mc.vocab_size:
        raise HuginnError(
            f"vocab mismatch: the tokenizer has {len(tok)} tokens but the model only {mc.vocab_size}; use the model's own tokenizer"
        )
    return ChatSource(layout, d.path, d.val_path, tok, d.seq_len, cfg.train.seed, d.val_samples)


def check_packed_vocab(paths, vocab_size: int) -> None:
    """Refuse packed data tokenized with a larger vocabulary than the model's (from the manifests;
    bare parquet files carry none and are not checked)."""
    from huginn.data.tokenize import MANIFEST, read_manifest

    for path in paths:
        for p in [path] if isinstance(path, str) else (path or []):
            if not (Path(p) / MANIFEST).is_file():
                continue
            n = read_manifest(p).get("tokenizer", {}).get("vocab_size")
            if isinstance(n, int) and n > vocab_size:
                raise HuginnError(
                    f"vocab mismatch: {p} was tokenized with {n} tokens but the model has vocab_size {vocab_size}; "
                    f"retokenize with the model's tokenizer or set model.overrides.vocab_size"
                )


def depth_sampler(cfg: JobConfig, mc: ModelConfig) -> DepthSampler:
    dc = cfg.depth
    return DepthSampler(
        mean_recurrence=dc.mean_recurrence or mc.mean_recurrence,
        backprop_depth=dc.backprop_depth or max(1, mc.mean_backprop_depth),
        scheme=dc.scheme,
        curriculum=dc.curriculum,
        curriculum_fraction=dc.curriculum_fraction,
        max_steps=cfg.train.max_steps,
        seed=cfg.train.seed,
    )


@torch.no_grad()
def evaluate(
    fwd: torch.nn.Module, data, depths: list[int], cfg: JobConfig, d: Dist, precision: Precision
) -> tuple[dict[int, float], dict[int, dict[str, float]]]:
    """Validation loss (mean over labelled tokens) per depth and, on the built-in corpus, the loss
    and accuracy on the answer tokens (the deterministic, depth-hungry ones): {r: {"loss", "acc"}}."""
    losses, answers = {}, {}
    builtin = cfg.data.kind == "builtin"
    for r in depths:
        total = torch.zeros(5, dtype=torch.float64)  # loss sum, tokens, correct answers, answers, answer loss sum
        for inputs, labels, ids in data.val_batches():
            inputs, labels = inputs.to(d.device), labels.to(d.device)
            mask = corpus.answer_mask(inputs, cfg.data.task) if builtin else None
            with precision.autocast(d.device):
                out = fwd(inputs, labels, r, 0, ids, torch.tensor(1.0), answer_mask=mask)
            loss, correct, answer_loss = out if builtin else (out, 0, 0)
            total += torch.tensor(
                [
                    float(loss),
                    float((labels != -100).sum()),
                    float(correct),
                    float(mask.sum()) if mask is not None else 0.0,
                    float(answer_loss),
                ]
            )
        total = all_sum(total, d)
        losses[r] = float(total[0] / total[1].clamp(min=1))
        if builtin and total[3] > 0:  # rows too short to reach a query hold no answer: no answer columns
            answers[r] = {"loss": float(total[4] / total[3]), "acc": float(total[2] / total[3])}
    return losses, answers


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on `device` (free GPU memory; on CPU the kernel's
    MemAvailable, capped by a cgroup limit), or None where that cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        with contextlib.suppress(OSError, ValueError):
            known.append(int(Path(limit).read_text()) - int(Path(usage).read_text()))  # "max": no limit
    return min(known) if known else None


def memory_needed(cfg: JobConfig, mc: ModelConfig, micro: int, backprop_depth: int, n_params: int) -> int:
    """A lower bound, in bytes, on what a training step adds to the built model: gradients and
    AdamW state (12 bytes a parameter) and the activations one micro-batch keeps for backward.

    Per token, every block run with gradients keeps at least its input and attention output (2d),
    q, k, v and the GLU's two projections and product (3I): prelude + coda + k core passes, or with
    activation checkpointing one core pass plus the k saved states. The attention scores, norms,
    the loss chunk and allocator slack come on top, so a refusal means the run cannot fit."""
    d, inter = mc.n_embd, mc.intermediate_size
    qkv = (mc.n_heads + 2 * mc.n_kv_heads) * mc.head_dim
    per_block = 2 * d + qkv + 3 * inter
    core = mc.n_layers_in_recurrent_block
    if cfg.train.activation_checkpointing:
        per_token = (mc.n_layers_in_prelude + mc.n_layers_in_coda + core) * per_block + backprop_depth * d
    else:
        per_token = (mc.n_layers_in_prelude + mc.n_layers_in_coda + backprop_depth * core) * per_block
    element = 2 if cfg.train.precision == "bf16" else 4  # auto: the fp32 bound
    return 12 * n_params + micro * cfg.data.seq_len * per_token * element


def check_memory(
    cfg: JobConfig, mc: ModelConfig, layout: Layout, backprop_depth: int, model: nn.Module, d: Dist
) -> None:
    """Refuse, before anything is allocated for training, a micro-batch that cannot fit in memory."""
    n_params = sum(p.numel() for p in model.parameters())
    weights = 4 * n_params if d.device.type != "cpu" else 0  # still on the CPU: the device gets a copy
    # processes of this machine share its RAM (torchrun sets LOCAL_WORLD_SIZE); a GPU is one rank's
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if d.device.type == "cpu" else 1

    def need(rows: int) -> int:
        return sharing * (weights + memory_needed(cfg, mc, rows, backprop_depth, n_params))

    free = available_memory(d.device)
    if free is None or need(layout.micro) <= free:
        return
    gb = 2**30
    per_rank = cfg.train.batch_size // d.world
    fits = [m for m in range(1, per_rank + 1) if per_rank % m == 0 and need(m) <= free]
    if fits:
        fix = f"set train.micro_batch_size={fits[-1]} (gradient accumulation keeps train.batch_size)"
    else:
        fix = "shorten data.seq_len or use a smaller model"
        fix += "" if cfg.train.activation_checkpointing else " or set train.activation_checkpointing=true"
    raise HuginnError(
        f"a micro-batch of {layout.micro} rows x {cfg.data.seq_len} tokens needs at least {need(layout.micro) / gb:.1f} GiB on "
        f"{d.device.type} for training, but {free / gb:.1f} GiB is available; {fix}"
    )


# --- the loop --------------------------------------------------------------------------------
def train(cfg: JobConfig, run: str | Path) -> RunResult:
    """Train (or resume) the run in folder `run` under `cfg`; the config is validated again here,
    and `run` checked for writability, before anything is built."""
    validate(cfg)
    run = check_writable_out(run)
    d = init_distributed(cfg.train.device)
    try:
        return _train(cfg, run, d)
    finally:
        shutdown(d)


@dataclass
class Job:
    """What a run trains with, built before the run folder is touched."""

    model: RecurrentLM
    data: BuiltinSource | PackedSource | ChatSource
    sampler: DepthSampler
    fwd: nn.Module  # the training forward, wrapped for DDP / FSDP2
    opt: Optimizers
    layout: Layout
    resuming: bool
    precision: Precision


def _train(cfg: JobConfig, run: Path, d: Dist) -> RunResult:
    job = _build(cfg, run, d)
    start = _resume_or_start(cfg, run, d, job)
    metrics = Metrics(run, d.is_main, start, cfg.train.max_steps, cfg.log)
    result = RunResult(run=run, step=start)
    t = cfg.train
    stop = min(t.max_steps, start + t.stop_after) if t.stop_after else t.max_steps
    for step in range(start, stop):
        loss, lr, (n, k), grad_norm, tokens = _train_step(cfg, run, d, job, step)
        result.losses.append(loss)
        metrics.count(tokens, tokens * train_flops_per_token(job.model.model_config, n, k))
        last = step + 1 == stop
        metrics.log_step(step + 1, loss, lr, n, k, grad_norm, log=(step + 1) % cfg.log.every == 0 or last)
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < t.max_steps:
            _log_eval(cfg, d, job, metrics, step + 1)
        if cfg.checkpoint.save_every and (step + 1) % cfg.checkpoint.save_every == 0 and not last:
            _save(cfg, run, d, job, step + 1)
    result.step = stop
    if stop > start:
        _save(cfg, run, d, job, stop)
    metrics.close()
    if stop == t.max_steps and cfg.eval.scaling:
        _scaling_report(cfg, run, d, job, metrics, result)
    return result


def _build(cfg: JobConfig, run: Path, d: Dist) -> Job:
    """Model, data, depth sampler, training forward and optimizer. Everything that can fail on
    bad input runs here, before the run folder is touched."""
    t = cfg.train
    micro = t.micro_batch_size or max(1, t.batch_size // d.world)
    if t.batch_size % (micro * d.world):
        raise HuginnError(
            f"train.batch_size {t.batch_size} is not a multiple of micro_batch_size {micro} x {d.world} processes"
        )
    layout = Layout(t.batch_size, micro, d.rank, d.world)
    torch.manual_seed(t.seed)  # identical init on every rank (FSDP2 does not broadcast)
    model = build_model(cfg)
    mc = model.model_config
    check_fits(cfg, mc)
    data = build_data(cfg, mc, layout)
    sampler = depth_sampler(cfg, mc)
    check_memory(cfg, mc, layout, sampler.backprop_depth, model, d)
    resuming = checkpoint.check_resumable(run, cfg.to_dict(), announce=d.is_main)
    barrier(d)
    model.to(d.device)
    if d.device.type == "cpu" and (t.threads or mc.n_embd <= 128):
        # tiny models gain nothing from intra-op threads, and on a busy machine OpenMP spin-waits
        # make 2 threads up to 30x slower than 1 (measured here)
        torch.set_num_threads(t.threads or 1)
    precision = _precision(cfg, run, d, model, layout.micro, resuming)
    if t.compile:
        for block in (*blocks(model, "prelude"), *blocks(model, "core_block"), *blocks(model, "coda")):
            block.compile()
    fwd = apply_parallel(
        TrainForward(model, t.loss_chunk, t.activation_checkpointing, t.seed), cfg.parallel.kind, d, cfg.optim.name
    )
    return Job(model, data, sampler, fwd, build_optimizer(model, cfg.optim), layout, resuming, precision)


def _precision(cfg: JobConfig, run: Path, d: Dist, model: RecurrentLM, rows: int, resuming: bool) -> Precision:
    """The run's precision (rank 0's choice on every rank), said once."""
    p = precision_of.choose(cfg.train.precision, model, d.device, rows, cfg.data.seq_len, run if resuming else None)
    if d.world > 1:  # a trial can come out differently per rank: rank 0 decides
        bf16 = all_sum(torch.tensor(float(p.name == "bf16") if d.is_main else 0.0), d)
        p = Precision("bf16" if float(bf16) > 0 else "fp32", p.reason)
    if d.is_main:
        print(f"huginn: training in {p.name} ({p.reason})", flush=True)
    return p


def _resume_or_start(cfg: JobConfig, run: Path, d: Dist, job: Job) -> int:
    """The step to start from: the latest checkpoint's (model, optimizer, data position and RNG
    restored), or 0 with the run's files written."""
    start = 0
    if job.resuming and (ckpt := checkpoint.latest(run)) is not None:
        trainer = checkpoint.load(ckpt, job.model, job.opt.optimizers, d)
        start = trainer["step"]
        job.data.load_state_dict(trainer["data"])
        torch.set_rng_state(trainer["rng_cpu"])
    elif d.is_main:
        checkpoint.write_run_files(run, dump_config(cfg), job.model.model_config.to_dict())
        precision_of.record(run, job.precision)
    barrier(d)
    return start


def _train_step(
    cfg: JobConfig, run: Path, d: Dist, job: Job, step: int
) -> tuple[float, float, tuple[int, int], float, int]:
    """One optimizer step: (loss, lr, (no_grad, grad) steps, grad norm, tokens in the global batch)."""
    s = cfg.schedule
    lr = set_lr(job.opt, lr_factor(step, cfg.train.max_steps, s.kind, s.warmup, s.decay, s.min_lr_ratio))
    n, k = job.sampler.sample(step)  # the same on every rank: seeded by the step
    # micro-batches; every micro-loss is divided by the step's global token count
    batches = [job.data.batch(step, i) for i in range(job.layout.accum)]
    tokens = all_sum(torch.tensor(float(sum(int((y != -100).sum()) for _, y, _ in batches))), d)
    denom = (tokens / d.world).to(d.device)  # DDP / FSDP average over ranks; this undoes it
    step_loss = torch.zeros((), device=d.device)
    for i, (inputs, labels, ids) in enumerate(batches):
        with no_sync(job.fwd, last=i == job.layout.accum - 1), job.precision.autocast(d.device):
            loss = job.fwd(inputs.to(d.device), labels.to(d.device), n, k, ids, denom)
        loss.backward()
        step_loss += loss.detach()
    loss_value = float(all_sum(step_loss.cpu(), d)) / d.world
    if not math.isfinite(loss_value):
        raise HuginnError(
            f"loss became {loss_value} at step {step}; training stopped and {_kept(run)}; lower optim.lr or check the data"
        )
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in job.model.parameters() if p.requires_grad], clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    job.opt.step()
    job.opt.zero_grad(set_to_none=True)
    return loss_value, lr, (n, k), float(grad_norm), int(cfg.train.batch_size * batches[0][0].shape[1])


def _kept(run: Path) -> str:
    last = checkpoint.latest(run)
    return f"the last good checkpoint {last.name} is kept" if last else "no checkpoint was written"


def _save(cfg: JobConfig, run: Path, d: Dist, job: Job, step: int) -> None:
    trainer = {"step": step, "data": job.data.state_dict(), "rng_cpu": torch.get_rng_state()}
    checkpoint.save(run, step, job.model, job.opt.optimizers, trainer, d, cfg.checkpoint.keep)


def _log_eval(cfg: JobConfig, d: Dist, job: Job, metrics: Metrics, step: int) -> None:
    losses, answers = evaluate(job.fwd, job.data, cfg.eval.num_steps, cfg, d, job.precision)
    extra = {
        "answer_acc": {str(r): a["acc"] for r, a in answers.items()},
        "answer_loss": {str(r): a["loss"] for r, a in answers.items()},
    }
    metrics.log_eval(step, losses, extra if answers else None)


def _scaling_report(cfg: JobConfig, run: Path, d: Dist, job: Job, metrics: Metrics, result: RunResult) -> None:
    """The end-of-run evaluation at every depth of `eval.scaling`: table, plot and JSON."""
    losses, answers = evaluate(job.fwd, job.data, cfg.eval.scaling, cfg, d, job.precision)
    metrics.write({"step": result.step, "eval": {str(r): v for r, v in losses.items()}, "scaling": True})
    result.scaling = losses
    if cfg.data.kind == "builtin" and not (d.world > 1 and cfg.parallel.kind == "fsdp"):
        # the task's depth sweep (the sweep calls the model's step-level pieces, which FSDP2's
        # hooks do not unshard: an FSDP run reports the validation loss only)
        e, trained = cfg.eval, (cfg.data.difficulty[0], cfg.data.difficulty[1])
        difficulties = e.difficulties or tasks.eval_difficulties(trained)
        sweep = report.depth_sweep(
            job.model,
            cfg.data.task,
            difficulties,
            trained,
            e.scaling,
            job.sampler.mean_recurrence,
            e.exit_criterion,
            e.exit_threshold,
            e.examples,
        )
        sweep.extra = {"step": result.step, "val_loss": {str(r): v for r, v in losses.items()}}
        if d.is_main:
            result.scaling_table = report.write_sweep(run, sweep)
    elif d.is_main:
        result.scaling_table = report.write(run, losses, answers or None, job.sampler.mean_recurrence, result.step)
