"""The training runs of ``reproduce``: where they live and how they are trained (through
:func:`gradmask.compare.compare`), and the box images the saliency experiments read.

Run directories are ``{out}/{dataset}/runs/{variant}-seed{s}`` (Tables 1-2, Figures 5-7; the box sets'
models of Table 3 / Figure 10), ``{out}/{dataset}/ablation/...`` (Table 2 at its own scale) and
``{out}/{box set}/li-blur/none-seed{s}`` (Figure 10, trained with Algorithm 2's augmentation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..compare import Tuning, compare, read_tuning, run_dir
from ..data import render_options
from ..saliency.boxes import load_box_dataset
from ..train import TrainConfig
from ..train.checkpoint import read_checkpoint, trained_image_size
from .presets import TRAINED_BOX_SETS, Plan

FIGURES = "figures"


def runs_dir(out, dataset: str, augment: str | None = None, ablation: bool = False) -> Path:
    """Folder of a dataset's compared runs; ``augment="li-blur"``: the Figure 10 runs; ``ablation``:
    Table 2's runs when they have their own scale."""
    return Path(out) / dataset / ("li-blur" if augment == "li-blur" else "ablation" if ablation else "runs")


def run_path(out, dataset: str, variant: str, seed: int, augment: str | None = None) -> Path:
    return Path(run_dir(runs_dir(out, dataset, augment), variant, seed))


def train_runs(plan: Plan, out, dataset: str, variants: Iterable[str], augment: str | None = None,
               train_fn: Callable | None = None, log: Callable[[str], None] = print,
               tuning: Tuning | None = None, ablation: bool = False, progress: bool = False,
               jobs: int = 1) -> dict:
    """Train ``variants`` x ``plan.seeds`` runs of ``dataset`` with :func:`gradmask.compare.compare`
    (resuming finished / interrupted ones; it writes the comparison report of that folder), each
    variant first tuned on a validation split when ``tuning`` is given; ``ablation``: Table 2's
    runs at their own scale; ``progress``: the engine's epoch bar (a terminal); ``jobs``: runs
    trained side by side through ``train_fn`` (see :func:`gradmask.compare.compare`). Returns
    ``{"runs": [paths], "config": fields}`` (+ ``"tuning"``)."""
    fields = plan.training(dataset, ablation=ablation)
    if augment is not None:
        fields["augment"] = augment
    base = TrainConfig.from_dict({**fields, "progress": progress})
    folder = runs_dir(out, dataset, augment, ablation)
    tune = {} if tuning is None else dict(tune=dict(tuning.grid), tune_epochs=tuning.epochs,
                                         tune_seeds=tuning.seeds, val_fraction=tuning.val_fraction)
    label = f"{dataset}{f' ({augment})' if augment else ''}{' (ablation)' if ablation else ''}"
    runs = compare(base, tuple(variants), plan.seeds, folder, train_fn=train_fn,
                   log=lambda line: log(f"  {label} {line}"), jobs=jobs, **tune)
    result = {"runs": [str(p) for p in runs], "config": fields}
    if tuning is not None:
        result["tuning"] = read_tuning(folder)
    return result


def box_data(name: str, plan: Plan, limit: int, run: Path):
    """The box images of ``name`` at the side ``run``'s model was trained at (its checkpoint); those
    of a box set reproduce trains on (synthetic, cifar10-placed) rendered like ``run``'s training data
    (its data path, the synthetic clutter)."""
    state = read_checkpoint(run / "checkpoint.pt")
    config = TrainConfig.from_dict(dict(state["config"]))
    size = trained_image_size(config, state["model_args"])
    if name in TRAINED_BOX_SETS:
        return load_box_dataset(name, root=config.data, limit=limit, image_size=size, **render_options(config))
    return load_box_dataset("voc2007" if name == "voc2007" else "xml", root=plan.data[name], limit=limit,
                            image_size=size)
