"""Runs as Slurm jobs (``compare`` / ``reproduce --executor slurm``), submitted through submitit.

:class:`SlurmExecutor` holds what a cluster needs (partition, time limit, nodes, GPUs, CPUs and memory
per run, extra ``sbatch`` arguments). Its :meth:`~SlurmExecutor.trainer` is a ``train_fn`` (see
:mod:`gradmask.compare.jobs`) that trains each run as one Slurm job: the runs of one
:func:`~gradmask.compare.jobs.train_all` call go in as one job array, at most ``jobs`` running at a
time (``--array=0-N%jobs``). A run of several processes (``tasks_per_node`` x ``nodes``, one per
GPU) trains with DistributedDataParallel, its ranks set up from the ``srun`` step's environment
(:func:`gradmask.train.distributed.slurm_launch`).

The submitting command keeps its books in ``folder`` (``{out}/slurm``): ``jobs.json`` maps each run
folder to its job id and log, ``logs/`` holds submitit's pickles and the jobs' logs. It takes that
folder's lock (a second submitting command on it is refused), prints each job's state as it changes
(PENDING, RUNNING, COMPLETED, FAILED with its log), and when killed leaves the jobs running: run the
same command again and it attaches to the jobs still in Slurm's queue instead of submitting them
again (a job recorded before a kill between ``sbatch`` and ``jobs.json`` is found by its unique job
name). A run whose job failed is submitted again (it resumes from its checkpoint). Runs finished
earlier (``final.json``) are not submitted.

Preemption and time limits: every job asks Slurm for a signal (USR2) ``signal_delay_s`` before it
is ended; the job then requeues itself (submitit's checkpoint / requeue) and, started again, resumes
from the run's last epoch checkpoint, with the numbers an uninterrupted run has (the epoch in
progress is trained again). The requeued job takes over its own run folder's lock, on whatever node
(:class:`gradmask.train.rundir.RunLock` records the Slurm job id). Slurm holds a requeued batch job
for about two minutes before it may start again.
"""
from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from ..train import TrainConfig, train
from ..train.rundir import RunDir, RunLock
from ..util.files import write_atomic
from .jobs import check_jobs

JOBS_JSON = "jobs.json"
LOGS = "logs"
#: squeue states of a job that has not ended (it may still write its run)
ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
         "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD")
#: how long a job may be out of the queue without a result file before it counts as ended
GONE_GRACE_SECONDS = 15.0
#: sbatch options the executor sets itself, with the option that sets them instead
OWN_OPTIONS = {"array": "--jobs", "output": "the executor (logs in {out}/slurm/logs)", "error": "the executor",
               "signal": "the executor (signal_delay_s)", "job-name": "the executor", "open-mode": "the executor",
               "partition": "--slurm-partition", "time": "--slurm-time", "nodes": "--slurm-nodes",
               "ntasks-per-node": "--slurm-tasks-per-node", "cpus-per-task": "--slurm-cpus-per-task",
               "gpus-per-node": "--slurm-gpus-per-node", "mem": "--slurm-mem-gb", "requeue": "the executor"}


def _install_hint() -> str:
    return "install it with pip install 'gradmask[slurm]' (or pip install submitit)"


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise ImportError(f"the Slurm executor needs submitit ({exc}); {_install_hint()}") from exc
    return submitit


