"""``reproduce(plan, out)``: run every experiment the plan allows, resuming what already finished,
then write the report.

Each step's result goes to ``{out}/steps/{name}.json`` (atomically) with the settings it was
measured under; a step whose file exists with the same settings is skipped, so re-running the same
command after an interruption continues where it stopped (training runs resume from their last
epoch checkpoint). All training comes first; under ``torchrun`` every process trains (DDP) and only
rank 0 evaluates and writes the report.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..files import write_atomic
from ..train.distributed import is_main_process
from . import experiments
from .presets import ABLATION_VARIANTS, Plan

STEPS = "steps"
STATE = "reproduce.json"


@dataclass
class Step:
    name: str
    title: str
    settings: dict
    run: Callable[[], dict]
    training: bool = False


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def read_state(out) -> dict:
    """The run's ``reproduce.json`` (preset, device, machine, command, step wall times), or ``{}``."""
    path = Path(out) / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_step(out, name: str) -> dict | None:
    """The stored record of step ``name`` (``{"settings", "result", "wall_seconds", ...}``) or None."""
    path = Path(out) / STEPS / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a damaged record is measured again


def steps(plan: Plan, out, progress: bool = False, train_fn: Callable | None = None,
          log: Callable[[str], None] = print) -> list[Step]:
    """The steps of ``plan`` in execution order (all training first)."""
    out = Path(out)
    ev = dataclasses.asdict(plan.preset.evaluation)
    result: list[Step] = []
    trained = []
    for dataset in plan.accuracy:
        ablation_here = dataset == plan.ablation and not plan.separate_ablation
        trained.append((dataset, ("none", "lateral") + (("norm", "pixel") if ablation_here else ()), plan.tuning))
    if "synthetic" not in plan.accuracy:
        trained.append(("synthetic", ("none", "lateral"), None))
    for dataset, variants, tuning in trained:
        settings = {"fields": plan.training(dataset), "variants": variants, "seeds": plan.seeds}
        if tuning is not None:
            settings["tune"] = tuning.to_json()
        title = f"{'tune, then ' if tuning else ''}train {', '.join(variants)} on {dataset}"
        result.append(Step(f"train-{dataset}", title, settings,
                           lambda d=dataset, v=variants, t=tuning: experiments.train_runs(
                               plan, out, d, v, train_fn=train_fn, log=log, tuning=t), training=True))
    if plan.separate_ablation:
        result.append(Step(f"train-{plan.ablation}-ablation",
                           f"train {', '.join(ABLATION_VARIANTS)} on {plan.ablation} (Table 2, its own scale)",
                           {"fields": plan.training(plan.ablation, ablation=True), "variants": ABLATION_VARIANTS,
                            "seeds": plan.seeds},
                           lambda: experiments.train_runs(plan, out, plan.ablation, ABLATION_VARIANTS,
                                                          train_fn=train_fn, log=log, ablation=True), training=True))
    result.append(Step("train-synthetic-li-blur", "train none with the LI background blur on synthetic",
                       {"fields": plan.training("synthetic"), "seeds": plan.seeds},
                       lambda: experiments.train_runs(plan, out, "synthetic", ("none",), augment="li-blur",
                                                      train_fn=train_fn, log=log), training=True))
    common = {"seeds": plan.seeds, "evaluation": ev}
    result.append(Step("robustness", f"pruning and FGSM on {plan.robustness} (Figures 5, 6)",
                       dict(common, dataset=plan.robustness),
                       lambda: experiments.robustness(plan, out, progress)))
    for box_set in ("synthetic",) + tuple(plan.box_sets):
        result.append(Step(f"saliency-{box_set}", f"box IoU of the saliency maps on {box_set} (Table 3)",
                           dict(common, box_set=box_set),
                           lambda b=box_set: experiments.saliency(plan, out, b, progress)))
    result.append(Step("sanity", "cascading randomization (Appendix A)", common,
                       lambda: experiments.sanity(plan, out, progress)))
    result.append(Step("blur", "accuracy with a blurred background (Figure 10)", common,
                       lambda: experiments.blur(plan, out, progress)))
    return result


def machine() -> dict:
    """What the results were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def reproduce(plan: Plan, out, progress: bool = False, command: str | None = None,
              train_fn: Callable | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every step of ``plan`` in ``out``, then write ``report.md`` / ``report.html``.

    Returns ``{"report": paths, "ran": [step names measured now], "skipped": [finished earlier]}``."""
    from .report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    state_path = out / STATE
    state = read_state(out)
    state.update(preset=plan.preset.name, summary=plan.preset.summary, device=plan.device, seeds=plan.seeds,
                 data=dict(plan.data), machine=machine(), skipped=[list(s) for s in plan.skipped],
                 command=command or " ".join(["gradmask"] + sys.argv[1:]))
    state.setdefault("steps", {})
    ran, done = [], []
    all_steps = steps(plan, out, progress, train_fn, log)
    for k, step in enumerate(all_steps, 1):
        if not main and not step.training:
            continue
        settings = _json_safe(step.settings)
        stored = read_step(out, step.name)
        if stored is not None and stored.get("settings") == settings:
            log(f"[{k}/{len(all_steps)}] {step.title}: finished earlier")
            done.append(step.name)
            continue
        log(f"[{k}/{len(all_steps)}] {step.title} ...")
        start = time.perf_counter()
        result = step.run()
        wall = time.perf_counter() - start
        if main:
            _write_json(out / STEPS / f"{step.name}.json",
                        {"settings": settings, "result": _json_safe(result), "wall_seconds": wall,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            state["steps"][step.name] = {"title": step.title, "wall_seconds": wall}
            _write_json(state_path, state)
        ran.append(step.name)
    if not main:
        return {"report": None, "ran": ran, "skipped": done}
    _write_json(state_path, state)
    paths = write_report(out)
    log(f"wrote {paths['markdown']} and {paths['html']}")
    return {"report": paths, "ran": ran, "skipped": done}
