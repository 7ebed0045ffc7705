"""Where the runs of ``compare`` and ``reproduce`` train: the executor choice.

``"local"`` (the default): on this machine, :func:`gradmask.train.train` in this process, or
``jobs`` worker processes (:class:`gradmask.compare.jobs.ProcessTrainer`). A
:class:`gradmask.compare.slurm.SlurmExecutor` (``"slurm"``: one with its defaults): each run a Slurm
job, ``jobs`` at a time, the books in ``{out}/slurm``. :func:`open_trainer` makes the ``train_fn``
of either; :func:`executor_from_args` reads the command-line options
(:func:`gradmask.compare.cli.add_executor_arguments`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .jobs import ProcessTrainer, check_jobs
from .slurm import SlurmExecutor

EXECUTORS = ("local", "slurm")
#: the Slurm executor's folder inside the output folder (jobs.json, logs/)
SLURM_DIR = "slurm"

Executor = Union[str, SlurmExecutor]


def check_executor(executor: Any) -> Executor:
    """``"local"``, or a :class:`SlurmExecutor` (``"slurm"``: one with its defaults)."""
    if executor == "slurm":
        return SlurmExecutor()
    if executor == "local" or isinstance(executor, SlurmExecutor):
        return executor
    raise ValueError(f"executor (--executor) must be 'local', 'slurm' or a gradmask.compare.slurm.SlurmExecutor, "
                     f"got {executor!r}")


def open_trainer(executor: Executor, jobs: int, device: str, out: str | os.PathLike,
                 log: Optional[Callable[[str], Any]] = print):
    """The ``train_fn`` of ``executor`` as a context manager: locally :func:`gradmask.train.train`
    (``jobs`` 1) or a :class:`ProcessTrainer` of ``jobs`` workers on ``device``; for Slurm its
    :class:`~gradmask.compare.slurm.SlurmTrainer` with the books in ``{out}/slurm`` (a second
    submitting command on ``out`` is refused). Checked before anything trains."""
    executor, jobs = check_executor(executor), check_jobs(jobs)
    if executor == "local":
        if jobs > 1:
            return ProcessTrainer(jobs, str(device))
        from ..train import train
        return contextlib.nullcontext(train)
    executor.check_device(str(device))
    return executor.trainer(Path(out) / SLURM_DIR, jobs, log)


def executor_from_args(args) -> "str | SlurmExecutor":
    """``"local"`` or the :class:`SlurmExecutor` of the options; ``--slurm-*`` options without
    ``--executor slurm`` are refused."""
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time, "nodes": args.slurm_nodes,
             "gpus_per_node": args.slurm_gpus_per_node, "tasks_per_node": args.slurm_tasks_per_node,
             "cpus_per_task": args.slurm_cpus_per_task, "mem_gb": args.slurm_mem_gb,
             "sbatch_args": tuple(args.slurm_sbatch)}
    if args.executor == "local":
        defaults = {"partition": None, "time": "24:00:00", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None,
                    "cpus_per_task": None, "mem_gb": None, "sbatch_args": ()}
        given = [f"--slurm-{k.replace('_', '-')}" for k, v in slurm.items() if v != defaults[k]]
        if given:
            raise ValueError(f"{', '.join(given)} need --executor slurm")
        return "local"
    return SlurmExecutor(**slurm)


__all__ = ["EXECUTORS", "Executor", "SLURM_DIR", "check_executor", "executor_from_args",
           "open_trainer"]
