"""The registry of ``gradmask`` sub-commands and the options several commands share (mask, executor,
device). It holds no commands: each command module registers itself with :func:`register` when
imported, and :mod:`gradmask.cli` imports every command module and builds the parser."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..compare.executor import EXECUTORS
from ..compare.slurm import SlurmExecutor
from ..settings import DEFAULTS, MASK_MODES, MaskSettings
from ..util.device import is_device_name


@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    module: str  # the command module that registered it


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Decorator: ``run(args)`` becomes ``gradmask NAME``, its options set by ``configure``."""
    def wrap(run):
        COMMANDS[name] = Command(name, help, configure, run, run.__module__)
        return run
    return wrap


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, written one way: ``(default: X)``, generated here
    and nowhere else (help texts never state their default). ``X`` is the option's default, or the
    text given with :func:`show_default` for a None / suppressed default that the command fills in
    (the preset's value, "inferred", ...); flags (``store_true``) and options without a default show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace(" (default: %(default)s)", "")  # BooleanOptionalAction's own (3.11)
        shown = default_text(action)
        if shown is None:
            return text
        shown = shown.replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def show_default(action: argparse.Action, text: str) -> argparse.Action:
    """``--help`` shows ``text`` as the default of ``action`` (the return value of ``add_argument``):
    for options whose default is None or suppressed and filled in by the command."""
    action.shown_default = text  # type: ignore[attr-defined]
    return action


def default_text(action: argparse.Action) -> Optional[str]:
    """What ``(default: X)`` shows for ``action``; None: nothing (a positional, a flag, no default)."""
    if not action.option_strings or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                                        argparse._HelpAction, argparse._VersionAction)):
        return None
    if hasattr(action, "shown_default"):
        return action.shown_default
    if action.default is None or action.default is argparse.SUPPRESS or action.default == []:
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if action.default else "off"
    return _shown(action.default)


def kernel_size_argument(text: str) -> Optional[int]:
    """``--kernel-size``: an odd integer >= 1, or 'full' (None: the 2*ceil(3 sigma)+1 window)."""
    if text == "full":
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"--kernel-size must be an odd integer >= 1 or 'full', got {text!r}")
    return value


