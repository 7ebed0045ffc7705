"""The run directory contract (read by the reports; keep the names):

- ``config.json``: ``dataclasses.asdict(config)`` plus ``"gradmask_version"`` (the code revision of the
  last start, :func:`gradmask.train.source.source_revision`) and ``"trained_by"`` (every revision that
  trained epochs of the run, oldest first; absent in older runs) and ``"machine"`` (the numerical setup
  of every stretch of training, oldest first: CPU, its torch dispatch capability, threads, library
  versions; :mod:`gradmask.train.machine`; absent in older runs).
- ``metrics.jsonl``: one object per finished epoch, keys ``METRIC_KEYS`` (plus any a callback
  added); accuracies are fractions in [0, 1] (train: on the augmented batches, during the epoch;
  test: after it, in eval mode); ``lr`` is the learning rate of the epoch's last step;
  ``epoch_seconds`` the wall time of training + evaluation; ``images_per_second`` training images
  (all processes) per second of the training phase; ``mask_kept`` is ``{target: kept fraction}``
  (mean over the epoch's steps and the processes) or null, ``mask_energy_kept`` likewise the share
  of the gradient's energy kept (``||masked||^2 / ||g||^2``); ``train_eval_acc`` / ``train_eval_loss``
  (when ``train_eval_images`` > 0) eval-mode figures on a fixed un-augmented training subset. A run
  with a validation split (``val_fraction`` > 0) writes ``val_loss`` / ``val_acc`` / ``val_top5`` instead of the
  ``test_*`` keys (here and in ``final.json``): it never reads the test split.
- ``metrics.csv``: the same records as a table (rewritten every epoch), ``mask_kept`` replaced by
  ``mask_kept_mean`` and ``mask_energy_kept_mean`` (means over targets, empty without a mask).
- ``checkpoint.pt``: see :mod:`gradmask.train.checkpoint`.
- ``final.json``: keys ``FINAL_KEYS``, written last and only when every epoch finished: its
  existence means "finished".
- ``.gradmask.lock``: present while a process owns the folder (:meth:`RunDir.lock`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ..files import read_json, write_atomic, write_csv
from .checkpoint import CHECKPOINT, read_checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig, config_differences

CONFIG = "config.json"
LOCK = ".gradmask.lock"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
FINAL = "final.json"
TENSORBOARD = "tensorboard"
RUN_FILES = (CONFIG, METRICS_JSONL, METRICS_CSV, CHECKPOINT, FINAL)

METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr",
               "epoch_seconds", "images_per_second", "mask_kept", "mask_energy_kept")
FINAL_KEYS = ("test_acc", "test_top5", "test_loss", "epochs", "train_seconds", "device", "model", "mask",
              "seed", "num_params", "trained_by")


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN / inf
    return v


class RunDirInUse(ValueError):
    """The run folder is owned by another live process (or by one gradmask cannot check)."""


def _is_partial(name: str) -> bool:
    """A temporary file of :func:`gradmask.files.write_atomic` (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner_text(owner: dict) -> str:
    job = f", torchrun job {owner['job']}" if owner.get("job") else ""
    since = f" since {owner['started']}" if owner.get("started") else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}{job}{since}"


_UNKNOWN_OWNER = {"host": "?", "pid": "?"}


def _parse_owner(text: str) -> dict:
    """The owner record of a lock file's text: ``{}`` for an empty file, ``_UNKNOWN_OWNER`` for one
    that is not a JSON object (a lock, but of unknown owner)."""
    text = text.strip()
    if not text:
        return {}
    try:
        owner = json.loads(text.splitlines()[0])
    except json.JSONDecodeError:
        return dict(_UNKNOWN_OWNER)
    return owner if isinstance(owner, dict) else dict(_UNKNOWN_OWNER)


