"""The interface every reproduce experiment implements."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..presets import Plan
from ..sections import Section
from ..store import Step, StoredPlan


class Experiment:
    """One table or figure of the paper (or two drawn from one measurement): ``steps`` are the
    measurements it needs, each with its settings from the plan (none for a table read from the
    training runs); ``sections`` its part of the report, read only from the stored steps and runs
    (none while nothing of it is measured)."""

    def steps(self, plan: Plan, out: Path, progress: bool) -> list[Step]:
        return []

    def sections(self, out: Path, state: dict, plan: StoredPlan) -> list[Section]:
        raise NotImplementedError


def evaluation_settings(plan: Plan) -> dict:
    """The settings of a measurement on the trained models: seeds and the preset's evaluation sizes."""
    return {"seeds": plan.seeds, "evaluation": dataclasses.asdict(plan.preset.evaluation)}
