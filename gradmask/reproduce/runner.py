"""``reproduce(plan, out)``: run every experiment the plan allows, resuming what already finished,
then write the report.

Each step's result goes to ``{out}/steps/{name}.json`` (atomically, with a checksum) with the
settings it was measured under and what it depends on: a training step the checkpoint checksums
of the runs it produced (``outputs``), a measurement step those of the checkpoints it read
(``inputs``). A step is skipped only when its file verifies, its settings are the same, and its
outputs / inputs are still there, unchanged (and its figures exist); otherwise it runs again --
so re-running the same command after an interruption continues where it stopped (training runs
resume from their last epoch checkpoint; finished runs are not trained again), and a deleted or
retrained run is trained / measured again rather than reported from stale results. Step files
written before checksums are accepted (unverified): their training runs must still be finished
and readable, their measurements no older than those runs. All training comes first; under
``torchrun`` every process trains (DDP) and only rank 0 evaluates and writes the report.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ..compare import check_executor, check_jobs, grid_points, open_trainer
from ..train import train
from ..train.checkpoint import read_checkpoint, recording_reads
from ..train.config import SCHEDULE_ALIASES
from ..train.distributed import is_main_process
from ..train.rundir import FINAL, take_folder
from ..train.source import source_revision
from ..util.files import ChecksumError
from ..util.progress import RunProgress
from . import runs as training
from .experiments import EXPERIMENTS
from .presets import ABLATION_VARIANTS, TRAINED_BOX_SETS, Plan
from .report import write_report
from .store import STATE, STEPS, Step, read_state, read_step, stored_json, write_json, write_step


class _Runs:
    """The checkpoints of the runs under ``out`` as the step files name them (paths relative to
    ``out``), each read and verified at most once per invocation."""

    def __init__(self, out: Path) -> None:
        self.out, self._ids = out, {}

    def relative(self, path) -> str:
        path = Path(path)
        if not path.is_absolute():
            path = Path.cwd() / path
        try:
            return path.resolve().relative_to(self.out.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def locate(self, stored: str) -> Path:
        """A run path of a step file (relative to ``out``; older files: as given on the command line,
        tried also as ``out`` + its last three parts, so a moved folder is still found)."""
        p = Path(stored)
        if not p.is_absolute() and (self.out / p).exists():
            return self.out / p
        if p.exists():
            return p
        return self.out / Path(*p.parts[-3:]) if len(p.parts) >= 3 else self.out / p

    def identity(self, checkpoint: Path) -> str | None:
        """The checkpoint's checksum (verified), ``legacy:<size>:<mtime>`` for one written before
        checksums, None when absent. A damaged checkpoint raises ChecksumError."""
        try:
            st = checkpoint.stat()
        except FileNotFoundError:
            return None
        key = (str(checkpoint.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._ids:
            state = read_checkpoint(checkpoint)
            self._ids[key] = state.get("checksum") or f"legacy:{st.st_size}:{st.st_mtime_ns}"
        return self._ids[key]

    def run_identity(self, run: Path) -> str | None:
        """A finished run's checkpoint identity; None when the run is not finished or has no checkpoint."""
        return self.identity(run / "checkpoint.pt") if (run / FINAL).is_file() else None


def _figures(result) -> list[str]:
    """The figure files (relative to ``out``) a step result names."""
    if not isinstance(result, dict):
        return []
    found = [result["figure"]] if isinstance(result.get("figure"), str) else []
    return found + [f for f in result.get("figures", []) if isinstance(f, str)]


def _stale(step: "Step", stored: dict, runs: _Runs, trained: list[Path]) -> str | None:
    """None when ``stored`` (a verified record with the step's settings) can stand; else why it
    must run again."""
    try:
        if step.training:
            outputs = stored.get("outputs")
            names = outputs if outputs is not None else (stored.get("result") or {}).get("runs", [])
            for name in names:
                current = runs.run_identity(runs.locate(name))
                if current is None:
                    return f"its run {name} is missing or unfinished"
                if outputs is not None and current != outputs[name]:
                    return f"its run {name} changed since"
            return None
        for name in _figures(stored.get("result")):
            if not (runs.out / name).is_file():
                return f"its figure {name} is missing"
        inputs = stored.get("inputs")
        if inputs is None:  # written before inputs were recorded: no older than the runs it may have read
            written = (runs.out / STEPS / f"{step.name}.json").stat().st_mtime_ns
            newer = [r for r in trained if (r / FINAL).is_file() and (r / FINAL).stat().st_mtime_ns > written]
            return f"run {runs.relative(newer[0])} was trained after it" if newer else None
        for name, identity in inputs.items():
            if runs.identity(runs.locate(name)) != identity:
                return f"its input {name} changed or is missing"
        return None
    except ChecksumError as exc:
        return f"a checkpoint it depends on is damaged ({exc})"


