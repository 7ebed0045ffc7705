"""The pieces every report shares: Markdown / HTML rendering of report blocks and figure output.

A report is a list of blocks, each a tuple: ``("h1", text)``, ``("h2", text)``, ``("p", text)``
(inline `` `code` `` and ``**bold**``), ``("img", caption, path relative to out)`` and
``("table", headers, rows, align)`` (``align``: ``"l"`` / ``"r"`` per column).
:func:`render_markdown` and :func:`render_html` (self-contained: figures as data URIs, no script)
render the same blocks, with a table of contents when there are several sections; the HTML shows
verdicts (holds / does not hold / not established / mixed) as coloured badges. Figures are
:func:`figure` (a matplotlib ``Figure`` on its own Agg canvas: no pyplot state, no backend switch)
written by :func:`save_figure`, which sizes them for the report page (no wider than its text column,
no text under 9 pt at 100% zoom). Every figure gives an arm the same colour (:func:`arm_colors`,
Okabe and Ito's colour-blind-safe palette) and draws maps with a perceptually uniform colormap
(:data:`SEQUENTIAL_CMAP`).

A leaf module: it imports nothing from gradmask.
"""
from __future__ import annotations

import base64
import html
import math
import re
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


#: Okabe & Ito's colour-blind-safe palette (Color Universal Design); yellow last (weak on white).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: The colour of each arm (a ``--mask`` value) in every figure of every report.
ARM_COLORS = {"none": OKABE_ITO[0], "lateral": OKABE_ITO[1], "norm": OKABE_ITO[2], "pixel": OKABE_ITO[3]}
#: The colormap of saliency maps and other values in [0, 1]: perceptually uniform (not jet).
SEQUENTIAL_CMAP = "viridis"
#: The report page's text column (the HTML body's width less its padding): figures are no wider.
PAGE_WIDTH_PX = 940
#: The smallest text in a figure, in points at 100% zoom (96 CSS px per inch).
MIN_FONT_PT = 9.0


def arm_of(name: str) -> str:
    """The arm of a run's name: ``"lateral-seed2"`` -> ``"lateral"`` (a name without a seed: itself)."""
    return re.sub(r"-seed\d+$", "", name)


def arm_colors(arms: Iterable[str]) -> dict[str, str]:
    """A colour per arm: :data:`ARM_COLORS` for the four mask modes, wherever they appear; other
    arms (``"none + li-blur"``, ``"lateral@sigma=1"``, a saliency method) take the rest of
    :data:`OKABE_ITO` in sorted order (cycling), so the same set of arms gets the same colours in every
    figure."""
    arms = list(dict.fromkeys(arms))
    spare = [c for c in OKABE_ITO if c not in ARM_COLORS.values()]
    others = sorted(a for a in arms if a not in ARM_COLORS)
    colors = {a: ARM_COLORS[a] for a in arms if a in ARM_COLORS}
    colors.update({a: spare[i % len(spare)] for i, a in enumerate(others)})
    return {a: colors[a] for a in arms}


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v")


def series_styles(names: Iterable[str]) -> dict[str, dict]:
    """Plot keywords per run / model name: the colour of its arm (:func:`arm_of`, :func:`arm_colors`)
    and, for the second, third, ... name of the same arm (other seeds), another line style and marker."""
    names = list(dict.fromkeys(names))
    colors = arm_colors(arm_of(n) for n in names)
    seen: Counter = Counter()
    styles = {}
    for name in names:
        k = seen[arm_of(name)]
        seen[arm_of(name)] += 1
        styles[name] = {"color": colors[arm_of(name)], "linestyle": _LINESTYLES[k % len(_LINESTYLES)],
                        "marker": _MARKERS[k % len(_MARKERS)]}
    return styles


def fit_page(fig, dpi: int) -> None:
    """Size ``fig`` for the report page when written at ``dpi``: no wider than :data:`PAGE_WIDTH_PX`
    (scaled down, aspect kept) and no text smaller than :data:`MIN_FONT_PT` at 100% zoom (a figure
    shown at its pixel size: ``pt * dpi / 72`` pixels against ``MIN_FONT_PT * 96 / 72`` CSS pixels)."""
    from matplotlib.text import Text

    width, height = fig.get_size_inches()
    if width * dpi > PAGE_WIDTH_PX:
        scale = PAGE_WIDTH_PX / (width * dpi)
        fig.set_size_inches(width * scale, height * scale)
    smallest = MIN_FONT_PT * max(1.0, 96.0 / dpi)
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < smallest:
            text.set_fontsize(smallest)


def figure(width: float = 6.4, height: float = 4.0, dpi: int = 100):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches drawn on an Agg canvas (no display,
    no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi: int = 100, hide_ticks: bool = False) -> Path:
    """Size ``fig`` for the page (:func:`fit_page`), lay it out, write it to ``path`` (folders
    created) and release it; ``hide_ticks`` for image grids."""
    if hide_ticks:
        for ax in fig.axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fit_page(fig, dpi)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.clear()
    return path


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


