"""What the run folders under a path are doing (``gradmask status PATH``): finished, training (and by
which process) or stopped; epochs done of planned; the last accuracy; the time per epoch; an ETA.

Read-only: it reads ``config.json``, ``metrics.jsonl``, ``final.json`` and ``.gradmask.lock``, and
locks or writes nothing, so it is safe beside running jobs.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..util.durations import format_duration
from ..util.progress import counted
from .rundir import CONFIG, METRICS_JSONL, RunDir, lock_owner

FINISHED, TRAINING, STOPPED = "finished", "training", "stopped"


@dataclass(frozen=True)
class RunStatus:
    """One run folder. ``last_acc``: top-1 (fraction) of the last finished epoch on ``split`` ("test",
    or "val" for a tuning run); ``epoch_seconds``: median of the last three epochs; ``owner``: the
    process training it (``state == "training"``)."""

    path: Path
    state: str
    epochs_done: int
    epochs_planned: Optional[int]
    last_acc: Optional[float]
    split: str
    epoch_seconds: Optional[float]
    owner: Optional[str]
    updated: Optional[float]          # mtime of metrics.jsonl (seconds since the epoch)

    @property
    def eta_seconds(self) -> Optional[float]:
        """Seconds to the last planned epoch at the recent pace (0 when finished, None when unknown)."""
        if self.state == FINISHED:
            return 0.0
        if self.epoch_seconds is None or self.epochs_planned is None:
            return None
        return max(0, self.epochs_planned - self.epochs_done) * self.epoch_seconds


def run_status(folder) -> RunStatus:
    """The :class:`RunStatus` of run folder ``folder`` (one holding ``config.json``)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8: listed without its settings
        config = {}
    if not isinstance(config, dict):
        config = {}
    run = RunDir(folder)
    records = run.read_metrics()
    split = "val" if records and "val_acc" in records[-1] else "test"
    times = [float(r["epoch_seconds"]) for r in records[-3:] if isinstance(r.get("epoch_seconds"), (int, float))]
    owner = lock_owner(folder)
    state = FINISHED if run.finished else TRAINING if owner else STOPPED
    planned = config.get("epochs")
    metrics = folder / METRICS_JSONL
    return RunStatus(folder, state, len(records), planned if isinstance(planned, int) else None,
                     records[-1].get(f"{split}_acc") if records else None, split,
                     statistics.median(times) if times else None, owner,
                     metrics.stat().st_mtime if metrics.is_file() else None)


def scan(root) -> list[RunStatus]:
    """Every run folder under ``root`` (``root`` itself included), in path order."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"PATH {root} does not exist")
    folders = sorted({p.parent for p in root.rglob(CONFIG)} | ({root} if (root / CONFIG).is_file() else set()))
    return [run_status(f) for f in folders]


def status_text(root, runs: list[RunStatus], now: Optional[float] = None) -> str:
    """A table of ``runs`` (paths relative to ``root``) and a summary line."""
    now = time.time() if now is None else now
    rows = [("run", "state", "epochs", "last top-1", "per epoch", "left", "last epoch")]
    for r in runs:
        name = str(r.path.relative_to(root)) if r.path != Path(root) else r.path.name
        epochs = f"{r.epochs_done}/{r.epochs_planned if r.epochs_planned is not None else '?'}"
        acc = "-" if r.last_acc is None else f"{100 * r.last_acc:.2f}% {r.split}"
        left = "-" if r.state == FINISHED else format_duration(r.eta_seconds, "clock")
        if r.state != FINISHED and r.eta_seconds is None and r.epochs_planned is not None:
            # no epoch of its own yet: the pace of the listed runs of the same length, marked as a guess
            pace = [o.epoch_seconds for o in runs if o.epoch_seconds and o.epochs_planned == r.epochs_planned]
            if pace:
                left = "~" + format_duration(statistics.median(pace) * (r.epochs_planned - r.epochs_done), "clock")
        ago = "-" if r.updated is None else f"{format_duration(now - r.updated, 'clock')} ago"
        rows.append((name, r.state, epochs, acc, format_duration(r.epoch_seconds, "clock"), left, ago))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    count = {s: sum(r.state == s for r in runs) for s in (FINISHED, TRAINING, STOPPED)}
    left = sum(max(0, (r.epochs_planned or 0) - r.epochs_done) for r in runs if r.state != FINISHED)
    lines.append(f"{counted(len(runs), 'run')}: {count[FINISHED]} finished, {count[TRAINING]} training, "
                 f"{count[STOPPED]} stopped; {counted(left, 'epoch')} left in the unfinished ones (runs not started "
                 f"yet are not listed)")
    for r in runs:
        if r.state == TRAINING:
            lines.append(f"  {r.path.name}: {r.owner}")
    return "\n".join(lines) + "\n"


__all__ = ["FINISHED", "RunStatus", "STOPPED", "TRAINING", "run_status", "scan", "status_text"]
