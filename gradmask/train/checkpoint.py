"""``checkpoint.pt``: the latest state of a run, written atomically, and reading it back.

Contents (tensors and plain Python values only: loadable with ``torch.load(weights_only=True)``):
``format`` (1), ``gradmask_version``, ``epoch`` (epochs finished), ``model``, ``optimizer``,
``scheduler``, ``scaler`` (state dicts; ``scaler`` None without fp16), ``rng`` (torch / cuda /
numpy / python states, :mod:`gradmask.train.rng`), ``loader`` (the training loader's epoch and
generator state; ``rank_states``: every process's ``{"rng", "loader"}`` under DDP, else None),
``config`` (``dataclasses.asdict``), ``model_args`` (``name``, ``num_classes``,
``stem``, ``mean``, ``std``: what :func:`gradmask.create_model` needs; since checksums also
``image_size``, the side of the training images, and ``classes``, the training split's class
names in label order), ``history`` (the ``metrics.jsonl`` records so far), ``machine`` (the numerical setup of every
stretch of training, :mod:`gradmask.train.machine`; absent in older checkpoints), ``train_seconds`` and
``checksum`` (:func:`gradmask.util.files.digest` of everything else, verified on every read; a
checkpoint written before has none and is read unverified, with a warning).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..data.registry import DATASETS
from ..models import create_model
from ..util.files import load_torch, verify, with_checksum, write_atomic
from .config import TrainConfig

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
REQUIRED_KEYS = ("format", "epoch", "model", "optimizer", "scheduler", "rng", "config", "model_args",
                 "history")


_RECORDERS: list[dict] = []  # active recording_reads() dicts


@contextlib.contextmanager
def recording_reads():
    """Within the block, every checkpoint read is recorded in the yielded dict as
    ``{resolved path: its checksum}`` (``"legacy:<size>:<mtime_ns>"`` for one written before
    checksums): what a measurement depended on."""
    reads: dict[Path, str] = {}
    _RECORDERS.append(reads)
    try:
        yield reads
    finally:
        _RECORDERS.remove(reads)


def save_checkpoint(path: Union[str, os.PathLike], state: dict) -> str:
    """``torch.save(state + its checksum)`` to a temporary file beside ``path``, then
    ``os.replace``: a reader (or a kill mid-write) never sees a partial checkpoint, and a failed
    write (a full disk: ``OSError`` saying so) leaves the previous checkpoint as it was. Returns
    the checksum (``final.json`` records it)."""
    checked = with_checksum(state)
    write_atomic(path, lambda f: torch.save(checked, f))
    return checked["checksum"]


def _checkpoint_path(path_or_run_dir: Union[str, os.PathLike]) -> Path:
    path = Path(path_or_run_dir)
    if path.is_dir() and path.name != CHECKPOINT:
        path = path / CHECKPOINT
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def read_checkpoint(path_or_run_dir: Union[str, os.PathLike], map_location="cpu") -> dict:
    """The checkpoint's dict (with its ``checksum``, verified). A truncated / corrupted file, one
    whose content does not match its checksum (:class:`gradmask.util.files.ChecksumError`), one that
    holds other objects than tensors and values, or one lacking keys raises ``ValueError`` naming
    the file."""
    path = _checkpoint_path(path_or_run_dir)
    state = load_torch(path, "checkpoint", map_location=map_location)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a gradmask training state "
                         f"(got {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is missing keys {missing}; not a gradmask training checkpoint")
    if state["format"] != FORMAT:
        raise ValueError(f"checkpoint {path} has format {state['format']!r}; this gradmask reads {FORMAT}")
    checksum = verify(state, path, "checkpoint")
    if _RECORDERS:
        st = path.stat()
        for reads in _RECORDERS:
            reads[path.resolve()] = checksum or f"legacy:{st.st_size}:{st.st_mtime_ns}"
    return state


_SUMMARIES: dict[tuple, tuple] = {}  # (path, inode, size, mtime) -> checkpoint_summary's answer


def checkpoint_summary(path: Union[str, os.PathLike]) -> tuple[Optional[str], list]:
    """``(checksum or None, history)`` of the checkpoint at ``path`` (:func:`read_checkpoint`,
    verified), read once per process and version of the file: what the run's records are checked
    against."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SUMMARIES:
        state = read_checkpoint(path)
        _SUMMARIES[key] = (state.get("checksum"), [dict(r) for r in state["history"]])
    return _SUMMARIES[key]