#: Verdict words (reproduce.verdict's and the compare report's) and the badge class of each, longest first.
VERDICT_BADGES = (("not established at this scale", "open"), ("not established", "open"),
                  ("does not hold", "fails"), ("holds", "holds"), ("mixed", "mixed"))


def anchor(title: str, taken: Optional[set] = None) -> str:
    """The anchor GitHub gives a heading (lower case, punctuation dropped, spaces to ``-``); with
    ``taken`` (anchors used so far, updated) a repeated one gets ``-1``, ``-2``, ..."""
    slug = "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")
    if taken is not None:
        base, k = slug, 0
        while slug in taken:
            k += 1
            slug = f"{base}-{k}"
        taken.add(slug)
    return slug


def _contents(blocks: list[tuple]) -> list[tuple[str, str]]:
    """``[(title, anchor)]`` of the ``h2`` sections, when there are at least two."""
    taken: set = set()  # the headings' anchors in page order, as render_html gives them
    entries = [(b[0], b[1], anchor(b[1], taken)) for b in blocks if b[0] in ("h1", "h2")]
    sections = [(title, slug) for kind, title, slug in entries if kind == "h2"]
    return sections if len(sections) >= 2 else []


def _toc_position(blocks: list[tuple]) -> int:
    """Where the table of contents goes: before the first section (after the title and its intro)."""
    return next((i for i, b in enumerate(blocks) if b[0] == "h2"), len(blocks))


def render_markdown(blocks: list[tuple]) -> str:
    """The blocks as Markdown (a list of the sections, linked, before the first one)."""
    parts = []
    contents = _contents(blocks)
    toc_at = _toc_position(blocks) if contents else -1
    for i, b in enumerate(blocks):
        if i == toc_at:
            parts.append("**Contents:** " + " · ".join(f"[{t}](#{a})" for t, a in contents))
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
nav.toc { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .5em 1em; margin: 1em 0; }
nav.toc ol { margin: .3em 0; padding-left: 1.4em; }
.badge { display: inline-block; padding: .05em .55em; border-radius: .8em; font-weight: 600;
         font-size: .92em; white-space: nowrap; }
.badge.holds { background: #009E73; color: #fff; }
.badge.fails { background: #D55E00; color: #fff; }
.badge.open { background: #e8e8e8; color: #333; border: 1px solid #aaa; }
.badge.mixed { background: #E69F00; color: #000; }
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


def _badge(text: str) -> Optional[str]:
    """``text`` as a verdict badge when it is one ("holds", "Verdict: does not hold", ...); else None."""
    label = text.strip()
    prefix = ""
    if label.lower().startswith("verdict: "):
        prefix, label = label[:9], label[9:]
    for words, kind in VERDICT_BADGES:
        if label == words:
            return f'{prefix}<span class="badge {kind}">{label}</span>'
    if label.startswith("mixed: "):  # a claim of several parts: "mixed: accuracy ...; cost ..."
        return f'{prefix}<span class="badge mixed">mixed</span>: {label[7:]}'
    return None


def _bold(text: str) -> str:
    pieces = text.split("**")
    if len(pieces) % 2 == 0:          # unbalanced: leave as is
        return text
    return "".join((_badge(p) or f"<strong>{p}</strong>") if i % 2 else p for i, p in enumerate(pieces))


def _cell(value) -> str:
    text = html.escape(str(value))
    return _badge(text) or text


def render_html(blocks: list[tuple], out: Path) -> str:
    """The blocks as one HTML page; images read from ``out`` and embedded as data URIs."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "gradmask comparison")
    body = []
    contents = _contents(blocks)
    toc_at = _toc_position(blocks) if contents else -1
    taken: set = set()
    for i, b in enumerate(blocks):
        kind = b[0]
        if i == toc_at:
            items = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for t, a in contents)
            body.append(f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>')
        if kind in ("h1", "h2"):
            body.append(f'<{kind} id="{anchor(b[1], taken)}">{html.escape(b[1])}</{kind}>')
        elif kind == "p":
            body.append(f"<p>{_html_inline(b[1])}</p>")
        elif kind == "img":
            data = base64.b64encode((out / b[2]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[1])} ({html.escape(b[2])})</figcaption></figure>")
        elif kind == "table":
            headers, rows, align = b[1], b[2], b[3]
            head = "".join(f'<th class="{a}">{html.escape(h)}</th>' for h, a in zip(headers, align))
            trs = "".join("<tr>" + "".join(f'<td class="{a}">{_cell(c)}</td>'
                                           for c, a in zip(row, align)) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


__all__ = ["ARM_COLORS", "CHANCE_FACTOR", "DOMINANT_SHARE", "MIN_FONT_PT", "OKABE_ITO", "PAGE_WIDTH_PX",
           "SEQUENTIAL_CMAP", "VERDICT_BADGES", "anchor", "arm_colors", "arm_of", "evaluation_warnings", "figure",
           "fit_page", "render_html", "render_markdown", "save_figure", "series_styles"]
