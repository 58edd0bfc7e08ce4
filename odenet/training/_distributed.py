"""DDP under ``torchrun``: process-group setup, teardown and per-rank epoch shards."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ._runtime import TrainingError, resolve_device


# ----------------------------------------------------------------------------- distributed

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def check_replicas(self, module: nn.Module, epoch: int) -> None:
        """Raise :class:`TrainingError` unless every rank holds bit-identical parameters."""
        if not self.active:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
            hi, lo = flat.clone(), flat.clone()
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            diverged = not torch.equal(hi, lo)
        if diverged:
            raise TrainingError(f"the DistributedDataParallel replicas hold different weights after epoch "
                                f"{epoch}; the ranks must run the same model, data and seed")


def _setup_distributed(device: str) -> _Dist:
    """Join (or start, under torchrun) the default process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device, local_rank=local_rank).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, True)


def _epoch_indices(n: int, epoch: int, seed: int, ctx: _Dist) -> torch.Tensor:
    """This rank's shuffled sample indices for ``epoch`` (DistributedSampler semantics)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)
