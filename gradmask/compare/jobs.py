"""Several runs at once (``compare --jobs N``, ``reproduce --jobs N``): each run trains in one of N
spawned worker processes, with its share of the CPU threads or a GPU of its own.

:class:`ProcessTrainer` is a ``train_fn``: calling it with a config trains that run in a free worker
and returns its final metrics, so wrappers such as the progress counter work unchanged.
:func:`train_all` calls a ``train_fn`` on a list of configs from ``jobs`` threads; a ``train_fn``
with a ``train_batch(configs, before)`` method (the Slurm executor's,
:class:`gradmask.compare.slurm.SlurmTrainer`) is given the whole list instead. Results are those
of :func:`gradmask.train.train` in one process: each run draws only from its own seed. On CPU a
run's low bits depend on its thread count, as they do anywhere.

Workers are fresh interpreters: plug-ins your script registers (``register_augment``, datasets,
models) do not exist there, and a run that names one fails with the worker's error. Register them
in a ``setup`` function (importable, no arguments) that each worker calls first, or train with
``jobs=1``.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any, Callable, Optional, Sequence

import torch

from ..train import TrainConfig, train

_WORKER: dict[str, Any] = {}   # in a worker process: its device (None: the config's)


def check_jobs(jobs: Any) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs (--jobs) must be an integer >= 1, got {jobs!r}")
    return jobs


def job_devices(device: str, jobs: int, cuda_count: Optional[int] = None) -> list[Optional[str]]:
    """The device of each worker: ``"cuda"`` (or ``"auto"`` with CUDA) spreads the workers over the
    visible GPUs, ``cuda:0``, ``cuda:1``, ... (several on one GPU when there are more workers than
    GPUs); ``cuda:N`` keeps them all on GPU N; on CPU ``None`` (the config's device)."""
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if device == "cuda" or (device == "auto" and count > 0):
        if count < 1:
            raise ValueError("device cuda was requested for the worker processes, but no CUDA device is visible")
        return [f"cuda:{k % count}" for k in range(jobs)]
    return [None] * jobs


def _die_with_parent(parent: int) -> None:
    """A daemon thread that ends this worker (SIGTERM) once the process that started it (pid
    ``parent``) is gone, so a killed ``compare`` leaves no run training on and holding its folder's
    lock; the run resumes from its last checkpoint next time. (Linux's PR_SET_PDEATHSIG would fire
    when the *thread* that spawned the worker ends, and runs are submitted from short-lived threads.)"""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gradmask-parent-watch", daemon=True).start()


def _start_worker(parent: int, counter, devices: Sequence[Optional[str]], threads: int, setup) -> None:
    _die_with_parent(parent)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER["device"] = devices[index % len(devices)]
    torch.set_num_threads(threads)
    if setup is not None:
        setup()


def _train_in_worker(values: dict) -> dict:
    # runs side by side: no epoch bars (they would overwrite each other)
    config = TrainConfig.from_dict(values).replace(progress=False)
    if _WORKER.get("device") is not None:
        config = config.replace(device=_WORKER["device"])
    return train(config)


class ProcessTrainer:
    """``train_fn`` training each run in one of ``jobs`` spawned processes (use as a context manager,
    or call :meth:`close`). ``device``: the base config's (see :func:`job_devices`); ``threads``: torch
    CPU threads per worker (default: this process's thread count shared out, at least 1);
    ``setup``: a picklable function, no arguments, each worker calls first (to register plug-ins)."""

    def __init__(self, jobs: int, device: str = "cpu", threads: Optional[int] = None,
                 setup: Optional[Callable[[], None]] = None) -> None:
        self.jobs = check_jobs(jobs)
        if os.environ.get("WORLD_SIZE", "1") != "1":
            raise ValueError("jobs (--jobs) > 1 cannot run under torchrun: every torchrun process already "
                             "trains the same run (DDP); launch without torchrun to train runs side by side")
        self.threads = max(1, torch.get_num_threads() // jobs) if threads is None else threads
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads per job must be an integer >= 1, got {threads!r}")
        self.devices = job_devices(device, jobs)
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker,
                                         initargs=(os.getpid(), context.Value("i", 0), self.devices, self.threads,
                                                   setup))

    def __call__(self, config) -> dict:
        try:
            return self._pool.submit(_train_in_worker, config.to_dict()).result()
        except Exception as error:
            raise RuntimeError(f"run {config.out} failed in a worker process (jobs={self.jobs}): "
                               f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        """Wait for the runs in training, then end the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        """End the workers now (SIGTERM): runs in training stop, and resume from their last epoch
        checkpoint next time; runs not started are dropped."""
        for process in list((getattr(self._pool, "_processes", None) or {}).values()):
            process.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "ProcessTrainer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """Leaving with an error (a failed run, Ctrl-C) ends the other runs at once; else waits."""
        if exc_type is None:
            self.close()
        else:
            self.terminate()


def train_all(train_fn: Callable, configs: Sequence, jobs: int = 1,
              before: Optional[Callable[[int, Any], None]] = None) -> list:
    """``[train_fn(c) for c in configs]``, from ``jobs`` threads when ``jobs`` > 1 (started in list
    order); ``before(k, config)`` is called as run ``k`` (1-based) starts. The first failure (or an
    interrupt) is raised at once and no further run starts; runs already in training are not waited
    for (a :class:`ProcessTrainer` left with that error ends them). A ``train_fn`` with a
    ``train_batch`` method trains the list itself: ``train_fn.train_batch(configs, before)``."""
    check_jobs(jobs)
    batch = getattr(train_fn, "train_batch", None)
    if batch is not None:
        return batch(list(configs), before)
    turn, started = [1], threading.Condition()

    def one(k: int, config):
        with started:                   # runs are taken in list order; their start (and line) too
            started.wait_for(lambda: turn[0] == k)
            try:
                if before is not None:
                    before(k, config)
            finally:
                turn[0] += 1
                started.notify_all()
        return train_fn(config)

    if jobs == 1 or len(configs) <= 1:
        return [one(k, c) for k, c in enumerate(configs, 1)]
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="gradmask-run")
    futures = [pool.submit(one, k, c) for k, c in enumerate(configs, 1)]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            raise failed[0].exception()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


__all__ = ["ProcessTrainer", "check_jobs", "job_devices", "train_all"]
