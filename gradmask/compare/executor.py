"""Where the runs of ``compare`` and ``reproduce`` train: the executor choice.

``"local"`` (the default): on this machine, :func:`gradmask.train.train` in this process, or
``jobs`` worker processes (:class:`gradmask.compare.jobs.ProcessTrainer`). A
:class:`gradmask.compare.slurm.SlurmExecutor` (``"slurm"``: one with its defaults): each run a Slurm
job, ``jobs`` at a time, the books in ``{out}/slurm``. :func:`open_trainer` makes the ``train_fn``
of either; :func:`gradmask.cli.options.executor_from_args` reads the command-line options.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..train import train
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
                 log: Optional[Callable[[str], Any]] = print, setup: Optional[Callable[[], None]] = None):
    """The ``train_fn`` of ``executor`` as a context manager: locally :func:`gradmask.train.train`
    (``jobs`` 1) or a :class:`ProcessTrainer` of ``jobs`` workers on ``device``; for Slurm its
    :class:`~gradmask.compare.slurm.SlurmTrainer` with the books in ``{out}/slurm`` (a second
    submitting command on ``out`` is refused). Checked before anything trains.

    ``setup``: a picklable function without arguments that every worker process and every Slurm
    job calls before training: register your own plug-ins there (augmentations, datasets, models;
    workers are fresh interpreters). Runs trained in this process need none."""
    executor, jobs = check_executor(executor), check_jobs(jobs)
    if executor == "local":
        if jobs > 1:
            return ProcessTrainer(jobs, str(device), setup=setup)
        return contextlib.nullcontext(train)
    executor.check_device(str(device))
    return executor.trainer(Path(out) / SLURM_DIR, jobs, log, setup)


__all__ = ["EXECUTORS", "Executor", "SLURM_DIR", "check_executor", "open_trainer"]
