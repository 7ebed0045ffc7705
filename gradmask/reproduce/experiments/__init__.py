"""The paper's experiments, one module each: every module defines ``EXPERIMENT``, an
:class:`~.base.Experiment` (its measurement steps with their settings from the plan, run -> a
stored result, and its report sections). :data:`EXPERIMENTS` lists them in report order; the runner
and the report iterate over it, so adding an experiment is one new module and one line here.
"""
from . import figure5_6, figure7, figure10, sanity, table1, table2, table3
from .base import Experiment

EXPERIMENTS: tuple[Experiment, ...] = tuple(m.EXPERIMENT for m in (table1, table2, table3, sanity, figure5_6,
                                                                   figure7, figure10))

__all__ = ["EXPERIMENTS", "Experiment"]
