"""What makes a run's numbers differ between machines, recorded with every run and checked on resume.

The same code, data and seed give bit-identical runs only under the same numerical setup: the CPU's
instruction set that torch dispatches to (``torch.backends.cpu.get_cpu_capability()``, e.g. AVX512
or AVX2, and the CPU model, which oneDNN / MKL dispatch on by themselves), the number of torch
threads (a reduction split over 1 or 2 threads sums in another order), torch's deterministic
algorithms switch, and the torch / numpy / Pillow versions. Measured on the development machine
(docs/DESIGN.md, "What numbers a run reproduces"): the quick preset's first epoch gave a training
loss of 2.2937 with 2 threads and 2.3202 with 1 thread on the same AVX512 CPU, and 2.2906 with 2
threads when dispatch was limited to AVX2.

:func:`machine_record` is that setup; ``config.json`` and the checkpoint hold ``machine``, one
record per stretch of training (``from_epoch``: the first epoch it trained), oldest first. A resume
restores the thread count and the deterministic switch of the last stretch (:func:`restore`; ``train``
puts the process's own back when it returns) and says when anything else differs
(:func:`differences`): then the result is not bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# environment variables that change which kernels run or how many threads they use
ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
               "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
# what a resume cannot restore: a difference means the result is not bit-identical
FIXED = ("cpu", "cpu_capability", "torch", "numpy", "pillow", "device")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _pillow() -> Optional[str]:
    try:
        import PIL
    except ImportError:
        return None
    return str(PIL.__version__)


def machine_record(device: torch.device, from_epoch: int = 1) -> dict:
    """The numerical setup of this process training on ``device`` from epoch ``from_epoch`` (JSON
    values): ``cpu``, ``cpu_capability``, ``threads``, ``deterministic``, ``torch``, ``numpy``,
    ``pillow``, ``python``, ``device`` (``cpu`` or the GPU's name) and ``env`` (those of
    :data:`ENVIRONMENT` that are set)."""
    gpu = device.type == "cuda"
    return {"from_epoch": from_epoch, "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch": str(torch.__version__), "numpy": str(np.__version__), "pillow": _pillow(),
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if gpu else device.type,
            "env": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}}


def settings() -> dict:
    """This process's thread count and deterministic switch, ``{"threads", "deterministic"}``."""
    return {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled()}


def restore(previous: dict) -> None:
    """Set this process's thread count and deterministic switch to those of ``previous`` (a
    :func:`machine_record` or :func:`settings`; keys it lacks are left alone)."""
    if previous.get("threads") and int(previous["threads"]) != torch.get_num_threads():
        torch.set_num_threads(int(previous["threads"]))
    if previous.get("deterministic") is not None and \
            bool(previous["deterministic"]) != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(bool(previous["deterministic"]))


def differences(previous: dict, now: dict) -> dict[str, tuple]:
    """``{key: (previous, now)}`` of what a resume cannot restore (:data:`FIXED`, and the
    environment variables) where ``now`` differs from ``previous``."""
    diff = {k: (previous.get(k), now.get(k)) for k in FIXED if k in previous and previous.get(k) != now.get(k)}
    env_before, env_now = previous.get("env") or {}, now.get("env") or {}
    for k in sorted(set(env_before) | set(env_now)):
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") and env_before.get(k) != env_now.get(k):
            diff[k] = (env_before.get(k), env_now.get(k))
    return diff


__all__ = ["ENVIRONMENT", "FIXED", "cpu_model", "differences", "machine_record", "restore", "settings"]
