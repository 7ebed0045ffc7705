"""What every report shares (gradmask.util.reporting): one colour per arm, perceptually uniform maps,
figures sized for the page, verdict badges, a table of contents; the HTML checked in headless
chromium at 1280 px with a screenshot."""
from pathlib import Path

import numpy as np
import pytest
from browser import probe, run_browser

from gradmask.util import reporting
from gradmask.util.reporting import (
    ARM_COLORS,
    MIN_FONT_PT,
    OKABE_ITO,
    PAGE_WIDTH_PX,
    arm_colors,
    arm_of,
    figure,
    fit_page,
    render_html,
    render_markdown,
    save_figure,
    series_styles,
)

ROOT = Path(__file__).resolve().parents[1]


def test_one_colour_per_arm_whatever_the_figure():
    assert arm_colors(["lateral", "none"]) == {"lateral": ARM_COLORS["lateral"], "none": ARM_COLORS["none"]}
    many = arm_colors(["pixel", "none + li-blur", "lateral", "lateral@sigma=1", "none", "norm"])
    assert {k: many[k] for k in ARM_COLORS} == ARM_COLORS
    assert len(set(many.values())) == len(many) and set(many.values()) <= set(OKABE_ITO)
    # the arms outside the fixed four get the next colours in sorted order, whatever the order given
    assert arm_colors(["lateral@sigma=1", "none + li-blur"]) == arm_colors(["none + li-blur", "lateral@sigma=1"])
    assert arm_of("lateral-seed12") == "lateral" and arm_of("none + li-blur") == "none + li-blur"
    styles = series_styles(["none-seed0", "lateral-seed0", "none-seed1"])
    assert styles["none-seed0"]["color"] == styles["none-seed1"]["color"] == ARM_COLORS["none"]
    assert styles["none-seed0"]["linestyle"] != styles["none-seed1"]["linestyle"]


def test_no_rainbow_colormap_anywhere():
    """Maps use the perceptually uniform SEQUENTIAL_CMAP; jet (or hsv, rainbow) appears in no module."""
    import matplotlib
    assert matplotlib.colormaps[reporting.SEQUENTIAL_CMAP].name == "viridis"
    for path in (ROOT / "gradmask").rglob("*.py"):
        text = path.read_text()
        for name in ('"jet"', "'jet'", '"hsv"', '"rainbow"', '"tab10"'):
            assert name not in text, f"{path.relative_to(ROOT)} uses {name}"


def test_figures_fit_the_page_and_no_text_is_under_9pt(tmp_path):
    from matplotlib.text import Text
    fig = figure(16.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="lateral")
    ax.set_title("small", fontsize=6)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["a", "b"], fontsize=5)
    ax.legend(fontsize=7)
    fit_page(fig, 100)
    assert fig.get_size_inches()[0] * 100 == pytest.approx(PAGE_WIDTH_PX)
    assert fig.get_size_inches()[1] == pytest.approx(5.0 * PAGE_WIDTH_PX / 1600)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text()]
    assert sizes and min(sizes) >= MIN_FONT_PT
    fit_page(fig, 72)          # a lower resolution needs larger points for the same pixels
    assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text()) >= MIN_FONT_PT * 96 / 72
    path = save_figure(figure(20.0, 4.0), tmp_path / "wide.png")
    from PIL import Image
    with Image.open(path) as image:
        assert image.size[0] <= PAGE_WIDTH_PX


def _blocks(out: Path) -> list[tuple]:
    """A report like reproduce's: a title, its intro, sections with a verdict table, badges in
    paragraphs, and real figures of the report modules (arms coloured, maps in viridis)."""
    from gradmask.robustness.report import plot_pruning
    from gradmask.saliency.evaluate import save_figure_grid
    curves = {name: {"global": {"points": [[0.0, acc], [0.5, acc - 0.2], [0.9, acc - 0.6]]}}
              for name, acc in (("none-seed0", 0.9), ("lateral-seed0", 0.85), ("none-seed1", 0.88))}
    plot_pruning(curves, out / "pruning.png")
    import torch
    torch.manual_seed(0)
    save_figure_grid(out / "maps.png", torch.rand(3, 3, 32, 32), [[4, 4, 20, 20]] * 3,
                     {m: torch.rand(3, 32, 32) for m in ("limap", "gradcam", "gradcam++")}, n=3)
    verdicts = [("holds", "Table 3"), ("does not hold", "Table 1"), ("not established at this scale", "Figure 5"),
                ("mixed", "Figure 6")]
    return [("h1", "Reproducing Gradient Mask: preset test"), ("p", "What this is."),
            ("h2", "Summary"),
            ("table", ["paper", "verdict"], [[w, v] for v, w in verdicts], ["l", "l"]),
            ("h2", "Table 1: top-1 accuracy with and without Gradient Mask"),
            ("p", "**Verdict: does not hold** (synthetic: lateral > none: **does not hold**)."),
            ("img", "pruning curves", "pruning.png"),
            ("h2", "Table 3: IoU of the top-15% saliency box"), ("p", "**Verdict: holds**; plain **bold**."),
            ("img", "saliency maps", "maps.png")]


