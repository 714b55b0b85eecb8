"""Process-group setup for ``torchrun`` (NCCL on GPUs, gloo on CPUs), and a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """The number of processes ``torchrun`` started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it (for work done once, such as evaluation)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    A process group that already exists (initialised by the caller) is used as it is.
    """
    world_size = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if world_size > 1:
        _host_group()  # every process creates it now, together (a collective)
    return DistInfo(rank, local_rank, world_size), dev


_HOST_GROUP: list = []


def _host_group():
    """A gloo group over all processes for small host-side exchanges (``None``: the default group is gloo already).

    Exchanging CPU tensors over NCCL would copy them to the GPU and back, waiting for the device's queue.
    """
    if not _HOST_GROUP or _HOST_GROUP[0][0] is not dist.group.WORLD:
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        _HOST_GROUP[:] = [(dist.group.WORLD, group)]
    return _HOST_GROUP[0][1]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_rows(values: torch.Tensor, host: bool = False) -> torch.Tensor:
    """``(K,)`` tensor from every process -> ``(W, K)``, rank order (``(1, K)`` without a process group).

    ``host``: ``values`` is a CPU tensor exchanged over the host (gloo) group, never touching an accelerator.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values[None]
    out = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(out, values.contiguous(), group=_host_group() if host else None)
    return torch.stack(out)
