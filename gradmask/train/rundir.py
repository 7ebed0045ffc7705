"""The run directory contract (read by the reports; keep the names):

- ``config.json``: ``config.to_dict()`` (flat: the mask settings' fields beside the others) plus
  ``"gradmask_version"`` (the code revision of the last start, :func:`gradmask.train.source.source_revision`)
  and ``"trained_by"`` (every revision that trained epochs of the run, oldest first; absent in older runs)
  and ``"machine"`` (the numerical setup of every stretch of training, oldest first: CPU, its torch dispatch
  capability, threads, library versions; :mod:`gradmask.train.machine`; absent in older runs).
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
  existence means "finished"; ``checkpoint`` is the checksum of the checkpoint it describes.
- ``.gradmask.lock``: present while a process owns the folder (:meth:`RunDir.lock`).

``config.json``, ``final.json`` and each line of ``metrics.jsonl`` carry a ``"checksum"``;
``final.json`` also names the checksum of the checkpoint it describes (``"checkpoint"``): see
:mod:`gradmask.train.records`.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Optional

from ..util.files import write_atomic, write_csv, write_record
from . import records
from .checkpoint import CHECKPOINT, read_checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig, config_differences
from .records import CONFIG, FINAL, METRICS_JSONL, json_record, metrics_line

LOCK = ".gradmask.lock"
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
RUN_FILES = (CONFIG, METRICS_JSONL, METRICS_CSV, CHECKPOINT, FINAL)

METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr",
               "epoch_seconds", "images_per_second", "mask_kept", "mask_energy_kept")
FINAL_KEYS = ("test_acc", "test_top5", "test_loss", "epochs", "train_seconds", "device", "model", "mask",
              "seed", "num_params", "trained_by", "checkpoint")


class RunDirInUse(ValueError):
    """The run folder is owned by another live process (or by one gradmask cannot check)."""


def _is_partial(name: str) -> bool:
    """A temporary file of :func:`gradmask.util.files.write_atomic` (``.<name>.<random>.tmp``)."""
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


def slurm_job(environ=os.environ) -> tuple[Optional[str], int]:
    """``(Slurm job id, restarts)`` of this process: ``"ARRAY_TASK"`` for a task of a job array, else
    SLURM_JOB_ID (None outside a Slurm job), and SLURM_RESTART_COUNT (how often Slurm requeued it)."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else environ.get("SLURM_JOB_ID")
    return job or None, int(environ.get("SLURM_RESTART_COUNT") or 0)


def _earlier_run_of_this_job(owner: dict) -> bool:
    """Whether ``owner`` was an earlier run of this process's Slurm job, before Slurm requeued it
    (preemption, time limit, node failure): Slurm runs one instance of a job at a time, so that one
    has ended, whatever node it ran on."""
    job, restarts = slurm_job()
    before = owner.get("slurm_restarts")
    return job is not None and owner.get("slurm_job") == job and isinstance(before, int) and before < restarts


def _owner_text(owner: dict) -> str:
    job = f", torchrun job {owner['job']}" if owner.get("job") else ""
    if owner.get("slurm_job"):
        job += f", Slurm job {owner['slurm_job']}" + (f" (restart {owner['slurm_restarts']})"
                                                    if owner.get("slurm_restarts") else "")
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
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # none, or a symbolic link (which no gradmask job uses)
    try:
        owner = RunLock._read(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not owner or owner == _UNKNOWN_OWNER:
        return None
    if owner.get("host") != socket.gethostname():
        return f"{_owner_text(owner)} (another host: cannot tell whether it runs)"
    pid = owner.get("pid")
    return _owner_text(owner) if isinstance(pid, int) and _alive(pid) else None


class RunLock:
    """Ownership of a run folder: ``.gradmask.lock`` holding ``{"host", "pid", "started", "job",
    "command", "slurm_job", "slurm_restarts"}`` and an exclusive ``flock`` on it for as long as the
    owner lives (the kernel drops it when the process dies, however it dies). :meth:`release`
    removes the file.

    A lock left behind is taken over when its process is gone (same host), or when it was written
    by an earlier run of this process's own Slurm job (same ``slurm_job``, fewer restarts: Slurm
    requeued the job, possibly onto another node, and runs one instance of it at a time). A lock of
    any other process on another host is refused: gradmask cannot tell whether it still runs."""

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
                fd = _open_lock(lock)
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
            if exc.errno == errno.ELOOP:
                raise ValueError(f"out {folder}: its {LOCK} is a symbolic link; gradmask does not follow it (it would "
                                 f"create or truncate the file it points to): delete {lock}") from exc
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                             errno.EEXIST):
                raise ValueError(f"out {folder} is not writable ({exc.strerror}: {exc.filename}); "
                                 f"choose another out or fix its permissions") from exc
            raise
        try:
            previous = cls._read(fd)
            if previous and _earlier_run_of_this_job(previous):
                print(f"gradmask: taking over run folder {folder}: its lock was left by {_owner_text(previous)}, "
                      f"an earlier run of this Slurm job (Slurm requeued it)", file=sys.stderr)
            elif previous:
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
            owner["slurm_job"], owner["slurm_restarts"] = slurm_job()
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


