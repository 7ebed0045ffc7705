"""Device names as users write them ("auto", "cpu", "cuda", "cuda:N") -> ``torch.device``."""
from __future__ import annotations

import torch


def is_device_name(name, auto: bool = True) -> bool:
    """Whether ``name`` is "cpu", "cuda", "cuda:N" or (``auto``) "auto": the forms users write."""
    return isinstance(name, str) and (name in ("cpu", "cuda") or (auto and name == "auto")
                                      or (name.startswith("cuda:") and name[5:].isdigit()))


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise ``torch.device(spec)``. ``ValueError``
    naming the accepted values for a malformed name, or when CUDA is asked for and absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was requested but CUDA is not available here; "
                         f"use device='cpu' or 'auto'")
    return device
