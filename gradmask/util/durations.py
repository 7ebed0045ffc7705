"""The one duration formatter, in two styles: ``"report"`` (``"4.1 min"``: stored reports, so it must
not change) and ``"clock"`` (``"4m05s"``: terminal lines: progress, ``gradmask status``)."""
from __future__ import annotations

import math
from typing import Literal, Optional

STYLES = ("report", "clock")


def format_duration(seconds: Optional[float], style: Literal["report", "clock"]) -> str:
    """``seconds`` as text. ``"report"``: ``"12.3 s"`` below 2 min, ``"4.1 min"`` below 2 h, else
    ``"2.50 h"``; ``"–"`` for None or NaN. ``"clock"``: ``"12s"``, ``"4m05s"``, ``"1h02m"`` (rounded to
    the second); ``"?"`` for None."""
    if style == "report":
        if seconds is None or math.isnan(seconds):
            return "–"
        if seconds < 120:
            return f"{seconds:.1f} s"
        if seconds < 2 * 3600:
            return f"{seconds / 60:.1f} min"
        return f"{seconds / 3600:.2f} h"
    if style == "clock":
        if seconds is None:
            return "?"
        seconds = int(round(seconds))
        if seconds >= 3600:
            return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 60:
            return f"{seconds // 60}m{seconds % 60:02d}s"
        return f"{seconds}s"
    raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")


__all__ = ["STYLES", "format_duration"]
