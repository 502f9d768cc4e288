"""Data parallelism applied from outside the model: process group set-up, DDP or FSDP2, reductions.

Under `torchrun` (WORLD_SIZE > 1) `init_distributed` joins the process group (gloo on CPU, nccl on
GPU); a plain run is world size 1 and never touches torch.distributed. `apply_parallel` wraps the
`TrainForward` module:

* `ddp`: DistributedDataParallel (gradients all-reduced, averaged over ranks).
* `fsdp`: FSDP2 `fully_shard` of every prelude and coda block and of the root (which then holds the
  core, adapter, embedding and head as one unit: the core runs many times per forward, so it is
  gathered once per forward rather than once per iteration). Gradients are reduce-scattered
  (averaged); the optimizer sees DTensor shards. Muon needs whole matrices, so it is refused here.

Non-goals: tensor / pipeline parallelism.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal, cast, get_args

import torch
import torch.distributed as dist
from torch import Tensor, nn

from huginn.errors import HuginnError, one_of

ParallelKind = Literal["ddp", "fsdp"]
PARALLEL_KINDS: tuple[ParallelKind, ...] = get_args(ParallelKind)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(kind: str) -> torch.device:
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise HuginnError("train.device is cuda but no CUDA device is visible; use train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def init_distributed(device_kind: str = "auto") -> Dist:
    device = pick_device(device_kind)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def apply_parallel(module: nn.Module, kind: str, d: Dist, optimizer_name: str) -> nn.Module:
    if d.world == 1:
        return module
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if kind == "fsdp":
        if optimizer_name == "muon":
            raise HuginnError(
                "Muon needs whole matrices and FSDP shards them; use parallel.kind=ddp with optim.name=muon"
            )
        from torch.distributed.fsdp import fully_shard

        from huginn.train.forward import blocks

        model = cast(nn.Module, module.model)
        for block in (*blocks(model, "prelude"), *blocks(model, "coda")):
            fully_shard(block)
        fully_shard(module)
        return module
    raise one_of("parallel.kind", kind, PARALLEL_KINDS)


def no_sync(module: nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step (DDP only)."""
    if not last and hasattr(module, "no_sync"):
        return getattr(module, "no_sync")()  # noqa: B009  (nn.Module's __getattr__ types it as a Tensor)
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        getattr(module, "set_requires_gradient_sync")(last)  # noqa: B009
    return contextlib.nullcontext()


def all_sum(x: Tensor, d: Dist) -> Tensor:
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