CHECK = """<script>
window.addEventListener("load", () => {
  const rgb = e => getComputedStyle(e).backgroundColor;
  const images = [...document.images];
  const links = [...document.querySelectorAll("nav.toc a")];
  document.body.setAttribute("data-check", JSON.stringify({
    width: document.documentElement.clientWidth,
    toc: links.map(a => a.getAttribute("href")),
    targets: links.filter(a => document.getElementById(a.getAttribute("href").slice(1))).length,
    h2: document.querySelectorAll("h2").length,
    badges: [...document.querySelectorAll(".badge")].map(b => [b.className, b.textContent, rgb(b)]),
    images: images.map(i => [i.naturalWidth, i.clientWidth]),
    font: parseFloat(getComputedStyle(document.body).fontSize)}));
});
</script>"""


def test_html_report_at_1280px_in_headless_chromium(tmp_path):
    """The page at 1280 px: the contents link every section, the verdicts are badges in their colours
    (in the table and in the text), every figure is shown at its own size (not scaled down, so its
    9 pt text stays 9 pt), and the screenshot shows the badges' colours."""
    from PIL import Image

    blocks = _blocks(tmp_path)
    page = render_html(blocks, tmp_path)
    check = probe(page, CHECK, tmp_path, width=1280)
    assert check["width"] == 1280 and check["h2"] == 3
    assert check["toc"] == ["#summary", "#table-1-top-1-accuracy-with-and-without-gradient-mask",
                            "#table-3-iou-of-the-top-15-saliency-box"] and check["targets"] == 3
    badges = {(cls, text): colour for cls, text, colour in check["badges"]}
    assert badges[("badge holds", "holds")] == "rgb(0, 158, 115)"            # Okabe-Ito bluish green
    assert badges[("badge fails", "does not hold")] == "rgb(213, 94, 0)"     # vermillion
    assert badges[("badge mixed", "mixed")] == "rgb(230, 159, 0)"            # orange
    assert ("badge open", "not established at this scale") in badges
    assert len(check["badges"]) == 4 + 2 + 1  # the table's four, two in Table 1's text, one in Table 3's
    assert check["images"] and all(0 < natural <= PAGE_WIDTH_PX and shown == natural
                                   for natural, shown in check["images"]), check["images"]
    assert "<strong>bold</strong>" in page

    shot = tmp_path / "report.png"
    (tmp_path / "page.html").write_text(page)
    run_browser("--window-size=1280,2200", f"--screenshot={shot}", (tmp_path / "page.html").as_uri())
    with Image.open(shot) as screenshot:
        image = np.asarray(screenshot.convert("RGB")).astype(int)
    assert image.shape[:2] == (2200, 1280)

    def share(rgb):
        return (np.abs(image - np.array(rgb)).sum(-1) < 12).mean()
    assert share((0, 158, 115)) > 1e-4 and share((213, 94, 0)) > 1e-4      # the badges (and lines) drawn
    assert share((0, 114, 178)) > 1e-5                                      # none's blue in the figure
    ink = (image.sum(-1) < 600).mean()
    assert 0.02 < ink < 0.6, ink


def test_markdown_has_the_same_contents_with_github_anchors():
    text = render_markdown([("h1", "T"), ("p", "intro"), ("h2", "Table 1: a − b"), ("p", "x"),
                            ("h2", "Table 1: a − b")])
    assert "**Contents:** [Table 1: a − b](#table-1-a--b) · [Table 1: a − b](#table-1-a--b-1)" in text
    assert text.index("intro") < text.index("**Contents:**") < text.index("## Table 1")
    assert "Contents" not in render_markdown([("h1", "T"), ("h2", "only one")])


def test_publish_keeps_the_self_contained_html_and_no_checkpoint(tmp_path):
    import subprocess
    src, dest = tmp_path / "run", tmp_path / "published"
    for name in ("report.md", "report.html", "cifar10/runs/report.html", "cifar10/runs/none-seed0/config.json",
                 "cifar10/runs/none-seed0/checkpoint.pt", "figures/a.png"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("x")
    subprocess.run(["bash", str(ROOT / "docs" / "results" / "publish.sh"), str(src), str(dest)], check=True)
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == ["cifar10/runs/none-seed0/config.json", "cifar10/runs/report.html", "figures/a.png",
                      "report.html", "report.md"]


def test_a_mixed_headline_gets_its_badge_and_keeps_the_parts():
    from gradmask.util.reporting import _badge, _cell
    cell = _cell("mixed: accuracy not established at this scale; cost does not hold")
    assert cell == '<span class="badge mixed">mixed</span>: accuracy not established at this scale; cost does not hold'
    assert _badge("Verdict: mixed: accuracy holds; cost does not hold").startswith(
        'Verdict: <span class="badge mixed">mixed</span>: ')
    assert _badge("mixed feelings") is None


def test_one_duration_formatter_two_styles():
    from gradmask.util.durations import format_duration
    assert [format_duration(s, "report") for s in (12.34, 245, 9000, None, float("nan"))] == [
        "12.3 s", "4.1 min", "2.50 h", "–", "–"]
    assert [format_duration(s, "clock") for s in (12.4, 245, 3720, None)] == ["12s", "4m05s", "1h02m", "?"]
    with pytest.raises(ValueError, match="style must be one of report, clock"):
        format_duration(1.0, "iso")
