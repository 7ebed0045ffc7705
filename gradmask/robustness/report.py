"""The robustness report: tables, figures and raw numbers from the results of ``gradmask robustness``.

:func:`write_report(results, out)` writes into ``out``:

- ``robustness.json`` (everything), ``pruning.csv``, ``fgsm.csv``, ``gsnr.csv`` (raw numbers);
- ``pruning.png`` (accuracy vs sparsity, one panel per scheme), ``fgsm.png`` (accuracy vs epsilon),
  ``gsnr.png`` (GSNR per layer, one line per model);
- ``robustness.md`` and a self-contained ``robustness.html`` (inline CSS, figures as data URIs).

``results`` is a dict (see :func:`gradmask.cli.robustness.measure_runs`): ``models`` (list of
``{name, checkpoint, model, mask, seed, n_eval}``), ``data`` (``{dataset, source, split,
n_images}``), ``pruning`` (``{model: {scheme: PruningCurve.to_dict()}}``), ``fgsm``
(``FGSMCurve.to_dict()``), ``gsnr`` (``{model: {"summary": {layer: value, "network": value},
"n_samples", "masked", "split"}}``), ``settings``. Missing parts are left out of the report.

:func:`plot_gsnr(run_dirs, path)` draws GSNR vs epoch from the ``gsnr.jsonl`` that
:class:`gradmask.robustness.GSNRProbe` writes into training runs.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Union

from ..util.files import write_atomic, write_csv
from ..util.progress import counted
from ..util.reporting import arm_colors, figure, render_html, render_markdown, save_figure, series_styles
from .gsnr import read_gsnr

MASK_NOTE = ("Gradient mask hooks were switched off (or absent: checkpoints are loaded without hooks) "
             "during the attacks and every accuracy evaluation: FGSM uses each model's true input "
             "gradient.")


# --------------------------------------------------------------------------------------- figures

def _finite(v) -> bool:
    return isinstance(v, (int, float)) and v is not None and math.isfinite(v)


def plot_pruning(pruning: dict, path: Union[str, os.PathLike]) -> Path:
    """Accuracy vs sparsity: one panel per scheme, one line per model."""
    schemes = sorted({s for curves in pruning.values() for s in curves}, key=lambda s: (s != "global", s))
    fig = figure(4.7 * max(1, len(schemes)), 4.0)
    styles = series_styles(pruning)
    for k, scheme in enumerate(schemes or ["global"]):
        ax = fig.add_subplot(1, max(1, len(schemes)), k + 1)
        for name, curves in pruning.items():
            if scheme in curves:
                pts = curves[scheme]["points"]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **styles[name])
        ax.set_title(f"L1 pruning, {scheme}")
        ax.set_xlabel("fraction of Conv/Linear weights pruned")
        ax.set_ylabel("top-1 accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_fgsm(fgsm: dict, path: Union[str, os.PathLike]) -> Path:
    """Accuracy vs epsilon (1/255 units), one line per model; the warning written on the figure
    when nothing was measured."""
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    subset = fgsm.get("subset", "joint")
    what = "images every model classifies correctly" if subset == "joint" else "all images"
    ax.set_title(f"FGSM: {fgsm.get('n_images', 0)} {what}", fontsize=10)
    if fgsm.get("warning"):
        import textwrap
        ax.text(0.5, 0.5, "no measurement:\n" + textwrap.fill(fgsm["warning"], 48), ha="center", va="center",
                transform=ax.transAxes, color="#b00020", fontsize=10)
    else:
        styles = series_styles(fgsm["curves"])
        for name, curve in fgsm["curves"].items():
            ax.plot([p[0] for p in curve], [p[1] for p in curve], label=name, **styles[name])
        ax.legend(fontsize=8)
    ax.set_xlabel("epsilon (1/255)")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_gsnr_layers(gsnr: dict, path: Union[str, os.PathLike]) -> Path:
    """GSNR per layer (x: layers in network order), one line per model; log scale when positive."""
    fig = figure(9.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    layers: list[str] = []
    for entry in gsnr.values():
        for layer in entry["summary"]:
            if layer != "network" and layer not in layers:
                layers.append(layer)
    positive = True
    styles = series_styles(gsnr)
    for name, entry in gsnr.items():
        s = entry["summary"]
        xs = [j for j, layer in enumerate(layers) if _finite(s.get(layer))]
        ys = [s[layers[j]] for j in xs]
        positive &= all(y > 0 for y in ys)
        net = s.get("network")
        label = f"{name} (network {net:.3g})" if _finite(net) else name
        ax.plot(xs, ys, ms=3, label=label, **styles[name])
    if positive and layers:
        ax.set_yscale("log")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=70)
    ax.set_ylabel("mean GSNR of the layer")
    ax.set_title("GSNR per layer (mean over the layer's weights)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _run_variant(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("mask", "?"))
    except (OSError, ValueError):
        return "?"


def plot_gsnr(run_dirs: Iterable[Union[str, os.PathLike]], path: Union[str, os.PathLike],
              layer: Optional[str] = None) -> Path:
    """GSNR vs epoch from each run's ``gsnr.jsonl`` (written by :class:`GSNRProbe`): one thin line
    per run coloured by its mask variant (``config.json``), and the mean over the runs of a variant
    (thick) where it has several. ``layer``: one layer's value instead of the network's. Runs
    without records are skipped; if none has any, ``ValueError`` naming ``run_dirs``."""
    runs = [Path(r) for r in run_dirs]
    data = []
    for run in runs:
        points = []
        for r in read_gsnr(run):
            value = r.get("network") if layer is None else (r.get("layers") or {}).get(layer)
            if _finite(value) and r.get("epoch") is not None:
                points.append((int(r["epoch"]), float(value)))
        if points:
            data.append((run, _run_variant(run), sorted(points)))
    if not data:
        raise ValueError(f"run_dirs: none of {[str(r) for r in runs]} holds GSNR records (gsnr.jsonl, "
                         f"written by gradmask.robustness.GSNRProbe during training)")
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    variants = list(dict.fromkeys(v for _, v, _ in data))
    colors = arm_colors(variants)
    positive = True
    for run, variant, points in data:
        positive &= all(v > 0 for _, v in points)
        ax.plot([e for e, _ in points], [v for _, v in points], "-", lw=0.8, alpha=0.6, color=colors[variant],
                label=f"{run.name}" if sum(1 for _, w, _ in data if w == variant) == 1 else None)
    for variant in variants:
        members = [dict(points) for _, v, points in data if v == variant]
        if len(members) < 2:
            continue
        epochs = sorted(set.intersection(*(set(m) for m in members)))
        ax.plot(epochs, [sum(m[e] for m in members) / len(members) for e in epochs], "-", lw=2.2,
                color=colors[variant], label=f"{variant} (mean of {counted(len(members), 'run')})")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("GSNR" + (f" of {layer}" if layer else " (mean over conv weights)"))
    ax.set_title("GSNR during training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------- tables

def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.3e}"
    return str(v)


def _pruning_table(pruning: dict) -> tuple[list[str], list[list[str]]]:
    sparsities = sorted({p[0] for curves in pruning.values() for c in curves.values() for p in c["points"]})
    header = ["model", "scheme", "images"] + [f"{s:g}" for s in sparsities]
    rows = []
    for name, curves in pruning.items():
        for scheme, c in curves.items():
            acc = {p[0]: p[1] for p in c["points"]}
            rows.append([name, scheme, str(c.get("n_images", ""))] + [_fmt(acc.get(s)) for s in sparsities])
    return header, rows


def _fgsm_table(fgsm: dict) -> tuple[list[str], list[list[str]]]:
    eps = [p[0] for p in next(iter(fgsm["curves"].values()))] if fgsm["curves"] else []
    header = ["model", "images", "clean acc. (all)"] + [f"eps {e:g}/255" for e in eps]
    rows = []
    for name, curve in fgsm["curves"].items():
        rows.append([name, str(fgsm.get("n_images", 0)), _fmt(fgsm.get("clean_accuracy", {}).get(name))]
                    + [_fmt(a) for _, a in curve])
    return header, rows


def _gsnr_table(gsnr: dict) -> tuple[list[str], list[list[str]]]:
    names = list(gsnr)
    layers: list[str] = []
    for entry in gsnr.values():
        for layer in entry["summary"]:
            if layer != "network" and layer not in layers:
                layers.append(layer)
    header = ["layer"] + names
    rows = [["network"] + [_fmt(gsnr[n]["summary"].get("network")) for n in names]]
    rows += [[layer] + [_fmt(gsnr[n]["summary"].get(layer)) for n in names] for layer in layers]
    return header, rows


def _table(header: list[str], rows: list[list[str]]) -> tuple:
    """A table block for :func:`gradmask.util.reporting.render_markdown` / ``render_html``: the
    first column left-aligned, the others right-aligned."""
    return ("table", header, rows, "l" + "r" * (len(header) - 1))


# --------------------------------------------------------------------------------------- writer

def _blocks(results: dict, figures: dict[str, str]) -> list[tuple]:
    b: list[tuple] = [("h1", "Robustness report")]
    data = results.get("data") or {}
    if data:
        b.append(("p", f"Evaluation images: {data.get('n_images', '?')} from the {data.get('split', 'test')} split of "
                       f"{data.get('dataset', '?')} ({data.get('source') or 'rendered'}). Images in [0, 1]; "
                       f"every model normalises in its first layer."))
    b.append(("p", MASK_NOTE))
    for warning in results.get("warnings") or []:
        b.append(("p", f"**Warning:** {warning}."))
    models = results.get("models") or []
    if models:
        b.append(("h2", "Models"))
        b.append(_table(["model", "checkpoint", "architecture", "trained with mask", "seed", "images evaluated"],
                        [[m.get("name", ""), str(m.get("checkpoint", "")), str(m.get("model", "")),
                          str(m.get("mask", "")), str(m.get("seed", "")), str(m.get("n_eval", ""))]
                         for m in models]))
    if results.get("pruning"):
        b.append(("h2", "Pruning (Fig. 5)"))
        b.append(("p", "Top-1 accuracy after L1 magnitude pruning of the Conv/Linear weights "
                       "(torch.nn.utils.prune): `global` = one magnitude threshold over the network, "
                       "`layer` = the same fraction in every layer. Columns: fraction pruned. "
                       + ("BatchNorm statistics re-estimated after pruning."
                          if (results.get("settings") or {}).get("recalibrate_bn") else
                          "BatchNorm statistics as trained.")))
        b.append(_table(*_pruning_table(results["pruning"])))
        if "pruning" in figures:
            b.append(("img", "accuracy vs sparsity", figures["pruning"]))
    fgsm = results.get("fgsm")
    if fgsm:
        b.append(("h2", "FGSM (Fig. 6)"))
        subset = fgsm.get("subset", "joint")
        b.append(("p", "x' = clamp(x + eps * sign(grad_x CE), 0, 1), eps in 1/255 units. Accuracy on "
                       + (f"the {fgsm.get('n_joint', 0)} of {fgsm.get('n_total', 0)} images that every model "
                          f"classifies correctly (the paper's protocol; accuracy 1 at eps 0)."
                          if subset == "joint" else
                          f"all {fgsm.get('n_total', 0)} images ({fgsm.get('n_joint', 0)} of them classified "
                          f"correctly by every model).")))
        if fgsm.get("warning"):
            b.append(("p", f"**WARNING: {fgsm['warning']}. No FGSM accuracy could be measured.**"))
        b.append(_table(*_fgsm_table(fgsm)))
        if "fgsm" in figures:
            b.append(("img", "accuracy vs epsilon", figures["fgsm"]))
    gsnr = results.get("gsnr")
    if gsnr:
        b.append(("h2", "GSNR (Fig. 7)"))
        first = next(iter(gsnr.values()))
        masked = [f"{n} ({counted(len(e.get('masked') or []), 'masked target')})"
                  for n, e in gsnr.items() if e.get("masked")]
        b.append(("p", f"Gradient signal-to-noise ratio mean^2 / (variance + {first.get('eps', 1e-30):g}) of the "
                       f"per-sample gradients (torch.func vmap, model in eval mode) over {first.get('n_samples', '?')} "
                       f"{first.get('split', 'train')} images, averaged over each layer's weights and over all "
                       f"measured weights (network). "
                       + ("Per-sample gradients with each run's gradient mask: " + ", ".join(masked) + "."
                          if masked else "Plain per-sample gradients (no gradient mask).")))
        b.append(_table(*_gsnr_table(gsnr)))
        if "gsnr" in figures:
            b.append(("img", "GSNR per layer", figures["gsnr"]))
    b.append(("p", "Raw numbers: robustness.json, pruning.csv, fgsm.csv, gsnr.csv."))
    return b


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Non-finite numbers (failed measurements) as empty cells, like ``None``."""
    write_csv(path, header, [[None if isinstance(v, float) and not math.isfinite(v) else v for v in r] for r in rows])


