"""The run directory contract (read by the reports; keep the names):

- ``config.json``: ``dataclasses.asdict(config)`` plus ``"gradmask_version"``.
- ``metrics.jsonl``: one object per finished epoch, keys ``METRIC_KEYS`` (plus any a callback
  added); accuracies are fractions in [0, 1] (train: on the augmented batches, during the epoch;
  test: after it, in eval mode); ``lr`` is the learning rate of the epoch's last step;
  ``epoch_seconds`` the wall time of training + evaluation; ``images_per_second`` training images
  (all processes) per second of the training phase; ``mask_kept`` is ``{target: kept fraction}``
  (mean over the epoch's steps and the processes) or null.
- ``metrics.csv``: the same records as a table (rewritten every epoch), ``mask_kept`` replaced by
  ``mask_kept_mean`` (mean over targets, empty without a mask).
- ``checkpoint.pt``: see :mod:`gradmask.train.checkpoint`.
- ``final.json``: keys ``FINAL_KEYS``, written last and only when every epoch finished: its
  existence means "finished".
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

from ..files import write_atomic, write_csv
from .checkpoint import CHECKPOINT

CONFIG = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
FINAL = "final.json"
TENSORBOARD = "tensorboard"
RUN_FILES = (CONFIG, METRICS_JSONL, METRICS_CSV, CHECKPOINT, FINAL)

METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr",
               "epoch_seconds", "images_per_second", "mask_kept")
FINAL_KEYS = ("test_acc", "test_top5", "test_loss", "epochs", "train_seconds", "device", "model", "mask",
              "seed", "num_params")


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN / inf
    return v


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def finished(self) -> bool:
        return (self.path / FINAL).is_file()

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Refuse to start a fresh run over another one (read-only: every process may call it)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out {self.path} exists and is not a directory")
        if resume or overwrite or self.is_empty():
            return
        raise ValueError(f"out directory {self.path} is not empty (it holds "
                         f"{sorted(p.name for p in self.path.iterdir())[:6]}); pass resume=True "
                         f"(--resume) to continue the run there or overwrite=True (--overwrite) to "
                         f"start it again, or choose another out")

    def clear(self) -> None:
        """Remove this project's run files (others in the directory are left alone)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)

    def write_config(self, config_dict: dict, version: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / CONFIG, json.dumps({**config_dict, "gradmask_version": version}, indent=2) + "\n")

    def append_metrics(self, record: dict) -> None:
        with open(self.path / METRICS_JSONL, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")

    def write_metrics(self, history: list[dict], jsonl: bool = False) -> None:
        """Rewrite ``metrics.csv`` (and ``metrics.jsonl`` when ``jsonl``) from ``history``."""
        if jsonl:
            write_atomic(self.path / METRICS_JSONL,
                          "".join(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n" for r in history))
        columns = [k for k in METRIC_KEYS if k != "mask_kept"] + ["mask_kept_mean"]
        extra = sorted({k for r in history for k, v in r.items()
                        if k not in METRIC_KEYS and isinstance(v, (int, float, str, bool, type(None)))})
        columns += extra
        rows = []
        for r in history:
            values = [v for v in (r.get("mask_kept") or {}).values() if v is not None]
            row = {**r, "mask_kept_mean": sum(values) / len(values) if values else None}
            rows.append([row.get(k) for k in columns])
        write_csv(self.path / METRICS_CSV, columns, rows)

    def write_final(self, final: dict) -> None:
        write_atomic(self.path / FINAL, json.dumps({k: _json_value(v) for k, v in final.items()}, indent=2) + "\n")

    def read_final(self) -> Optional[dict]:
        if not self.finished:
            return None
        with open(self.path / FINAL, encoding="utf-8") as f:
            return json.load(f)

    def read_metrics(self) -> list[dict]:
        path = self.path / METRICS_JSONL
        if not path.is_file():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


__all__ = ["CONFIG", "FINAL", "FINAL_KEYS", "METRICS_CSV", "METRICS_JSONL", "METRIC_KEYS", "RUN_FILES",
           "RunDir", "TENSORBOARD"]
