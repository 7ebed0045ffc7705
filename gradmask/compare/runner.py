"""Train every mask variant with several seeds from one base config, then write the report.

Runs go to ``{out}/{variant}-seed{seed}`` and always use ``resume=True``: a finished run returns at
once and a killed one continues from its checkpoint, so re-running the same ``compare`` finishes a
comparison that was interrupted. Runs are ordered seed by seed (none-0, lateral-0, none-1, ...) so an
interrupted comparison has paired runs for every seed it reached.

With ``tune=`` each variant is first tuned on a validation split (:mod:`.tuning`: short runs in
``{out}/tune/``, the test split never read), and its final runs use its chosen grid point.

``compare`` takes ``out`` like a run folder (``.gradmask.lock``, partial temporary files below it
removed) and records its runs in ``{out}/manifest.json`` (:mod:`.manifest`): the report reads
those, not every folder it finds.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from ..train import train
from ..train.config import RESUME_FREE_FIELDS, TrainConfig
from ..train.distributed import is_main_process
from ..train.records import FINAL, read_final
from ..train.rundir import RunDir, take_folder
from .arms import arm_changes, parse_arm
from .executor import check_executor, open_trainer
from .jobs import check_jobs, train_all
from .manifest import record_finals, record_runs
from .report import VARIANTS, write_report
from .tuning import (
    DEFAULT_VAL_FRACTION,
    checked_replace,
    grid_points,
    make_tuning,
    run_tuning,
    tuning_checksum,
    tuning_plan,
)


def check_variants(variants: Iterable[str] | str) -> tuple[str, ...]:
    """Validate a sequence (or a comma-separated string) of arms (:mod:`.arms`: a mask mode, or a mode
    with overrides such as ``lateral@sigma=1``); returns their canonical names as a tuple."""
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if not tuple(variants):
        raise ValueError(f"variants (--variants) is empty; accepted: arms among {', '.join(VARIANTS)}, each "
                         f"optionally with @FIELD=VALUE overrides (e.g. lateral@sigma=1)")
    variants = tuple(parse_arm(v).name for v in variants)
    duplicates = sorted({v for v in variants if variants.count(v) > 1})
    if duplicates:
        raise ValueError(f"variants (--variants) lists {', '.join(duplicates)} more than once")
    return variants


def check_seeds(seeds: Any, seed_offset: Any = 0) -> tuple[int, int]:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds (--seeds) must be an integer >= 1, got {seeds!r}")
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
        raise ValueError(f"seed_offset (--seed-offset) must be an integer >= 0, got {seed_offset!r}")
    return seeds, seed_offset


def run_dir(out: str | os.PathLike, variant: str, seed: int) -> str:
    """The folder of one run of a comparison: ``{out}/{variant}-seed{seed}``."""
    return f"{os.fspath(out)}/{variant}-seed{seed}"


def run_order(variants: Iterable[str] = ("none", "lateral"), seeds: int = 3, out: str | os.PathLike = "runs/compare",
         seed_offset: int = 0) -> list[tuple[str, int, str]]:
    """``(variant, seed, run dir)`` for every run, in training order (seed by seed)."""
    variants = check_variants(variants)
    seeds, seed_offset = check_seeds(seeds, seed_offset)
    return [(v, s, run_dir(out, v, s)) for s in range(seed_offset, seed_offset + seeds) for v in variants]


def _status(path: str) -> str:
    p = Path(path)
    if (p / "final.json").is_file():
        return "finished earlier"
    metrics = p / "metrics.jsonl"
    if metrics.is_file():
        done = sum(1 for line in metrics.read_text().splitlines() if line.strip())
        if done:
            return f"resuming after {done} epoch{'s' if done != 1 else ''}"
    return "new"


def changed_runs(base_config, runs: list[tuple[str, int, str]], tuned: Iterable[str] = ()) -> dict[str, dict]:
    """``{run dir: {field: (run's value, requested value)}}`` for the runs already in their folders
    whose settings differ from ``base_config`` (fields ``tuned`` aside: a tuned point sets them);
    ``{}`` when ``base_config`` is not a TrainConfig (a stand-in whose ``train_fn`` keeps its own books)."""
    if not isinstance(base_config, TrainConfig):
        return {}
    ignore = RESUME_FREE_FIELDS + tuple(tuned)
    changed = {}
    for variant, seed, path in runs:
        requested = base_config.replace(**arm_changes(variant), seed=seed, out=path)
        diff = RunDir(path).differences(requested, ignore)
        if diff:
            changed[path] = diff
    return changed


def compare(base_config, variants: Iterable[str] = ("none", "lateral"), seeds: int = 3,
            out: str | os.PathLike = "runs/compare", seed_offset: int = 0,
            train_fn: Callable | None = None, log: Callable[[str], Any] | None = print,
            tune: Optional[Mapping[str, Iterable]] = None, tune_epochs: Optional[int] = None, tune_seeds: int = 1,
            val_fraction: float = DEFAULT_VAL_FRACTION, jobs: int = 1, executor="local",
            setup: Optional[Callable[[], None]] = None) -> list[Path]:
    """Train ``variants`` x ``seeds`` runs from ``base_config``, record them in ``out``'s manifest
    and write the report in ``out``, which is taken like a run folder for the duration (a second
    ``compare`` on it is refused).

    Each run is ``train_fn(dataclasses.replace(base_config, **arm_changes(variant), seed=s,
    out=f"{out}/{variant}-seed{s}", resume=True))`` (a variant is an arm, :mod:`.arms`: ``"lateral"``,
    or a mode with overrides such as ``"lateral@sigma=1"``) with ``s`` in ``seed_offset .. seed_offset+seeds-1``.
    ``train_fn`` defaults to :func:`gradmask.train.train`. ``log`` gets one line per run (``None``:
    silent). Returns the run directories in training order. Runs already in ``out`` whose settings
    differ from the request are refused before anything trains (``ValueError`` naming them and the
    fields), or trained again from scratch when ``base_config.overwrite`` (the others resume).

    ``tune={"lr": [0.05, 0.1, 0.2], ...}`` (a grid over ``TrainConfig`` fields) first tunes each
    variant on a validation split (``val_fraction`` of the training images; ``tune_seeds`` runs of
    ``tune_epochs`` epochs per grid point, see :mod:`gradmask.compare.tuning`), then trains each
    variant's final runs at its chosen point. Every config is checked before anything trains.

    ``jobs`` > 1 trains that many runs at a time (tuning runs, then final runs, each started in
    training order), each through ``train_fn`` called from its own thread: pass a
    :class:`gradmask.compare.jobs.ProcessTrainer` (or a wrapper of one) to train them in separate
    processes; without ``train_fn`` one is made for ``jobs`` workers.

    ``executor``: where the runs train without ``train_fn``: ``"local"`` (above) or a
    :class:`gradmask.compare.slurm.SlurmExecutor` (each run a Slurm job, ``jobs`` at a time; its books
    in ``{out}/slurm``), see :mod:`gradmask.compare.executor`.

    ``setup``: a picklable function without arguments that every worker process (``jobs`` > 1) and
    every Slurm job calls before training (:func:`gradmask.compare.executor.open_trainer`): register
    there the plug-ins your runs name (augmentations, datasets, models).
    """
    check_jobs(jobs)
    executor = check_executor(executor)
    runs = run_order(variants, seeds, out, seed_offset)
    variants = check_variants(variants)
    tuning = None if tune is None else make_tuning(tune, tune_epochs, tune_seeds, val_fraction)
    if tuning is not None:
        for variant in variants:  # a field both tuned and set by an arm: which would the runs use?
            both = sorted(set(tuning.grid) & {k for k, _ in parse_arm(variant).overrides})
            if both:
                raise ValueError(f"arm {variant!r} sets {', '.join(both)}, which tune (--tune) also sweeps; "
                                 f"tune other fields or drop the override")
        # every config, tuning and final, is built (validated) before anything trains
        tuning_plan(base_config, variants, tuning, out, seed_offset)
        for variant in variants:
            for point in grid_points(tuning, variant):
                checked_replace(base_config, {**point, **arm_changes(variant)}, "tune")
    main = is_main_process()  # under torchrun every process trains, one owns the folder and writes there
    lock = take_folder(Path(out)) if main else None
    try:
        return _compare_in(base_config, variants, runs, out, seed_offset, train_fn, log, tuning, jobs, main,
                           executor, setup)
    finally:
        if lock is not None:
            lock.release()


def _compare_in(base_config, variants: tuple, runs: list, out, seed_offset: int, train_fn: Callable | None,
                log: Callable[[str], Any] | None, tuning, jobs: int, main: bool, executor,
                setup: Optional[Callable[[], None]]) -> list[Path]:
    """:func:`compare` in its taken folder."""
    # runs already there with other settings: refused before anything trains, or (overwrite) trained again
    changed = changed_runs(base_config, runs, tuning.grid if tuning is not None else ())
    if changed and not getattr(base_config, "overwrite", False):
        raise ValueError(f"{len(changed)} run(s) in {out} were trained with other settings than requested: "
                         + "; ".join(f"{Path(p).name}: " + ", ".join(f"{k} (run {a!r}, now {b!r})"
                                                                      for k, (a, b) in d.items())
                                     for p, d in changed.items())
                         + "; use the settings they were trained with, choose another out, or pass "
                           "overwrite=True (--overwrite) to train those runs again")
    if train_fn is None and (jobs > 1 or executor != "local"):
        with open_trainer(executor, jobs, str(getattr(base_config, "device", "cpu")), out, log, setup) as trainer:
            return _compare_in(base_config, variants, runs, out, seed_offset, trainer, log, tuning, jobs, main,
                               executor, setup)
    if main:  # the comparison's runs are those its manifest lists: these join it before they train
        record_runs(out, runs, retrained=changed)
    if train_fn is None:
        train_fn = train
    chosen: dict[str, dict] = {}
    if tuning is not None:
        # tuning runs resume; one of other settings is refused by the engine, naming the fields
        tuning_base = dataclasses.replace(base_config, overwrite=False) if getattr(base_config, "overwrite", False) \
            else base_config
        chosen = run_tuning(tuning_base, variants, tuning, out, seed_offset, train_fn, log, jobs).chosen
    configs = []
    for variant, seed, path in runs:
        changes = {**chosen.get(variant, {}), **arm_changes(variant), "seed": seed, "out": path,
                   "resume": path not in changed}
        if path in changed or getattr(base_config, "overwrite", False):
            changes["overwrite"] = path in changed
        configs.append(checked_replace(base_config, changes, "compare"))

    def announce(k: int, config) -> None:
        variant, seed, path = runs[k - 1]
        point = chosen.get(variant, {})
        if log is not None:
            at = f" at {', '.join(f'{n}={v!r}' for n, v in point.items())}" if point else ""
            status = f"trained again: {', '.join(changed[path])} changed" if path in changed else _status(path)
            log(f"[{k}/{len(runs)}] {variant} seed {seed}{at} -> {path} ({status})")

    train_all(train_fn, configs, jobs, before=announce)
    if main:
        finals = {(variant, seed): _final_checksum(path) for variant, seed, path in runs}
        record_finals(out, finals, tuning_checksum(out) if tuning is not None else None)
        write_report(out)
    return [Path(path) for _, _, path in runs]


def _final_checksum(path: str) -> str | None:
    """The checksum of run ``path``'s ``final.json`` (verified); None when unfinished or unverified."""
    final = Path(path) / FINAL
    return read_final(final, warn=False)[1] if final.is_file() else None
