"""``checkpoint.pt``: the latest state of a run, written atomically, and reading it back.

Contents (tensors and plain Python values only: loadable with ``torch.load(weights_only=True)``):
``format`` (1), ``gradmask_version``, ``epoch`` (epochs finished), ``model``, ``optimizer``,
``scheduler``, ``scaler`` (state dicts; ``scaler`` None without fp16), ``rng`` (torch / cuda /
numpy / python states, :mod:`gradmask.train.rng`), ``loader`` (the training loader's epoch and
generator state; ``rank_states``: every process's ``{"rng", "loader"}`` under DDP, else None),
``config`` (``dataclasses.asdict``), ``model_args`` (``name``, ``num_classes``,
``stem``, ``mean``, ``std``: what :func:`gradmask.create_model` needs), ``history`` (the
``metrics.jsonl`` records so far) and ``train_seconds``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ..files import write_atomic
from ..models import create_model
from .config import TrainConfig

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
REQUIRED_KEYS = ("format", "epoch", "model", "optimizer", "scheduler", "rng", "config", "model_args",
                 "history")


def save_checkpoint(path: Union[str, os.PathLike], state: dict) -> None:
    """``torch.save(state)`` to a temporary file beside ``path``, then ``os.replace``: a reader
    (or a kill mid-write) never sees a partial checkpoint."""
    write_atomic(path, lambda f: torch.save(state, f))


def _checkpoint_path(path_or_run_dir: Union[str, os.PathLike]) -> Path:
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def read_checkpoint(path_or_run_dir: Union[str, os.PathLike], map_location="cpu") -> dict:
    """The checkpoint's dict. A truncated / corrupted file, or one lacking keys, raises
    ``ValueError`` naming the file."""
    path = _checkpoint_path(path_or_run_dir)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip / pickle / EOF errors of a damaged file
        raise ValueError(f"checkpoint {path} is corrupted or truncated and cannot be read "
                         f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a gradmask training state "
                         f"(got {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is missing keys {missing}; not a gradmask training checkpoint")
    if state["format"] != FORMAT:
        raise ValueError(f"checkpoint {path} has format {state['format']!r}; this gradmask reads {FORMAT}")
    return state


def build_model(model_args: dict) -> nn.Module:
    """The model a checkpoint's ``model_args`` describe (random initial weights)."""
    return create_model(model_args["name"], model_args["num_classes"], stem=model_args["stem"],
                        mean=tuple(model_args["mean"]), std=tuple(model_args["std"]))


def load_checkpoint(path_or_run_dir: Union[str, os.PathLike], map_location="cpu"
                    ) -> tuple[nn.Module, TrainConfig]:
    """``(model, config)`` of a run directory or a ``checkpoint.pt``: the model rebuilt from the
    config and loaded with the trained weights, on ``map_location``, in eval mode, without gradient
    mask hooks. A damaged checkpoint or one whose weights do not fit the model raises
    ``ValueError`` naming the file."""
    path = _checkpoint_path(path_or_run_dir)
    state = read_checkpoint(path, map_location=map_location)
    try:
        config = TrainConfig.from_dict(dict(state["config"]))
        model = build_model(state["model_args"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} holds an unusable config / model description: {exc}") from exc
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {path} has weights that do not fit {state['model_args']['name']}: "
                         f"{exc}") from exc
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    return model.eval(), config


__all__ = ["CHECKPOINT", "build_model", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
