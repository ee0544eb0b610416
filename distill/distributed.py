"""Data-parallel training helpers (torchrun): the process group, each rank's share of a global batch, and
figures and gradients averaged over the ranks."""

from __future__ import annotations

import os

import numpy as np
import torch


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (gloo on CPU, NCCL on CUDA) on first use."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_share(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share of a global batch: DistributedSampler's rank::world split, without shuffling."""
    if world == 1:
        return idx
    from torch.utils.data import DistributedSampler

    return idx[list(DistributedSampler(idx, num_replicas=world, rank=rank, shuffle=False))]


def mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """A logged figure averaged over the ranks (the global batch's value)."""
    if world == 1:
        return value.item()
    import torch.distributed as dist

    value = value.detach().clone().float()
    dist.all_reduce(value)
    return (value / world).item()


def average_grads(module: torch.nn.Module, world: int) -> None:
    """The gradients of ``module``'s parameters averaged over the ranks (DDP averages the student's; the
    objective's projections are averaged with this)."""
    import torch.distributed as dist

    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world