def _tuning_runs(tuning, variants) -> int:
    return 0 if tuning is None else sum(len(grid_points(tuning, v)) for v in variants) * tuning.seeds


def steps(plan: Plan, out, progress: bool = False, train_fn: Callable | None = None,
          log: Callable[[str], None] = print, jobs: int = 1) -> list[Step]:
    """The steps of ``plan`` in execution order (all training first); ``progress``: bars (a terminal);
    ``jobs``: runs of a training step trained side by side through ``train_fn``."""
    out = Path(out)
    result: list[Step] = []
    trained = []
    for dataset in plan.accuracy:
        ablation_here = dataset == plan.ablation and not plan.separate_ablation
        arms = plan.preset.arms + tuple(v for v in ("norm", "pixel") if ablation_here and v not in plan.preset.arms)
        trained.append((dataset, arms, plan.tuning))
    boxes = ("synthetic",) + tuple(b for b in plan.box_sets if b in TRAINED_BOX_SETS)  # their own models
    trained += [(b, ("none", "lateral"), None) for b in boxes if b not in plan.accuracy]
    for dataset, variants, tuning in trained:
        settings = {"fields": plan.training(dataset), "variants": variants, "seeds": plan.seeds}
        if tuning is not None:
            settings["tune"] = tuning.to_json()
        title = f"{'tune, then ' if tuning else ''}train {', '.join(variants)} on {dataset}"
        result.append(Step(f"train-{dataset}", title, settings,
                           lambda d=dataset, v=variants, t=tuning: training.train_runs(
                               plan, out, d, v, train_fn=train_fn, log=log, tuning=t, progress=progress,
                               jobs=jobs),
                           training=True, runs=len(variants) * plan.seeds + _tuning_runs(tuning, variants)))
    if plan.separate_ablation:
        result.append(Step(f"train-{plan.ablation}-ablation",
                           f"train {', '.join(ABLATION_VARIANTS)} on {plan.ablation} (Table 2, its own scale)",
                           {"fields": plan.training(plan.ablation, ablation=True), "variants": ABLATION_VARIANTS,
                            "seeds": plan.seeds},
                           lambda: training.train_runs(plan, out, plan.ablation, ABLATION_VARIANTS,
                                                       train_fn=train_fn, log=log, ablation=True,
                                                       progress=progress, jobs=jobs),
                           training=True, runs=len(ABLATION_VARIANTS) * plan.seeds))
    for box_set in boxes:
        result.append(Step(f"train-{box_set}-li-blur", f"train none with the LI background blur on {box_set}",
                           {"fields": plan.training(box_set), "seeds": plan.seeds},
                           lambda b=box_set: training.train_runs(plan, out, b, ("none",), augment="li-blur",
                                                                 train_fn=train_fn, log=log, progress=progress,
                                                                 jobs=jobs),
                           training=True, runs=plan.seeds))
    for experiment in EXPERIMENTS:
        result += experiment.steps(plan, out, progress)
    return result


