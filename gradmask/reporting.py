"""The pieces every report shares: Markdown / HTML rendering of report blocks and figure output.

A report is a list of blocks, each a tuple: ``("h1", text)``, ``("h2", text)``, ``("p", text)``
(inline `` `code` `` and ``**bold**``), ``("img", caption, path relative to out)`` and
``("table", headers, rows, align)`` (``align``: ``"l"`` / ``"r"`` per column).
:func:`render_markdown` and :func:`render_html` (self-contained: figures as data URIs, no script)
render the same blocks. Figures are :func:`figure` (a matplotlib ``Figure`` on its own Agg canvas:
no pyplot state, no backend switch) written by :func:`save_figure`.

A leaf module: it imports nothing from gradmask.
"""
from __future__ import annotations

import base64
import html
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

CHANCE_FACTOR = 1.5
"""An accuracy below ``CHANCE_FACTOR`` x chance (1 / classes) is "near chance": the model's maps,
curves and robustness numbers say little about the method."""
DOMINANT_SHARE = 0.5
"""Evaluated images of which more than this share belong to one class are "dominated" by it."""


def evaluation_warnings(accuracy: Optional[float], num_classes: Optional[int], labels: Iterable[int] = (),
                        what: str = "the model") -> list[str]:
    """Warnings for an evaluation whose numbers say little: ``accuracy`` (in [0, 1]) near chance
    for ``num_classes`` classes (below :data:`CHANCE_FACTOR` / ``num_classes``), or the evaluated
    images' ``labels`` dominated by one class (more than :data:`DOMINANT_SHARE` of at least two
    images, with more than two classes). ``[]`` when neither applies or the numbers are unknown."""
    warnings = []
    if accuracy is not None and num_classes and num_classes > 1 and math.isfinite(accuracy) \
            and accuracy < CHANCE_FACTOR / num_classes:
        warnings.append(f"{what} is near chance level: accuracy {100 * accuracy:.1f}% with {num_classes} classes "
                        f"(chance {100 / num_classes:.1f}%); its numbers say little about the method")
    counts = Counter(int(v) for v in labels)
    total = sum(counts.values())
    if total > 1 and (num_classes is None or num_classes > 2):
        label, most = counts.most_common(1)[0]
        if most / total > DOMINANT_SHARE:
            warnings.append(f"the {total} images evaluated for {what} are dominated by one class ({most} of "
                            f"class {label}); their mean is not an average over classes")
    return warnings


def figure(width: float = 6.4, height: float = 4.0, dpi: int = 100):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches drawn on an Agg canvas (no display,
    no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi: int = 100, hide_ticks: bool = False) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders created) and release it; ``hide_ticks`` for
    image grids."""
    if hide_ticks:
        for ax in fig.axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.clear()
    return path


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple]) -> str:
    """The blocks as Markdown."""
    parts = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            parts.append(f"# {b[1]}")
        elif kind == "h2":
            parts.append(f"## {b[1]}")
        elif kind == "p":
            parts.append(b[1])
        elif kind == "img":
            parts.append(f"![{b[1]}]({b[2]})")
        elif kind == "table":
            headers, rows, align = b[1], b[2], b[3]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 980px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.5; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: .95em; }
th, td { border: 1px solid #ccc; padding: .35em .7em; }
th { background: #f4f4f4; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
code { background: #f4f4f4; padding: 0 .25em; }
"""


def _html_inline(text: str) -> str:
    # `code` and **bold** spans; everything else escaped
    pieces = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else _bold(html.escape(p)) for i, p in enumerate(pieces))


def _bold(text: str) -> str:
    pieces = text.split("**")
    if len(pieces) % 2 == 0:          # unbalanced: leave as is
        return text
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces))


def render_html(blocks: list[tuple], out: Path) -> str:
    """The blocks as one HTML page; images read from ``out`` and embedded as data URIs."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "gradmask comparison")
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_html_inline(b[1])}</p>")
        elif kind == "img":
            data = base64.b64encode((out / b[2]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[1])} ({html.escape(b[2])})</figcaption></figure>")
        elif kind == "table":
            headers, rows, align = b[1], b[2], b[3]
            head = "".join(f'<th class="{a}">{html.escape(h)}</th>' for h, a in zip(headers, align))
            trs = "".join("<tr>" + "".join(f'<td class="{a}">{html.escape(str(c))}</td>'
                                           for c, a in zip(row, align)) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


__all__ = ["CHANCE_FACTOR", "DOMINANT_SHARE", "evaluation_warnings", "figure", "render_html", "render_markdown",
           "save_figure"]