def lock_owner(folder) -> Optional[str]:
    """Who holds run folder ``folder`` by its ``.gradmask.lock``, read without locking anything:
    ``"pid 123 on host since ..."`` for a live process of this host, the same plus ``"(another host:
    cannot tell whether it runs)"`` for one of another host; None without a lock or when its process
    is gone."""
    try:
        owner = _parse_owner((Path(folder) / LOCK).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    if not owner or owner == _UNKNOWN_OWNER:
        return None
    if owner.get("host") != socket.gethostname():
        return f"{_owner_text(owner)} (another host: cannot tell whether it runs)"
    pid = owner.get("pid")
    return _owner_text(owner) if isinstance(pid, int) and _alive(pid) else None


class RunLock:
    """Ownership of a run folder: ``.gradmask.lock`` holding ``{"host", "pid", "started", "job",
    "command"}`` and an exclusive ``flock`` on it for as long as the owner lives (the kernel drops it
    when the process dies, however it dies). :meth:`release` removes the file."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the flock: no one else has it
        finally:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def _read(fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        return _parse_owner(os.read(fd, 1 << 16).decode("utf-8", errors="replace"))

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        """Own ``folder`` (created if needed) or raise: :class:`RunDirInUse` when a live process
        owns it (or one on another host), ``ValueError`` when it cannot be written. A lock file
        left by a dead process of this host is taken over with a message on stderr."""
        lock = folder / LOCK
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"out {folder} exists and is not a directory")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = cls._read(fd)
                    os.close(fd)
                    raise RunDirInUse(f"run folder {folder} is in use by {_owner_text(owner)}; wait for that job "
                                      f"to end (or stop it), or choose another out") from None
                try:  # the previous owner may have removed the file between our open and flock
                    same = os.stat(lock).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                             errno.EEXIST):
                raise ValueError(f"out {folder} is not writable ({exc.strerror}: {exc.filename}); "
                                 f"choose another out or fix its permissions") from exc
            raise
        try:
            previous = cls._read(fd)
            if previous:
                pid = previous.get("pid")
                if previous.get("host") != socket.gethostname() or not isinstance(pid, int):
                    raise RunDirInUse(f"run folder {folder} has a lock written by {_owner_text(previous)}; gradmask "
                                      f"cannot tell whether that process still runs: if it does not, delete {lock}")
                if pid != os.getpid() and _alive(pid):
                    raise RunDirInUse(f"run folder {folder} has a lock of {_owner_text(previous)}, a process that "
                                      f"is running but does not hold it; if it is not a gradmask job writing there, "
                                      f"delete {lock}")
                print(f"gradmask: taking over run folder {folder}: its lock was left by {_owner_text(previous)}, "
                      f"which no longer runs", file=sys.stderr)
            owner = {"host": socket.gethostname(), "pid": os.getpid(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "job": os.environ.get("TORCHELASTIC_RUN_ID"),
                     "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(owner) + "\n").encode("utf-8"))
            os.fsync(fd)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, f"disk full while writing {lock}; free some space and run the command "
                                         f"again") from exc
            raise
        return cls(lock, fd)


def claim(run: "RunDir", dist_ctx) -> Optional[RunLock]:
    """Own ``run`` for a training job: the main process takes the lock (the other ranks of a
    ``torchrun`` job share it: only the main process writes there); when it cannot, every process
    raises the same error. Returns the main process's lock (None on the others)."""
    lock, error = None, None
    if dist_ctx.is_main:
        try:
            lock = run.lock()
        except (ValueError, OSError) as exc:
            if not dist_ctx.enabled:
                raise
            error = exc
    failures = dist_ctx.all_gather_object(None if error is None else (isinstance(error, RunDirInUse), str(error)))
    if failures[0] is not None:
        if error is not None:
            raise error
        raise (RunDirInUse if failures[0][0] else ValueError)(failures[0][1])
    return lock


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

    @property
    def unstarted(self) -> bool:
        """The folder holds a run that finished no epoch (a ``config.json`` but neither a checkpoint
        nor ``final.json``): starting it again, with any settings, loses nothing."""
        return (self.path / CONFIG).is_file() and not self.checkpoint.exists() and not self.finished

    def is_empty(self) -> bool:
        """No files but the lock and partial temporary files."""
        return not self.path.exists() or all(p.name == LOCK or _is_partial(p.name) for p in self.path.iterdir())

    def lock(self) -> RunLock:
        """Own this folder until ``release()`` (see :class:`RunLock`); creates it; then removes the
        partial temporary files an interrupted writer left (no one else writes here now)."""
        lock = RunLock.acquire(self.path)
        removed = 0
        for p in self.path.iterdir():
            if _is_partial(p.name) and p.is_file():
                removed += p.stat().st_size
                p.unlink()
        if removed:
            print(f"gradmask: removed partial temporary files ({removed / 1e6:.1f} MB) that an interrupted "
                  f"run left in {self.path}", file=sys.stderr)
        return lock

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Refuse to start a fresh run over another one, or in a folder where a run file's name is
        taken by a directory (read-only: every process may call it)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out {self.path} exists and is not a directory")
        for name in RUN_FILES:
            if (self.path / name).is_dir():
                raise ValueError(f"{self.path / name} is a directory, where gradmask keeps the run's {name}; "
                                 f"move it away or choose another out")
        if resume or overwrite or self.is_empty() or self.unstarted:
            return
        raise ValueError(f"out directory {self.path} is not empty (it holds "
                         f"{sorted(p.name for p in self.path.iterdir() if p.name != LOCK)[:6]}); pass resume=True "
                         f"(--resume) to continue the run there or overwrite=True (--overwrite) to "
                         f"start it again, or choose another out")

    def clear(self) -> None:
        """Remove this project's run files (others in the directory are left alone)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)

    def write_config(self, config_dict: dict, version: str, trained_by: Optional[list] = None,
                     machine: Optional[list] = None) -> None:
        """``config.json``: the config, the code revision writing it, (``trained_by``) every revision
        that trained the run and (``machine``) the numerical setup of every stretch, oldest first."""
        self.path.mkdir(parents=True, exist_ok=True)
        extra = {"gradmask_version": version}
        if trained_by is not None:
            extra["trained_by"] = list(trained_by)
        if machine is not None:
            extra["machine"] = list(machine)
        write_atomic(self.path / CONFIG, json.dumps({**config_dict, **extra}, indent=2) + "\n")

    def append_metrics(self, record: dict) -> None:
        """One line more in ``metrics.jsonl`` (a full disk is an ``OSError`` naming the file; the
        reader skips a half-written last line)."""
        path = self.path / METRICS_JSONL
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, f"disk full while writing {path}; free some space and resume the run "
                                         f"(--resume)") from exc
            raise

    def write_metrics(self, history: list[dict], jsonl: bool = False) -> None:
        """Rewrite ``metrics.csv`` (and ``metrics.jsonl`` when ``jsonl``) from ``history``."""
        if jsonl:
            write_atomic(self.path / METRICS_JSONL,
                          "".join(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n" for r in history))
        per_target = ("mask_kept", "mask_energy_kept")  # {target: value}: one column of their mean each
        columns = [k for k in METRIC_KEYS if k not in per_target] + [f"{k}_mean" for k in per_target]
        extra = sorted({k for r in history for k, v in r.items()
                        if k not in METRIC_KEYS and isinstance(v, (int, float, str, bool, type(None)))})
        columns += extra
        rows = []
        for r in history:
            row = dict(r)
            for key in per_target:
                values = [v for v in (r.get(key) or {}).values() if v is not None]
                row[f"{key}_mean"] = sum(values) / len(values) if values else None
            rows.append([row.get(k) for k in columns])
        write_csv(self.path / METRICS_CSV, columns, rows)

    def write_final(self, final: dict) -> None:
        write_atomic(self.path / FINAL, json.dumps({k: _json_value(v) for k, v in final.items()}, indent=2) + "\n")

    def read_final(self) -> Optional[dict]:
        """``final.json`` (None when the run has not finished); a damaged one is a ``ValueError``
        naming it."""
        if not self.finished:
            return None
        return read_json(self.path / FINAL, "final record")

    def read_metrics(self) -> list[dict]:
        """The epoch records of ``metrics.jsonl`` in epoch order ([] without the file). A half-written
        last line (a run killed, or writing right now) is skipped; a repeated epoch (a resumed run)
        counts once, its last record; any other damage is a ``ValueError`` naming the file and line."""
        path = self.path / METRICS_JSONL
        if not path.is_file():
            return []
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_epoch: dict[int, dict] = {}
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise ValueError(f"{path}, line {i + 1}: not valid JSON") from None
            epoch = row.get("epoch") if isinstance(row, dict) else None
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise ValueError(f"{path}, line {i + 1}: expected an object with an integer 'epoch' >= 1, got "
                                 f"{line[:80]}")
            by_epoch[epoch] = row
        return [by_epoch[e] for e in sorted(by_epoch)]

    def read_config(self) -> Optional[TrainConfig]:
        """The run's ``config.json`` as a TrainConfig, or None without one."""
        path = self.path / CONFIG
        if not path.is_file():
            return None
        values = read_json(path, "run config")
        try:
            return TrainConfig.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"run config {path} cannot be read ({exc})") from exc

    def _stored(self) -> tuple[Optional[dict], Optional[TrainConfig]]:
        """``(checkpoint state (verified) or None, the run's config or None)``."""
        if self.checkpoint.is_file():
            state = read_checkpoint(self.checkpoint)
            return state, TrainConfig.from_dict(dict(state["config"]))
        return None, self.read_config()

    def differences(self, config: TrainConfig, ignore: tuple = RESUME_FREE_FIELDS,
                    unstarted: bool = False) -> dict[str, tuple]:
        """``{field: (the run's value, config's value)}`` for the settings that change results
        (:func:`gradmask.train.config.config_differences`, fields ``ignore`` aside) where the run
        in this folder (its checkpoint, else its ``config.json``) differs from ``config``; ``{}``
        for an empty folder, and for one whose run finished no epoch (:attr:`unstarted`: it is
        started again) unless ``unstarted``."""
        if self.unstarted and not unstarted:
            return {}
        stored = self._stored()[1]
        return {} if stored is None else config_differences(stored, config, ignore)

    def resume_state(self, config: TrainConfig) -> Optional[dict]:
        """The checkpoint (verified) to continue ``config`` from, or None when there is none. A run
        here of another config, finished or not, raises ``ValueError`` naming the fields that differ;
        one that finished no epoch (:attr:`unstarted`) is started again (None)."""
        if self.unstarted:
            return None
        state, stored = self._stored()
        diff = {} if stored is None else config_differences(stored, config)
        if diff:
            what = "the finished run" if self.finished else "the run"
            raise ValueError(f"cannot resume {what} in {self.path}: its config differs in "
                             + ", ".join(f"{k} (run {a!r}, now {b!r})" for k, (a, b) in diff.items())
                             + "; use the run's settings, overwrite=True (--overwrite) to train it again, "
                               "or choose another out")
        return state


__all__ = ["CONFIG", "FINAL", "FINAL_KEYS", "LOCK", "METRICS_CSV", "METRICS_JSONL", "METRIC_KEYS", "RUN_FILES",
           "RunDir", "RunDirInUse", "RunLock", "TENSORBOARD", "claim", "lock_owner"]