def parse_time(value: Any) -> int:
    """A Slurm time limit in minutes: an integer (minutes) or ``"MM"``, ``"HH:MM:SS"``,
    ``"D-HH[:MM[:SS]]"`` (seconds rounded up)."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if match is None:
            raise ValueError(f"time (--slurm-time) must be minutes or [D-]HH:MM[:SS], got {value!r}")
        days, first, second, third = match.groups()
        if days is None and second is None:          # "MM"
            minutes = int(first)
        elif days is not None and second is None:    # "D-HH"
            minutes = int(days) * 1440 + int(first) * 60
        else:                                        # "HH:MM[:SS]", "D-HH:MM[:SS]"
            seconds = int(third or 0)
            minutes = int(days or 0) * 1440 + int(first) * 60 + int(second) + (seconds > 0)
    if minutes < 1:
        raise ValueError(f"time (--slurm-time) must be at least 1 minute, got {value!r}")
    return minutes


def parse_sbatch_args(items: Iterable[str]) -> dict[str, Any]:
    """``["--account=abc", "--exclusive"]`` -> ``{"account": "abc", "exclusive": True}`` (long options
    only; ``ValueError`` for short ones and for the options the executor sets itself)."""
    parsed: dict[str, Any] = {}
    for item in items:
        text = str(item).strip()
        if not text.startswith("--") or len(text) < 3:
            raise ValueError(f"sbatch_args (--slurm-sbatch) takes long sbatch options such as --account=NAME, "
                             f"got {item!r}")
        key, sep, value = text[2:].partition("=")
        if key in OWN_OPTIONS:
            raise ValueError(f"sbatch_args (--slurm-sbatch) {text!r}: --{key} is set by {OWN_OPTIONS[key]}")
        parsed[key] = value if sep else True
    return parsed


@dataclass(frozen=True)
class SlurmExecutor:
    """Where and how each run trains as a Slurm job. ``partition`` (None: the cluster's default);
    ``time``: the limit of one job (minutes, or ``"[D-]HH:MM[:SS]"``; a run longer than that is
    requeued from its checkpoint, at most ``max_timeouts`` times); ``nodes`` per run;
    ``gpus_per_node`` per run (0: none); ``tasks_per_node``: processes per node (None: one per GPU,
    at least one); ``cpus_per_task``: CPUs (and torch threads) per process (None: the cluster's
    default); ``mem_gb`` per node (None: the cluster's default); ``sbatch_args``: further long
    ``sbatch`` options (``"--account=NAME"``); ``signal_delay_s``: seconds between Slurm's warning
    signal and the end of a job; ``poll_seconds``: how often the submitting command looks at the
    queue."""
    partition: Optional[str] = None
    time: Any = 24 * 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    sbatch_args: tuple = ()
    signal_delay_s: int = 120
    max_timeouts: int = 3
    poll_seconds: float = 10.0

    def __post_init__(self) -> None:
        def integer(name: str, value: Any, low: int, option: str, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} ({option}) must be an integer >= {low}{' or None' if optional else ''}, "
                                 f"got {value!r}")
        object.__setattr__(self, "time", parse_time(self.time))
        integer("nodes", self.nodes, 1, "--slurm-nodes")
        integer("gpus_per_node", self.gpus_per_node, 0, "--slurm-gpus-per-node")
        integer("tasks_per_node", self.tasks_per_node, 1, "--slurm-tasks-per-node", optional=True)
        integer("cpus_per_task", self.cpus_per_task, 1, "--slurm-cpus-per-task", optional=True)
        integer("signal_delay_s", self.signal_delay_s, 1, "signal_delay_s")
        integer("max_timeouts", self.max_timeouts, 0, "max_timeouts")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or not self.mem_gb > 0):
            raise ValueError(f"mem_gb (--slurm-mem-gb) must be a number > 0 or None, got {self.mem_gb!r}")
        if self.partition is not None and (not isinstance(self.partition, str) or not self.partition.strip()):
            raise ValueError(f"partition (--slurm-partition) must be a partition name or None, got {self.partition!r}")
        if not isinstance(self.poll_seconds, (int, float)) or not self.poll_seconds > 0:
            raise ValueError(f"poll_seconds must be > 0, got {self.poll_seconds!r}")
        object.__setattr__(self, "sbatch_args", tuple(self.sbatch_args))
        parse_sbatch_args(self.sbatch_args)

    @property
    def processes(self) -> int:
        """Processes (DDP ranks) of one run: ``nodes`` x tasks per node."""
        return self.nodes * (self.tasks_per_node or max(1, self.gpus_per_node))

    def check_device(self, device: str) -> None:
        """Refuse GPUs per run with a CPU device, before anything is submitted."""
        if self.gpus_per_node and str(device) == "cpu":
            raise ValueError(f"--slurm-gpus-per-node {self.gpus_per_node} with device cpu (--device): the runs "
                             f"would not use their GPUs; use --device auto or cuda, or no GPUs")

    def parameters(self, jobs: int, name: str) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` for a job array of at most ``jobs`` at a time."""
        params: dict[str, Any] = dict(time=self.time, nodes=self.nodes, ntasks_per_node=self.tasks_per_node
                                      or max(1, self.gpus_per_node), signal_delay_s=self.signal_delay_s,
                                      array_parallelism=jobs, job_name=name,
                                      additional_parameters={"requeue": True, **parse_sbatch_args(self.sbatch_args)})
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.cpus_per_task:
            params["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb:
            params["mem"] = (f"{int(self.mem_gb)}GB" if float(self.mem_gb).is_integer()
                             else f"{int(self.mem_gb * 1024)}MB")
        return params

    def trainer(self, folder, jobs: int = 1, log: Optional[Callable[[str], Any]] = print,
                setup: Optional[Callable[[], None]] = None) -> "SlurmTrainer":
        """A :class:`SlurmTrainer` keeping its books in ``folder``, ``jobs`` jobs running at a time;
        every job calls ``setup`` (picklable, no arguments) before training."""
        return SlurmTrainer(self, folder, jobs, log, setup)


# ------------------------------------------------------------------------------------- in the job
class SlurmRun:
    """What each task of a Slurm job runs: :func:`gradmask.train.train` on the config (a dict), with
    ``SLURM_CPUS_PER_TASK`` torch threads, after ``setup()`` (the user's plug-ins, when given).
    Checkpointable: on Slurm's warning signal submitit calls :meth:`checkpoint` and requeues the job,
    which then resumes the run from its last checkpoint."""

    def __init__(self, setup: Optional[Callable[[], None]] = None) -> None:
        self.setup = setup

    def __call__(self, values: dict) -> dict:
        if self.setup is not None:
            self.setup()
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:
            torch.set_num_threads(int(threads))
        return train(TrainConfig.from_dict(values))

    def checkpoint(self, values: dict):
        """The submission a requeued job runs: the same run, resumed from its checkpoint (``resume``;
        ``overwrite`` dropped once the run folder holds this config's run: the job started it)."""
        config = TrainConfig.from_dict(values)
        changes = {"resume": True}
        if config.overwrite and not RunDir(config.run_dir).differences(config):
            changes["overwrite"] = False
        return _submitit().helpers.DelayedSubmission(self, dataclasses.replace(config, **changes).to_dict())


# ------------------------------------------------------------------------------ the submitting side
def _squeue() -> dict[str, tuple[str, str]]:
    """``{job id: (state, job name)}`` of this user's jobs in Slurm's queue, array tasks one by one
    (``"12_3"``)."""
    command = ["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format", "%i|%T|%j"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot read Slurm's queue ({' '.join(command)}: {exc})") from exc
    if done.returncode != 0:
        raise RuntimeError(f"cannot read Slurm's queue: {' '.join(command)} said {done.stderr.strip()!r}")
    jobs = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def _alive(queue: Mapping[str, tuple[str, str]], job: str) -> bool:
    """Whether ``job`` is in the queue in a state from which it may still write its run."""
    return job in queue and queue[job][0] in ALIVE


@dataclass
class JobRecord:
    """One run's job: ``job`` id (``"12_3"`` for a task of array 12), ``name`` (the submission's
    unique job name), ``log`` / ``out`` (its stderr / stdout files), ``submitted`` (local time)."""
    job: str
    name: str
    log: str
    out: str
    submitted: str


class SlurmJobFailed(RuntimeError):
    """Runs whose Slurm jobs failed; ``failures``: ``[(run folder, job id, log path, reason)]``."""

    expected_failure = True  # the command line prints it as one line (gradmask.cli.expected_error), no traceback

    def __init__(self, failures: list[tuple[str, str, str, str]]) -> None:
        self.failures = failures
        super().__init__(f"{len(failures)} run(s) failed in Slurm: " + "; ".join(
            f"{run} (job {job}): {why}; log {log}" for run, job, log, why in failures)
            + ". Read the log, fix the cause, and run the same command again: finished runs are kept, failed "
              "ones are submitted again and resume from their checkpoints")


class SlurmTrainer:
    """``train_fn`` training each run as a Slurm job (see the module docstring); use as a context
    manager (or call :meth:`close`): it holds ``folder``'s lock. ``train_batch`` trains a list of
    runs as one job array; calling it with one config trains that run alone."""

    def __init__(self, executor: SlurmExecutor, folder, jobs: int = 1,
                 log: Optional[Callable[[str], Any]] = print, setup: Optional[Callable[[], None]] = None) -> None:
        self.executor, self.jobs, self.setup = executor, check_jobs(jobs), setup
        self.folder = Path(folder).absolute()
        self.log = log or (lambda line: None)
        _submitit()
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise RuntimeError("the Slurm executor needs Slurm's sbatch and squeue on PATH (run it on a login "
                               "node of the cluster)")
        self._lock = RunLock.acquire(self.folder)   # one submitting command per folder

    # ------------------------------------------------------------------ books
    def _read(self) -> dict:
        path = self.folder / JOBS_JSON
        if not path.is_file():
            return {"runs": {}, "submitting": []}
        try:
            books = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is damaged ({exc}); delete it only after checking with squeue that "
                             f"none of its jobs still runs") from exc
        books.setdefault("runs", {})
        books.setdefault("submitting", [])
        return books

    def _write(self, books: dict) -> None:
        write_atomic(self.folder / JOBS_JSON, json.dumps(books, indent=2) + "\n")

    def _paths(self, job: str):
        return _submitit().core.utils.JobPaths(self.folder / LOGS, job_id=job, task_id=0)

    def _record(self, job: str, name: str) -> dict:
        paths = self._paths(job)
        return dataclasses.asdict(JobRecord(job, name, str(paths.stderr), str(paths.stdout),
                                            time.strftime("%Y-%m-%dT%H:%M:%S")))

    def _recover(self, books: dict, states: Mapping[str, str]) -> None:
        """Submissions that were under way when an earlier command was killed: their jobs, found in
        the queue by their unique names, are recorded; jobs no longer queued are forgotten."""
        for pending in books["submitting"]:
            name, runs = pending["name"], pending["runs"]
            for job in [job for job, (_, job_name) in states.items() if job_name == name]:
                _, _, task = job.partition("_")
                index = int(task) if task.isdigit() else (0 if len(runs) == 1 else None)
                if index is not None and index < len(runs):
                    books["runs"][runs[index]] = self._record(job, name)
        books["submitting"] = []

    # ------------------------------------------------------------------ training
    def __call__(self, config) -> dict:
        return self.train_batch([config])[0]

    def train_batch(self, configs: Sequence, before: Optional[Callable[[int, Any], None]] = None,
                    finished: Optional[Callable[[Any, float, bool], None]] = None) -> list:
        """Train ``configs`` as Slurm jobs and return their final metrics, in order. ``before(k,
        config)`` is called for run ``k`` (1-based) in order as it is submitted, attached to or found
        finished; ``finished(config, seconds, trained)`` as each run ends. Waits for every job, then
        raises :class:`SlurmJobFailed` naming the failed ones and their logs."""
        configs = list(configs)
        keys = [str(Path(c.out).absolute()) for c in configs]
        if len(set(keys)) != len(keys):
            raise ValueError("two runs of one batch share a run folder")
        books = self._read()
        states = _squeue()
        self._recover(books, states)
        results: dict[int, dict] = {}
        watching: dict[int, str] = {}   # run index -> job id
        what: dict[int, str] = {}
        for k, (config, key) in enumerate(zip(configs, keys)):
            run = RunDir(config.out)
            record = books["runs"].get(key)
            if run.finished and (record is None or not _alive(states, record["job"])):
                run.resume_state(config)           # a finished run of other settings is refused, naming them
                results[k] = run.read_final()
                what[k] = "finished earlier"
            elif record is not None and _alive(states, record["job"]):
                watching[k] = record["job"]
                what[k] = f"attached to job {record['job']} ({states[record['job']][0]})"
        submit = [k for k in range(len(configs)) if k not in what]
        if submit:
            self._submit(books, [configs[k] for k in submit], [keys[k] for k in submit])
            watching.update({k: books["runs"][keys[k]]["job"] for k in submit})
        self._write(books)
        for k, config in enumerate(configs):      # in list order, as train_all announces runs
            if before is not None:
                before(k + 1, config)
            if k in what:
                self.log(f"slurm: [{k + 1}/{len(configs)}] {what[k]}: {config.out}")
            if k in results and finished is not None:
                finished(config, 0.0, False)
        failures = self._wait(configs, watching, results, books, finished)
        if failures:
            raise SlurmJobFailed(failures)
        return [results[k] for k in range(len(configs))]

    def _submit(self, books: dict, configs: list, keys: list[str]) -> None:
        """Submit ``configs`` as one job array (a single job for one run), recording the ids."""
        submitit = _submitit()
        name = f"gradmask-{uuid.uuid4().hex[:12]}"
        books["submitting"].append({"name": name, "runs": keys})
        self._write(books)                          # a kill during sbatch: the next command finds them by name
        executor = submitit.SlurmExecutor(folder=self.folder / LOGS, max_num_timeout=self.executor.max_timeouts)
        executor.update_parameters(**self.executor.parameters(self.jobs, name))
        with executor.batch():
            handles = [executor.submit(SlurmRun(self.setup), config.to_dict()) for config in configs]
        for handle, key in zip(handles, keys):
            books["runs"][key] = self._record(handle.job_id, name)
        books["submitting"] = [s for s in books["submitting"] if s["name"] != name]
        self._write(books)
        array = handles[0].job_id.split("_")[0]
        self.log(f"slurm: submitted {len(configs)} run(s) as job {array}"
                 + (f" (an array, at most {self.jobs} at a time)" if len(configs) > 1 else "")
                 + f"; job ids in {self.folder / JOBS_JSON}, logs in {self.folder / LOGS}")

    def _outcome(self, job: str) -> Optional[tuple[str, Any]]:
        """``("success", final metrics)`` or ``("error", traceback)`` from the job's result file, or None."""
        paths = self._paths(job)
        try:
            paths.folder.chmod(paths.folder.stat().st_mode)   # refreshes a network file system's view
        except OSError:
            pass
        if not paths.result_pickle.exists():
            return None
        return _submitit().core.utils.pickle_load(paths.result_pickle)

    def _wait(self, configs: list, watching: dict[int, str], results: dict, books: dict,
              finished: Optional[Callable]) -> list:
        """Poll the queue until every watched job has ended; print each change of state."""
        failures, shown, started = [], {}, {k: time.perf_counter() for k in watching}
        gone: dict[int, float] = {}  # since when a job has been out of the queue without a result file
        total = len(configs)
        while watching:
            states = _squeue()
            for k, job in list(watching.items()):
                config, state = configs[k], states.get(job, ("", ""))[0]
                log_path = books["runs"][str(Path(config.out).absolute())]["log"]
                if state in ALIVE:
                    gone.pop(k, None)
                    if shown.get(k) != state:
                        self.log(f"slurm: [{k + 1}/{total}] job {job} {state}: {config.out}")
                        shown[k] = state
                    continue
                outcome = self._outcome(job)
                if outcome is None:
                    # a result file may show up late on a network file system, and a job being requeued can
                    # drop out of squeue's list for a moment on a busy controller: ended only after a grace
                    since = gone.setdefault(k, time.monotonic())
                    if time.monotonic() - since < max(GONE_GRACE_SECONDS, 3 * self.executor.poll_seconds):
                        continue
                    outcome = ("error", f"the job ended ({state or 'left the queue'}) without a result: "
                                        f"killed, out of memory, or its node failed")
                del watching[k]
                if outcome[0] == "success":
                    results[k] = outcome[1]
                    self.log(f"slurm: [{k + 1}/{total}] job {job} COMPLETED: {config.out}")
                    if finished is not None:
                        finished(config, time.perf_counter() - started[k], True)
                else:
                    why = str(outcome[1]).strip().splitlines()[-1] if str(outcome[1]).strip() else "failed"
                    failures.append((str(config.out), job, log_path, why))
                    self.log(f"slurm: [{k + 1}/{total}] job {job} FAILED: {config.out}: {why}; log {log_path}")
            if watching:
                time.sleep(self.executor.poll_seconds)
        return failures

    def close(self) -> None:
        """Release ``folder``'s lock (jobs still in Slurm keep running)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "SlurmTrainer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            print(f"gradmask: stopped waiting for Slurm; submitted jobs keep running. Run the same command again "
                  f"to attach to them (job ids in {self.folder / JOBS_JSON}), or cancel them with scancel",
                  file=sys.stderr)
        self.close()


__all__ = ["JOBS_JSON", "LOGS", "SlurmExecutor", "SlurmJobFailed", "SlurmRun", "SlurmTrainer", "parse_sbatch_args",
           "parse_time"]