def _open_lock(lock: Path) -> int:
    """``lock`` opened for reading and writing (created 0644 if absent) without following a
    symbolic link (``ELOOP``); a lock that is not a regular file of this user with at most one link
    (a hard link to another file, another user's file) raises ``ValueError`` naming it (0 links: the
    previous owner just removed it; :meth:`RunLock.acquire` opens it again)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"belongs to another user (uid {st.st_uid})" if st.st_uid != os.geteuid() else
               f"has {st.st_nlink} hard links (it is another file's name too)" if st.st_nlink > 1 else None)
    if problem is not None:
        os.close(fd)
        raise ValueError(f"lock file {lock} {problem}; gradmask does not take it over: delete it if no gradmask job "
                         f"of its owner uses the folder")
    return fd


def remove_partial_files(folder: Path) -> int:
    """Remove the partial temporary files (:func:`_is_partial`) an interrupted writer left in
    ``folder`` and every folder below it, except below a folder another live process holds (its
    ``.gradmask.lock``, :func:`lock_owner`); symbolic links are not followed. Returns the bytes
    removed. For the owner of ``folder`` only."""
    removed = 0
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here != folder and LOCK in files and lock_owner(here) is not None:
            dirs.clear()  # a run another process trains now: its own files
            continue
        for name in files:
            p = here / name
            if _is_partial(name) and p.is_file() and not p.is_symlink():
                removed += p.stat().st_size
                p.unlink()
    return removed


def take_folder(folder: Path) -> RunLock:
    """Own ``folder`` (:meth:`RunLock.acquire`), then remove the partial temporary files left
    anywhere below it (:func:`remove_partial_files`), saying so on stderr."""
    lock = RunLock.acquire(folder)
    try:
        removed = remove_partial_files(folder)
    except BaseException:
        lock.release()
        raise
    if removed:
        print(f"gradmask: removed partial temporary files ({removed / 1e6:.1f} MB) that an interrupted "
              f"job left in {folder}", file=sys.stderr)
    return lock


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
        partial temporary files an interrupted writer left below it (:func:`take_folder`)."""
        return take_folder(self.path)

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
        write_record(self.path / CONFIG, {**config_dict, **extra})

    def append_metrics(self, record: dict) -> None:
        """One line more in ``metrics.jsonl`` (a full disk is an ``OSError`` naming the file; the
        reader skips a half-written last line)."""
        path = self.path / METRICS_JSONL
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(metrics_line(record))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, f"disk full while writing {path}; free some space and resume the run "
                                         f"(--resume)") from exc
            raise

    def write_metrics(self, history: list[dict], jsonl: bool = False) -> None:
        """Rewrite ``metrics.csv`` (and ``metrics.jsonl`` when ``jsonl``) from ``history``."""
        if jsonl:
            write_atomic(self.path / METRICS_JSONL, "".join(metrics_line(r) for r in history))
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
        write_record(self.path / FINAL, json_record(final))

    def read_final(self) -> Optional[dict]:
        """``final.json`` (verified, without its checksum), or None when the run is not finished."""
        return records.read_final(self.path / FINAL)[0] if self.finished else None

    def read_metrics(self) -> list[dict]:
        """The epoch records of ``metrics.jsonl`` in epoch order, each verified, without their
        checksums ([] without the file; :func:`gradmask.train.records.read_metrics`)."""
        return records.read_metrics(self.path / METRICS_JSONL)[0]

    def read_config(self) -> Optional[TrainConfig]:
        """The run's ``config.json`` as a TrainConfig, or None without one."""
        path = self.path / CONFIG
        if not path.is_file():
            return None
        content = records.read_config(path)[0]
        try:
            return TrainConfig.from_dict(content)
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
                             + f"; use the run's settings ({', '.join(_setting(k, a) for k, (a, _) in diff.items())}), "
                               "overwrite=True (--overwrite) to train it again, or choose another out")
        return state


def _setting(name: str, value) -> str:
    """How to ask for ``value`` of TrainConfig field ``name``: its ``gradmask train`` option (``--groups 4``;
    none for a None or ``arm``) and keyword (``groups=4``)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        option = flag if value else "--no-" + name.replace("_", "-")
    elif isinstance(value, (list, tuple)):
        option = f"{flag} {','.join(map(str, value))}"
    else:
        option = None if value is None or name == "arm" else f"{flag} {value}"  # arm: set by gradmask compare
    return f"{option} / {name}={value!r}" if option else f"{name}={value!r}"


__all__ = ["CONFIG", "FINAL", "FINAL_KEYS", "LOCK", "METRICS_CSV", "METRICS_JSONL", "METRIC_KEYS", "RUN_FILES",
           "RunDir", "RunDirInUse", "RunLock", "TENSORBOARD", "claim", "lock_owner", "remove_partial_files",
           "slurm_job", "take_folder"]
