"""Process-group handling for ``torchrun`` launches (env RANK / WORLD_SIZE / LOCAL_RANK) and for
processes that Slurm's ``srun`` starts (env SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID /
SLURM_STEP_NODELIST: no torchrun needed in a Slurm job; see :func:`slurm_launch`).

One process per device; gloo on CPU, NCCL on CUDA. A caller may initialise the process group
itself (``torch.distributed.init_process_group``) before :func:`gradmask.train.train`; then it is
used as is and left alone at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

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


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, expanded in order: ``"gpu[01-03,7],cpu-a"`` -> ``["gpu01",
    "gpu02", "gpu03", "gpu7", "cpu-a"]`` (zero padding kept; several bracket groups in one name
    multiply out, as ``scontrol show hostnames`` does)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            if hostlist[start:i].strip():
                names += _expand_host(hostlist[start:i].strip())
            start = i + 1
    if depth != 0:
        raise ValueError(f"host list {hostlist!r} has unbalanced brackets")
    return names


def _expand_host(name: str) -> list[str]:
    if "[" not in name:
        return [name]
    prefix, rest = name.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    values = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"host list range {part!r} in {name!r} is not N or N-M")
        values += [str(v).zfill(len(low)) for v in range(int(low), int(high or low) + 1)]
    return [prefix + v + tail for v in values for tail in _expand_host(suffix)]


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a multi-process run: its ``rank``, ``world_size``, ``local_rank``
    and, for a Slurm step, the rendezvous ``init_method`` (``tcp://first node:port``; None: torchrun's
    ``env://``)."""
    rank: int
    world_size: int
    local_rank: int
    init_method: Optional[str] = None


def slurm_launch(environ: Mapping[str, str]) -> Optional[Launch]:
    """The :class:`Launch` of a process that ``srun`` started in a step of several tasks (one per GPU,
    on one node or several), from Slurm's variables; None outside such a step (the batch script of a
    job has SLURM_PROCID but no SLURM_STEP_NUM_TASKS: it is not a rank). The rendezvous is the
    step's first node (``MASTER_ADDR`` when set) at port ``MASTER_PORT``, else 20000 + job id mod 20000."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks <= 1 or "SLURM_PROCID" not in environ:
        return None
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or ""
    address = environ.get("MASTER_ADDR") or (expand_hostlist(nodes) or ["127.0.0.1"])[0]
    port = environ.get("MASTER_PORT") or str(20000 + int(environ.get("SLURM_JOB_ID") or 0) % 20000)
    return Launch(int(environ["SLURM_PROCID"]), tasks, int(environ.get("SLURM_LOCALID") or 0),
                  f"tcp://{address}:{port}")


def launch(environ: Mapping[str, str] = os.environ) -> Launch:
    """This process's place: torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) when WORLD_SIZE is
    set, else an ``srun`` step's (:func:`slurm_launch`), else a single process."""
    if "WORLD_SIZE" in environ:
        rank = int(environ.get("RANK", "0"))
        return Launch(rank, int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", rank)))
    return slurm_launch(environ) or Launch(0, 1, 0)


def is_main_process() -> bool:
    """True unless this is a process of rank > 0 of a ``torchrun`` launch (env ``RANK``) or an
    ``srun`` step (env ``SLURM_PROCID``)."""
    return launch().rank == 0


def setup_distributed(device_type: str) -> DistContext:
    """The process group of this run: the caller's if initialised, else one from the torchrun
    or ``srun`` environment (:func:`launch`) of more than one process (gloo on CPU, NCCL on CUDA),
    else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())), owns_group=False)
    where = launch()
    if where.world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(where.local_rank)
    if where.init_method is None:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, init_method=where.init_method, rank=where.rank,
                                world_size=where.world_size)
    return DistContext(where.rank, where.world_size, where.local_rank, owns_group=True)


__all__ = ["DistContext", "Launch", "expand_hostlist", "is_main_process", "launch", "setup_distributed", "slurm_launch"]
