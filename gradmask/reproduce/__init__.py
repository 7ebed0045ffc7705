"""``gradmask reproduce``: the paper's experiments at a chosen scale, resumable, with a report that
puts the paper's numbers beside ours and a computed verdict for each claim.

- :mod:`.paper`: the paper's numbers and claims; :mod:`.verdict`: the verdict rule;
- :mod:`.presets`: ``quick`` / ``cifar`` / ``cifar-full`` / ``paper`` and :func:`make_plan` (which
  data serves which experiment);
- :mod:`.experiments`: one module per table / figure, each an :class:`~.experiments.base.Experiment`
  (its measurement steps with settings from the plan, and its report sections);
- :mod:`.runs`: the training runs; :mod:`.store`: step records, ``reproduce.json`` and the stored
  plan; :mod:`.sections`: the pieces every section shares; :mod:`.runner`: resumable steps;
  :mod:`.report`: ``report.md`` / ``report.html`` / ``results.json`` / ``verdicts.csv``.
"""
from .presets import PRESETS, Plan, Preset, make_plan, parse_data
from .report import write_report
from .runner import reproduce

__all__ = ["PRESETS", "Plan", "Preset", "make_plan", "parse_data", "reproduce", "write_report"]