def _setting_argument(name: str, kind: type) -> Callable[[str], Any]:
    """An argparse type for MaskSettings field ``name``: parsed, then validated by MaskSettings, its
    error naming the option (``--inhibition-rate``), not the field."""
    flag = "--" + name.replace("_", "-")

    def parse(text: str):
        try:
            value = kind(text)
            MaskSettings(**{name: value})
        except ValueError as exc:
            kind_name = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            message = str(exc) if str(exc).startswith(name) else f"{name} must be {kind_name}, got {text!r}"
            raise argparse.ArgumentTypeError(message.replace(name, flag, 1)) from None
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _shown(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def add_mask_arguments(parser: argparse.ArgumentParser, defaults: Any = None, suppress: bool = False) -> None:
    """The GradientMask options shared by every command that trains or masks, generated from the
    :class:`gradmask.MaskSettings` fields (with their help text) plus ``--targets`` / ``--skip-last``.

    ``defaults``: flat values of ``mask``, the MaskSettings fields, ``targets`` and ``skip_last`` (a
    ``TrainConfig.to_dict()``; ``groups`` None: the model's, :func:`gradmask.models.model_groups`); None: the
    mask's own defaults. ``suppress``: an option not given stays out
    of the namespace (the caller's preset / defaults apply); the help still shows ``defaults``.
    """
    values = {**dataclasses.asdict(DEFAULTS), "mask": DEFAULTS.mode, "targets": None, "skip_last": 2}
    if defaults is not None:
        values.update({name: defaults[name] for name in values if name != "mode"})
    group = parser.add_argument_group("gradient mask")

    def add(flag: str, name: str, help: str, **kwargs) -> None:
        shown = _shown(values[name])
        if values[name] is None:
            shown = {"kernel_size": "full", "targets": "every residual block but the last --skip-last",
                     "groups": "the model's: 16 on resnet18/34/50 (the paper) and unregistered models, 4 on "
                               "resnet18_narrow, vit_tiny and the micro models"}[name]
        default = argparse.SUPPRESS if suppress else values[name]
        show_default(group.add_argument(flag, dest=name, default=default, help=help, **kwargs), shown)

    mode = next(f for f in dataclasses.fields(MaskSettings) if f.name == "mode")
    add("--mask", "mask", f"none (plain backprop), or the mask mode: {mode.metadata['help']}", choices=MASK_MODES)
    for f in dataclasses.fields(MaskSettings):
        if f.name == "mode":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("choices"):
            add(flag, f.name, f.metadata["help"], choices=f.metadata["choices"])
        elif f.name == "kernel_size":
            add(flag, f.name, f.metadata["help"], type=kernel_size_argument, metavar="{odd N,full}")
        else:
            add(flag, f.name, f.metadata["help"], type=_setting_argument(f.name, type(getattr(DEFAULTS, f.name))))
    add("--targets", "targets", "comma-separated module names / patterns to mask")
    add("--skip-last", "skip_last", "without --targets: every residual block but the last N", type=int)


def device_argument(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (the form :func:`gradmask.util.device.resolve_device` takes)."""
    if is_device_name(text):
        return text
    raise argparse.ArgumentTypeError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")


def add_executor_arguments(parser) -> None:
    """``--executor`` and the ``--slurm-*`` options of ``compare`` and ``reproduce``."""
    group = parser.add_argument_group("executor (where the runs train; docs/slurm.md)")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: on this machine, --jobs at a time; slurm: each run a Slurm job "
                            "(submitit, pip install 'gradmask[slurm]'), --jobs at a time")
    show_default(group.add_argument("--slurm-partition", default=None, help="partition of the jobs"),
                 "the cluster's")
    group.add_argument("--slurm-time", default="24:00:00",
                       help="time limit of one job, minutes or [D-]HH:MM:SS; a run that needs "
                            "longer is requeued from its checkpoint (at most 3 times)")
    group.add_argument("--slurm-nodes", type=int, default=1, help="nodes per run")
    group.add_argument("--slurm-gpus-per-node", type=int, default=0, help="GPUs per node of a run")
    show_default(group.add_argument("--slurm-tasks-per-node", type=int, default=None,
                                    help="processes (DDP ranks) per node of a run"), "one per GPU, at least 1")
    show_default(group.add_argument("--slurm-cpus-per-task", type=int, default=None,
                                    help="CPUs per process, also its torch threads"), "the cluster's")
    show_default(group.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per node of a run, GB"),
                 "the cluster's")
    group.add_argument("--slurm-sbatch", action="append", default=[], metavar="--OPTION=VALUE",
                       help="a further sbatch option, repeatable (e.g. --slurm-sbatch=--account=NAME)")


def executor_from_args(args) -> "str | SlurmExecutor":
    """``"local"`` or the :class:`SlurmExecutor` of the options; ``--slurm-*`` options without
    ``--executor slurm`` are refused."""
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time, "nodes": args.slurm_nodes,
             "gpus_per_node": args.slurm_gpus_per_node, "tasks_per_node": args.slurm_tasks_per_node,
             "cpus_per_task": args.slurm_cpus_per_task, "mem_gb": args.slurm_mem_gb,
             "sbatch_args": tuple(args.slurm_sbatch)}
    if args.executor == "local":
        defaults = {"partition": None, "time": "24:00:00", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None,
                    "cpus_per_task": None, "mem_gb": None, "sbatch_args": ()}
        given = [f"--slurm-{k.replace('_', '-')}" for k, v in slurm.items() if v != defaults[k]]
        if given:
            raise ValueError(f"{', '.join(given)} need --executor slurm")
        return "local"
    return SlurmExecutor(**slurm)
