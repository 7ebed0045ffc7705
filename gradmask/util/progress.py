"""Overall progress of a sequence of training runs (``reproduce``, ``compare``): runs done / total,
elapsed time and an ETA.

On a terminal a tqdm bar (each run's epoch bar, drawn by the engine, sits beneath it); otherwise one
plain line per finished run through ``log``, never a carriage return, so a redirected log stays
readable. The ETA is the mean time of the runs trained so far times the runs left (runs that were
finished before, which return at once, do not count towards it).
"""
from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .durations import format_duration


def counted(n: int, noun: str, plural: Optional[str] = None) -> str:
    """``"1 run"``, ``"0 runs"``, ``"3 runs"`` (``plural``: the noun's plural when not noun + "s")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class RunProgress:
    """Counts runs as they finish. ``total`` runs in all, ``done`` of them finished before;
    ``bar``: draw a tqdm bar on stderr (a terminal), else ``log`` one line per run; ``jobs``: runs
    trained at a time (the ETA counts rounds of that many)."""

    def __init__(self, total: int, done: int = 0, bar: bool = False, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.perf_counter, jobs: int = 1) -> None:
        if total < 0 or not 0 <= done <= max(total, 0):
            raise ValueError(f"need 0 <= done <= total, got done {done}, total {total}")
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
        self.total, self.done, self.log, self.clock, self.jobs = total, done, log, clock, jobs
        self.start = clock()
        self.trained: list[float] = []  # seconds of each run trained in this process
        self._bar = None
        self._lock = threading.Lock()
        if bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=done, desc="runs", unit="run", file=sys.stderr,
                             dynamic_ncols=True, bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {postfix}")
            self._bar.set_postfix_str(self._times(), refresh=True)

    def eta(self) -> Optional[float]:
        """Seconds left: the mean trained run times the rounds left, ``jobs`` runs a round (None before
        the first trained run)."""
        if self.done >= self.total:
            return 0.0
        if not self.trained:
            return None
        return sum(self.trained) / len(self.trained) * math.ceil((self.total - self.done) / self.jobs)

    def _times(self) -> str:
        elapsed = format_duration(self.clock() - self.start, "clock")
        return f"elapsed {elapsed}, ETA {format_duration(self.eta(), 'clock')}"

    def finished(self, name: str, seconds: float, trained: bool) -> None:
        """Record one finished run (``trained``: it trained now, rather than having finished before);
        thread-safe (runs trained side by side report from their own threads)."""
        with self._lock:
            self._finished(name, seconds, trained)

    def _finished(self, name: str, seconds: float, trained: bool) -> None:
        self.done += 1
        if trained:
            self.trained.append(seconds)
        if self._bar is not None:
            self._bar.set_postfix_str(self._times(), refresh=False)
            self._bar.update(1)
        else:
            status = f"trained in {format_duration(seconds, 'clock')}" if trained else "finished earlier"
            self.log(f"runs {self.done}/{self.total}: {name} {status}; {self._times()}")

    def skipped(self, runs: int) -> None:
        """Count ``runs`` finished before (a step found done) without a line of their own."""
        self.done = min(self.total, self.done + runs)
        if self._bar is not None:
            self._bar.update(runs)

    def wrap(self, train_fn: Callable) -> Callable:
        """``train_fn(config)`` counted: a run whose ``config.out`` held ``final.json`` before the call
        finished earlier, any other trained now. A ``train_fn`` that trains lists of runs itself
        (``train_batch(configs, before, finished)``, the Slurm executor's) keeps that method, its
        runs counted as it reports them finished."""
        def counted(config):
            before = (Path(config.out) / "final.json").is_file()
            start = self.clock()
            result = train_fn(config)
            self.finished(str(config.out), self.clock() - start, trained=not before)
            return result

        batch = getattr(train_fn, "train_batch", None)
        if batch is not None:
            def counted_batch(configs, before=None, finished=None):
                def count(config, seconds: float, trained: bool) -> None:
                    self.finished(str(config.out), seconds, trained)
                    if finished is not None:
                        finished(config, seconds, trained)
                return batch(configs, before, count)
            counted.train_batch = counted_batch
        return counted

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["RunProgress", "counted"]
