"""Which code is running: the package version plus, in a git checkout, the commit.

Run folders and reproduce reports record it (``config.json``'s ``gradmask_version`` and
``trained_by``, ``final.json``, the report's machine line), so a result names the code that
computed it. That matters because a checkout is easy to import by accident: ``python -m gradmask``
from a repository root imports that repository's working tree before anything on ``PYTHONPATH``.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Optional

from .. import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]   # the gradmask/ folder (this file is gradmask/train/)


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def source_revision(package_dir: Optional[Path] = None) -> str:
    """``"0.1.0"`` for an installed copy; ``"0.1.0+g<12 hex digits>"`` when the package is the top-level
    ``gradmask/`` folder of a git checkout (a worktree counts), ``".dirty"`` added when tracked files of
    that checkout differ from the commit (or git cannot tell). Outside a checkout, or without git, the
    plain version. Computed once per process (three ``git`` calls)."""
    package = Path(package_dir or PACKAGE_DIR).resolve()
    top = _git(package, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package.parent:   # e.g. installed inside another repository
        return __version__
    commit = _git(package.parent, "rev-parse", "HEAD")
    if not commit:
        return __version__
    changes = _git(package.parent, "status", "--porcelain", "--untracked-files=no")
    return f"{__version__}+g{commit[:12]}" + ("" if changes == "" else ".dirty")


__all__ = ["source_revision"]
