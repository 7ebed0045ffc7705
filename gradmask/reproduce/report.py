"""The reproduction report: for each table and figure of the paper, the paper's number beside ours,
the exact setting, a verdict computed from the numbers (:mod:`.verdict`) and the figures.

Drawn only from stored files (``reproduce.json``, ``steps/*.json``, the run directories), so it can
be rewritten at any time. Writes ``report.md``, a self-contained ``report.html`` (figures as data
URIs, no script, no network), ``results.json`` (every number shown) and ``verdicts.csv``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..compare import read_manifest
from ..util.durations import format_duration
from ..util.files import write_atomic, write_csv
from ..util.progress import counted
from ..util.reporting import render_html, render_markdown
from .experiments import EXPERIMENTS
from .sections import Section
from .store import StoredPlan, read_state

#: the paper's name of each arm; the report names arms by their ``--mask`` / ``--augment`` value everywhere
#: (tables, figures, verdicts) and shows these once, at the top
PAPER_NAMES = {"none": "normal training", "lateral": "Gradient Mask (the masked network)", "norm": "without LI",
               "pixel": "without minicolumn", "li-blur": "trained with the LI background blur (Algorithm 2)"}
NAMES_NOTE = ("**Names.** Arms are named by their `--mask` value: " + ", ".join(
    f"`{k}` = the paper's {v}" for k, v in PAPER_NAMES.items() if k != "li-blur") +
    f"; `none + li-blur` = the `none` model {PAPER_NAMES['li-blur']}. The paper's numbers stand beside ours "
    "only where ours are measured on the paper's data (else —; each section lists them under **Paper**).")


# ------------------------------------------------------------------------------ the report
def _counted(values: list[str], noun: str) -> str:
    """``"a (2 runs); b (1 run)"`` in first-seen order; ``"no run"`` for none."""
    return "; ".join(f"{v} ({counted(n, noun)})" for v, n in Counter(values).items()) or f"no {noun}"


def training_code(out: Path) -> str:
    """Which code revisions trained the run folders under ``out``, from their ``config.json``:
    ``"0.1.0+g1234abcd5678 (40 runs); 0.1.0 then 0.1.0+g1234abcd5678 (1 run)"`` (runs of gradmask
    before ``trained_by`` was recorded: their ``gradmask_version``); a folder its comparison's manifest
    does not list is not counted."""
    revisions = []
    manifests: dict[Path, object] = {}
    for path in sorted(Path(out).rglob("config.json")):
        folder = path.parent
        if folder.parent not in manifests:
            manifests[folder.parent] = read_manifest(folder.parent)
        listed = manifests[folder.parent]
        if listed is not None and folder.name not in {r.folder for r in listed.runs}:
            continue  # not a run of its comparison (a copy): the reports leave it out too
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(saved, dict) and "gradmask_version" in saved:
            revisions.append(" then ".join(saved.get("trained_by") or [str(saved["gradmask_version"])]))
    return _counted(revisions, "run")


def measuring_code(state: dict) -> str:
    """Which code revisions measured the stored steps of ``state`` (reproduce.json): ``"0.1.0+g1234abcd5678
    (7 steps)"``; steps stored before revisions were recorded count as ``"unrecorded"``."""
    return _counted([str(record.get("gradmask") or "unrecorded") if isinstance(record, dict) else "unrecorded"
                     for record in (state.get("steps") or {}).values()], "step")


def sections(out: Path, state: dict) -> list[Section]:
    """The report's sections from the stored steps of ``out`` (``state``: its reproduce.json),
    each experiment's in report order, following the stored plan; an experiment whose step has not
    run yet is left out."""
    plan = StoredPlan.read(out, state)
    return [s for experiment in EXPERIMENTS for s in experiment.sections(out, state, plan)]


def write_report(out) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.json`` and ``verdicts.csv`` in ``out``."""
    out = Path(out)
    state = read_state(out)
    parts = sections(out, state)
    m = state.get("machine", {})
    machine = f"{m.get('cpu_count', '?')} CPU cores ({m.get('cpu', '?')})" \
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") \
        + f", Python {m.get('python', '?')}, torch {m.get('torch', '?')}"
    total = sum(v.get("wall_seconds", 0.0) for v in state.get("steps", {}).values())
    blocks: list[tuple] = [("h1", f"Reproducing Gradient Mask: preset {state.get('preset', '?')}"),
                           ("p", f"Command: `{state.get('command', '?')}`"),
                           ("p", f"Preset: {state.get('summary', '?')}. Device: {state.get('device', '?')}; "
                                 f"machine: {machine}; seeds: {state.get('seeds', '?')}; measured wall time "
                                 f"{format_duration(total, 'report')} (of the steps run by the last invocations)."),
                           ("p", f"Code: this report by gradmask {m.get('gradmask', '?')}; the runs were trained by "
                                 f"{training_code(out)}; the measurements were made by {measuring_code(state)}."),
                           ("p", "Each verdict is computed from the numbers: **holds** when the 95% confidence "
                                 "interval of the tested difference lies entirely on the paper's side, **does not "
                                 "hold** when it lies entirely on the other side, **not established at this scale** "
                                 "otherwise. Accuracy comparisons use Welch's t over seeds.")]
    rows = [[p.claim.title, p.claim.claim, p.verdict, "; ".join(f"{what}: {v}" for what, v in p.verdicts), p.budget,
             "; ".join(p.warnings) or "—"] for p in parts]
    blocks.append(("p", NAMES_NOTE))
    blocks.append(("h2", "Summary"))
    blocks.append(("table", ["paper", "claim", "verdict", "tests", "budget", "warnings"], rows,
                   ["l", "l", "l", "l", "l", "l"]))
    if state.get("skipped"):
        blocks.append(("p", "Not run: " + "; ".join(f"{what} ({why})" for what, why in state["skipped"]) + "."))
    for p in parts:
        blocks += p.blocks
    md, page = render_markdown(blocks), render_html(blocks, out)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "results.json",
             "csv": out / "verdicts.csv"}
    results = {"preset": state.get("preset"), "machine": m, "sections": {
        p.claim.key: {"title": p.claim.title, "verdict": p.verdict, "tests": p.verdicts, "budget": p.budget,
                      "warnings": p.warnings, "numbers": p.numbers}
        for p in parts}}
    for key, text in (("markdown", md), ("html", page), ("json", json.dumps(results, indent=1, default=str) + "\n")):
        write_atomic(paths[key], text)
    write_csv(paths["csv"], ["section", "test", "verdict", "budget"],
              ([p.claim.key, what, v, p.budget] for p in parts for what, v in p.verdicts))
    return paths


__all__ = ["NAMES_NOTE", "PAPER_NAMES", "sections", "write_report"]
