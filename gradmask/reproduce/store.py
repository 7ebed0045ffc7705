"""What ``reproduce`` stores and the report reads: step records (``{out}/steps/{name}.json``,
checksummed), the run's ``reproduce.json`` and the plan stored in it (:class:`StoredPlan`), and
:class:`Step`, one resumable unit of work. A leaf of the reproduce package."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..util.files import json_digest, verify, with_checksum, write_atomic
from .presets import ACCURACY_DATASETS, figure7_dataset

STEPS = "steps"
STATE = "reproduce.json"


@dataclass
class Step:
    """One resumable unit: ``name`` (its record's file), ``title`` (the log's), ``settings`` (a
    changed setting runs it again), ``run`` (-> a JSON-able result), ``training`` / ``runs``."""
    name: str
    title: str
    settings: dict
    run: Callable[[], object]
    training: bool = False
    runs: int = 0            # training runs of a training step (tuning runs included)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def stored_json(result):
    """A step's result as stored: a dataclass result's fields (``dataclasses.asdict``, the same JSON as
    the dicts of earlier versions, so their stored results stay readable), anything else as is."""
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result


def read_state(out) -> dict:
    """The run's ``reproduce.json`` (preset, device, machine, command, step wall times), or ``{}``."""
    path = Path(out) / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_step(out, name: str) -> dict | None:
    """The stored record of step ``name`` (``{"settings", "result", "wall_seconds", ...}``) or None.
    A record whose content does not match its checksum raises :class:`gradmask.util.files.ChecksumError`
    naming the file; one that is not JSON (a damaged write) counts as absent (measured again)."""
    path = Path(out) / STEPS / f"{name}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a damaged record is measured again
    verify(record, path, "step result", json_digest)
    return record


def write_step(out, name: str, record: dict) -> Path:
    """Store step ``name``'s record (JSON values) with its checksum, atomically."""
    path = Path(out) / STEPS / f"{name}.json"
    write_json(path, with_checksum(record, json_digest))
    return path


@dataclass(frozen=True)
class StoredPlan:
    """The plan's decisions the report follows (``reproduce.json``'s ``plan``): Table 1's datasets,
    Table 2's dataset (and whether it has its own runs), Figure 7's dataset, Table 3's box sets."""
    accuracy: tuple
    ablation: Optional[str]
    separate_ablation: bool
    gsnr: Optional[str]
    table3_box_sets: tuple

    @classmethod
    def read(cls, out: Path, state: dict) -> "StoredPlan":
        """The stored plan, or (a run written before plans were stored) one derived from the step files."""
        if "plan" in state:
            p = state["plan"]
            return cls(tuple(p["accuracy"]), p["ablation"], bool(p["separate_ablation"]), p["gsnr"],
                       tuple(p["table3_box_sets"]))
        trained = {d: rec for d in ACCURACY_DATASETS if (rec := read_step(out, f"train-{d}"))}
        if state.get("preset") != "quick" and len(trained) > 1:
            trained.pop("synthetic", None)   # synthetic runs only serve the box experiments
        separate = next((d for d in ACCURACY_DATASETS if read_step(out, f"train-{d}-ablation")), None)
        ablation = separate or next((d for d in trained if "norm" in trained[d]["settings"]["variants"]), None)
        box_sets = sorted((p.stem.split("-", 1)[1] for p in (out / STEPS).glob("saliency-*.json")),
                          key=lambda b: (b != "synthetic", b))
        return cls(tuple(trained), ablation, separate is not None, figure7_dataset(list(trained)), tuple(box_sets))