def load_model_state(model: nn.Module, weights: dict, path: Union[str, os.PathLike]) -> None:
    """``model.load_state_dict(weights)``, or ``ValueError`` naming the checkpoint and the
    parameters that are missing, unexpected or of another shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in weights and hasattr(weights[k], "shape")
              and tuple(weights[k].shape) != tuple(v.shape)]
    problems = ([f"of another shape: {'; '.join(shapes[:8])}{' ...' if len(shapes) > 8 else ''}"] if shapes else []) + \
               ([f"missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}"] if missing else []) + \
               ([f"unexpected: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"] if unexpected else [])
    if problems:
        raise ValueError(f"checkpoint {path} has weights that do not fit the model: parameters "
                         + "; ".join(problems) + " (was it written for another model, dataset or number of classes?)")
    model.load_state_dict(weights)


def build_model(model_args: dict) -> nn.Module:
    """The model a checkpoint's ``model_args`` describe (random initial weights)."""
    return create_model(model_args["name"], model_args["num_classes"], stem=model_args["stem"],
                        mean=tuple(model_args["mean"]), std=tuple(model_args["std"]))


def trained_image_size(config: TrainConfig, model_args: dict) -> Optional[int]:
    """The side of the images a run was trained on: recorded in ``model_args`` (checkpoints since
    checksums), else known from the dataset (synthetic / CIFAR 32, ImageNet 224) or from
    ``config.image_size``; None when a checkpoint of an ImageFolder run does not say."""
    if model_args.get("image_size"):
        return int(model_args["image_size"])
    if getattr(config, "image_size", None):
        return int(config.image_size)
    spec = DATASETS.get(config.dataset)
    return None if spec is None else spec.image_size


@dataclass
class TrainedModel:
    """A trained run as :func:`load_trained` returns it: ``model`` (eval mode, no mask hooks),
    its ``config``, ``image_size`` (side of the training images; None: not recorded) and
    ``classes`` (the training split's class names in label order; None: not recorded)."""

    model: nn.Module
    config: TrainConfig
    image_size: Optional[int]
    classes: Optional[list]
    path: Path


def load_trained(path_or_run_dir: Union[str, os.PathLike], map_location="cpu") -> TrainedModel:
    """The model of a run directory or a ``checkpoint.pt`` rebuilt from its config and loaded with
    the trained weights, on ``map_location``, in eval mode, without gradient mask hooks, with what
    evaluations need to know of its training data. A damaged checkpoint or one whose weights do not
    fit the model raises ``ValueError`` naming the file."""
    path = _checkpoint_path(path_or_run_dir)
    state = read_checkpoint(path, map_location=map_location)
    try:
        config = TrainConfig.from_dict(dict(state["config"]))
        model = build_model(state["model_args"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} holds an unusable config / model description: {exc}") from exc
    load_model_state(model, state["model"], path)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    classes = state["model_args"].get("classes")
    return TrainedModel(model.eval(), config, trained_image_size(config, state["model_args"]),
                        list(classes) if classes else None, path)


def load_checkpoint(path_or_run_dir: Union[str, os.PathLike], map_location="cpu"
                    ) -> tuple[nn.Module, TrainConfig]:
    """``(model, config)`` of :func:`load_trained`."""
    trained = load_trained(path_or_run_dir, map_location)
    return trained.model, trained.config


__all__ = ["CHECKPOINT", "TrainedModel", "build_model", "checkpoint_summary", "load_checkpoint", "load_model_state",
           "load_trained", "read_checkpoint", "recording_reads", "save_checkpoint", "trained_image_size"]
