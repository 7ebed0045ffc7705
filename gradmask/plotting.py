"""Figure output shared by every report (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path


def save_figure(fig, path, dpi: int = 100, hide_ticks: bool = False) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders created) and close it; ``hide_ticks`` for
    image grids."""
    import matplotlib.pyplot as plt

    if hide_ticks:
        for ax in fig.axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
