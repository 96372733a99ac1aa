"""Distributed data-parallel training under ``torchrun`` (PyTorch DDP; Li et al., "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020).

``torchrun --nproc-per-node N [--nnodes M ...] -m upscale_cli train ...`` starts one process per
device; each reads its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment and joins
the process group (``nccl`` on CUDA, ``gloo`` on CPU).  The global batch ``--batch-size`` is
split evenly between the processes (:class:`~upscale_cli.train.data.StepSampler`), gradients
are averaged by DDP, and only rank 0 validates, logs, checkpoints and exports.  On several
nodes ``--out`` must be on a filesystem every node sees (each rank reads the checkpoint on
``--resume``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UsageError

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    return DistContext(rank, world, local)


def setup(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (when distributed) and return this process's device."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"process {ctx.local_rank} of this node has no GPU: {torch.cuda.device_count()} CUDA device(s) here; "
                "start at most that many (torchrun --nproc-per-node) or train with --device cpu"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # the other ranks wait at their next all-reduce while rank 0 validates and checkpoints
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world, timeout=PROCESS_GROUP_TIMEOUT)
    return device


def wrap(module: nn.Module, ctx: DistContext, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``module`` in a DDP wrapper when distributed, else itself."""
    if not ctx.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``values`` over the processes (itself when single-process)."""
    if not ctx.enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world


def average_gradients(module: nn.Module, ctx: DistContext) -> None:
    """Average the gradients of a module that is not wrapped in DDP (the discriminator, which
    runs twice per step: DDP's hooks expect one forward per backward)."""
    if not ctx.enabled:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(ctx.world)


def broadcast(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every process (a picklable object)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(ctx: DistContext, *, finished: bool) -> None:
    """Leave the process group.  After a run that ``finished`` on every rank, the ranks first
    meet at a barrier, so none tears its gloo connections down while another is still using
    them (seen under load: a rank aborting at exit with ``terminate called without an active
    exception``); after an error, leave at once rather than wait for ranks that may be gone."""
    if ctx.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
