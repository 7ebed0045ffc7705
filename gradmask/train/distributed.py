"""Process-group handling for ``torchrun`` launches (env RANK / WORLD_SIZE / LOCAL_RANK).

One process per device; gloo on CPU, NCCL on CUDA. A caller may initialise the process group
itself (``torch.distributed.init_process_group``) before :func:`gradmask.train.train`; then it is
used as is and left alone at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # initialised here, destroyed by close()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place; returns the tensor."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over processes so that
        every process holds the same model (each process's statistics saw only its shard)."""
        if not self.enabled:
            return
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world_size)
        # all_reduce leaves the same bits on every rank for gloo and NCCL; broadcast anyway so
        # equality holds whatever the backend's reduction order
        for buf in model.buffers():
            dist.broadcast(buf, src=0)

    def all_gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def is_main_process() -> bool:
    """True unless this is a ``torchrun`` process of rank > 0 (env ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device_type: str) -> DistContext:
    """The process group of this run: the caller's if initialised, else one from the torchrun
    environment when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA), else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())), owns_group=False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistContext(rank, world_size, local_rank, owns_group=True)


__all__ = ["DistContext", "is_main_process", "setup_distributed"]