def write_report(results: dict, out: Union[str, os.PathLike]) -> dict[str, Path]:
    """Write the report files for ``results`` into ``out`` (created); returns ``{kind: path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    figures: dict[str, str] = {}
    write_atomic(out / "robustness.json", json.dumps(_json_safe(results), indent=2) + "\n")
    paths["json"] = out / "robustness.json"
    if results.get("pruning"):
        rows = [[name, scheme, c.get("n_images"), p[0], p[1],
                 (c.get("achieved_sparsity") or [None] * len(c["points"]))[i]]
                for name, curves in results["pruning"].items() for scheme, c in curves.items()
                for i, p in enumerate(c["points"])]
        _write_csv(out / "pruning.csv", ["model", "scheme", "n_images", "sparsity", "accuracy", "achieved_sparsity"],
                   rows)
        paths["pruning_csv"] = out / "pruning.csv"
        paths["pruning_png"] = plot_pruning(results["pruning"], out / "pruning.png")
        figures["pruning"] = "pruning.png"
    if results.get("fgsm"):
        f = results["fgsm"]
        rows = [[name, f.get("subset"), f.get("n_images"), e, e / 255.0, a]
                for name, curve in f["curves"].items() for e, a in curve]
        _write_csv(out / "fgsm.csv", ["model", "subset", "n_images", "epsilon_255", "epsilon", "accuracy"], rows)
        paths["fgsm_csv"] = out / "fgsm.csv"
        paths["fgsm_png"] = plot_fgsm(f, out / "fgsm.png")
        figures["fgsm"] = "fgsm.png"
    if results.get("gsnr"):
        rows = [[name, layer, e.get("n_samples"), v] for name, e in results["gsnr"].items()
                for layer, v in e["summary"].items()]
        _write_csv(out / "gsnr.csv", ["model", "layer", "n_samples", "gsnr"], rows)
        paths["gsnr_csv"] = out / "gsnr.csv"
        paths["gsnr_png"] = plot_gsnr_layers(results["gsnr"], out / "gsnr.png")
        figures["gsnr"] = "gsnr.png"
    blocks = _blocks(results, figures)
    write_atomic(out / "robustness.md", render_markdown(blocks))
    write_atomic(out / "robustness.html", render_html(blocks, out))
    paths["markdown"], paths["html"] = out / "robustness.md", out / "robustness.html"
    return paths


__all__ = ["MASK_NOTE", "plot_fgsm", "plot_gsnr", "plot_gsnr_layers", "plot_pruning", "write_report"]