def machine() -> dict:
    """What the results were measured on, and the code revision measuring them."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gradmask": source_revision()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _current_names(settings):
    """Stored step settings with old names read as today's (``"schedule": "onecycle"`` is "triangle"):
    a step stored before a rename is not run again for it."""
    fields = settings.get("fields") if isinstance(settings, dict) else None
    if isinstance(fields, dict) and fields.get("schedule") in SCHEDULE_ALIASES:
        return {**settings, "fields": {**fields, "schedule": SCHEDULE_ALIASES[fields["schedule"]]}}
    return settings


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def reproduce(plan: Plan, out, progress: bool = False, command: str | None = None,
              train_fn: Callable | None = None, log: Callable[[str], None] = print, jobs: int = 1,
              executor="local", setup: Callable[[], None] | None = None) -> dict:
    """Run (or resume) every step of ``plan`` in ``out``, then write ``report.md`` / ``report.html``.
    Training runs are counted (runs done / total, elapsed, ETA): a bar when ``progress`` and stderr is
    a terminal (with the engine's epoch bar and the evaluations' bars), else one ``log`` line per run.

    ``jobs`` > 1 trains that many runs of a training step at a time, each in its own process
    (:class:`gradmask.compare.jobs.ProcessTrainer`, unless ``train_fn`` is given); the measurements
    run in this process. ``executor``: where the training runs train without ``train_fn``: ``"local"``
    or a :class:`gradmask.compare.slurm.SlurmExecutor` (each run a Slurm job, ``jobs`` at a time, the
    books in ``{out}/slurm``; the measurements still run here, in order, once their runs are trained).
    ``setup``: a picklable function without arguments that every worker process (``jobs`` > 1) and
    every Slurm job calls before training (:func:`gradmask.compare.executor.open_trainer`): register
    there the plug-ins your runs name (augmentations, datasets, models).

    The folder is taken like a run folder (``<out>/.gradmask.lock``): a second ``reproduce`` on it is
    refused while this one runs, and the partial temporary files an interrupted one left below it are
    removed.

    Returns ``{"report": paths, "ran": [step names measured now], "skipped": [finished earlier]}``."""
    check_jobs(jobs)
    executor = check_executor(executor)
    if train_fn is None and (jobs > 1 or executor != "local"):
        with open_trainer(executor, jobs, plan.device, out, log, setup) as trainer:
            return reproduce(plan, out, progress, command, trainer, log, jobs)
    out = Path(out)
    main = is_main_process()
    lock = take_folder(out) if main else None    # one reproduce per folder (rank 0's under torchrun)
    try:
        return _reproduce_in(plan, out, main, progress, command, train_fn, log, jobs)
    finally:
        if lock is not None:
            lock.release()


def _reproduce_in(plan: Plan, out: Path, main: bool, progress: bool, command: str | None,
                  train_fn: Callable | None, log: Callable[[str], None], jobs: int) -> dict:

    out.mkdir(parents=True, exist_ok=True)
    state = read_state(out)
    state.update(preset=plan.preset.name, summary=plan.preset.summary, device=plan.device, seeds=plan.seeds,
                 data=dict(plan.data), machine=machine(), skipped=[list(s) for s in plan.skipped], plan=plan.to_json(),
                 command=command or " ".join(["gradmask"] + sys.argv[1:]))
    state.setdefault("steps", {})
    bars = progress and sys.stderr.isatty()
    if train_fn is None:
        train_fn = train
    counted: list[Callable] = []   # the counting train_fn, made once the steps (and so the total) are known

    def train_counted(config):
        return counted[0](config)

    all_steps = steps(plan, out, bars, train_counted, log, jobs)
    counter = RunProgress(sum(s.runs for s in all_steps), bar=bars and main, log=log if main else (lambda line: None),
                          jobs=jobs)
    counted.append(counter.wrap(train_fn))
    try:
        ran, done = _run_steps(all_steps, out, main, state, counter, log)
    finally:
        counter.close()
    if not main:
        return {"report": None, "ran": ran, "skipped": done}
    write_json(out / STATE, state)
    paths = write_report(out)
    log(f"wrote {paths['markdown']} and {paths['html']}")
    return {"report": paths, "ran": ran, "skipped": done}


def _run_steps(all_steps: list[Step], out: Path, main: bool, state: dict, counter: RunProgress,
               log: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Run the steps not finished earlier, storing each result; ``(ran, skipped)`` step names."""
    ran, done = [], []
    runs = _Runs(out)
    trained: list[Path] = []  # the run folders of the training steps so far
    for k, step in enumerate(all_steps, 1):
        if not main and not step.training:
            continue
        settings = _json_safe(step.settings)
        stored = read_step(out, step.name)
        why = "new" if stored is None else ("other settings" if _current_names(stored.get("settings")) != settings
                                            else _stale(step, stored, runs, trained))
        if why is None:
            log(f"[{k}/{len(all_steps)}] {step.title}: finished earlier")
            counter.skipped(step.runs)
            done.append(step.name)
            if step.training:
                trained += [runs.locate(r) for r in stored.get("outputs") or stored["result"].get("runs", [])]
            continue
        log(f"[{k}/{len(all_steps)}] {step.title} ..." + ("" if why in ("new", "other settings")
                                                         else f" (again: {why})"))
        start = time.perf_counter()
        with recording_reads() as reads:
            result = step.run()
        wall = time.perf_counter() - start
        if main:
            record = {"settings": settings, "result": _json_safe(stored_json(result)), "wall_seconds": wall,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "gradmask": source_revision()}
            if step.training:
                produced = [Path(r) for r in result.get("runs", [])]
                record["outputs"] = {runs.relative(r): runs.run_identity(r) for r in produced}
                trained += produced
            else:
                record["inputs"] = {runs.relative(p): identity for p, identity in reads.items()}
            write_step(out, step.name, record)
            state["steps"][step.name] = {"title": step.title, "wall_seconds": wall, "gradmask": record["gradmask"]}
            write_json(out / STATE, state)
        ran.append(step.name)
    return ran, done
