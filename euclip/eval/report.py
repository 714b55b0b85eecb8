"""``euclip report``: one self-contained HTML page that puts runs side by side.

The page (``index.html``) has inline CSS and no scripts, fonts or anything else from the network; its figures are
PNG files next to it, drawn with matplotlib's Agg backend. It shows, for every run:

* a metrics table: the run's settings, then a section per registered evaluation (:mod:`euclip.eval.registry`:
  zero-shot, retrieval, hierarchy metrics, geometry diagnostics, traversals, and whatever is registered next) with
  its metrics, from ``results.json`` (:func:`euclip.eval.runner.evaluate_run`) or, where that lacks an evaluation,
  from the run's ``eval_<name>_*.json`` files;
* training curves from ``metrics.jsonl``: loss, logit scale, mean embedding norms;
* norm histograms per modality, the mean caption norm per caption level, cone satisfaction;
* 2-D embedding views: PCA of images and captions, and for hyperbolic runs the Poincaré disk;
* traversal examples, captions on the image's true ancestor chain in green.

Everything in the table is also written to ``report.json``. Only what a run directory holds is shown: a missing
file leaves its rows blank (``–``) and its figure out.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from euclip.eval.registry import evaluations
from euclip.runs import RunDir, read_json

__all__ = ["load_run", "metrics_table", "write_report"]

IMAGE_COLOR, TEXT_COLOR = "#1f77b4", "#ff7f0e"
RUN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


# ----------------------------------------------------------------------------------------------------------------
# Reading run directories
# ----------------------------------------------------------------------------------------------------------------


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a crash mid-write
                continue
    return rows


def _first_eval_file(run: RunDir, name: str) -> dict | None:
    # A single `euclip eval NAME` result, the synthetic test split's first (comparable across runs).
    for f in run.eval_files(name):
        data = read_json(f)
        if isinstance(data, dict):
            data.setdefault("source_file", f.name)
            return data
    return None


def load_run(run_dir: str | Path) -> dict:
    """Everything the report uses from one run directory (missing files give ``None`` / empty lists).

    Returns:
        ``{"dir", "name", "config", "summary", "metrics", "evaluations": {name: result or None}}``, each registered
        evaluation's result from ``results.json`` or, where that lacks it, from the run's ``eval_<name>_*.json``.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"no such run directory: {run.path}")
    results = read_json(run.results) or {}
    stored = results.get("evaluations") or {}
    out = {"dir": str(run.path), "name": run.name, "config": run.read_config(),
           "summary": read_json(run.summary) or {}, "metrics": _read_metrics(run.metrics), "evaluations": {}}
    for name in evaluations():
        result = stored.get(name)
        if result is not None:
            result = {**result, "source_file": RunDir.RESULTS}
        out["evaluations"][name] = result or _first_eval_file(run, name)
    if not out["config"] and results.get("model"):
        out["config"] = {"model": results["model"].get("config", {})}
    return out


# ----------------------------------------------------------------------------------------------------------------
# The metrics table
# ----------------------------------------------------------------------------------------------------------------


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def metrics_table(run: dict) -> dict[str, dict[str, tuple[object, str]]]:
    """``{section: {row label: (value, format)}}`` for one run: its settings, then one section per registered
    evaluation with that evaluation's metrics.

    The format is ``"pct"`` (a fraction shown as a percentage), ``"num"``, ``"int"`` or ``"str"``.
    """
    cfg, model = run["config"], run["config"].get("model", {})
    table: dict[str, dict[str, tuple[object, str]]] = {}
    table["Run"] = {
        "preset": (cfg.get("preset"), "str"), "geometry": (model.get("geometry"), "str"),
        "logit": (model.get("logit"), "str"), "final LayerNorm": (model.get("final_ln"), "str"),
        "loss": (cfg.get("loss"), "str"), "entailment weight": (cfg.get("entailment_weight"), "num"),
        "steps": (run["summary"].get("steps") or cfg.get("steps"), "int"),
        "batch size": (cfg.get("batch_size"), "int"),
        "final loss": (run["summary"].get("final_loss"), "num"),
        "logit scale t": (run["summary"].get("logit_scale"), "num"),
        "curvature c": (run["summary"].get("curvature"), "num"),
    }
    for name, evaluation in evaluations().items():
        result = run["evaluations"].get(name)
        table[evaluation.title] = {m.label: (m.value(result), m.fmt) for m in evaluation.metrics}
    return table


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "int":
        return f"{int(value):d}"
    if kind == "num":
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return "yes" if value is True else "no" if value is False else str(value)


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI backend import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path.name


def _plot_curves(runs: list[dict], path: Path) -> str | None:
    if not any(r["metrics"] for r in runs):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for i, r in enumerate(runs):
        rows, color = r["metrics"], RUN_COLORS[i % len(RUN_COLORS)]
        steps = [m.get("step") for m in rows]
        for ax, key, style in ((axes[0], "loss", "-"), (axes[1], "logit_scale", "-"),
                               (axes[2], "norm_image", "-"), (axes[2], "norm_text", "--")):
            ys = [m.get(key) for m in rows]
            pts = [(s, y) for s, y in zip(steps, ys) if s is not None and isinstance(y, (int, float))]
            if pts:
                label = r["label"] if key not in ("norm_image", "norm_text") else f"{r['label']} ({key[5:]})"
                ax.plot(*zip(*pts), style, color=color, label=label, lw=1.5)
    for ax, title in zip(axes, ("training loss", "logit scale t", "mean distance from origin (— image, -- text)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_norms(runs: list[dict], path: Path) -> str | None:
    shown = [r for r in runs if _get(r["evaluations"]["geometry"], "norm_used")]
    if not shown:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.3 * len(shown), 3.2), squeeze=False)
    for ax, r in zip(axes[0], shown):
        used = r["evaluations"]["geometry"]["norm_used"]
        h = r["evaluations"]["geometry"]["norms"][used]["histogram"]
        for modality, color in (("image", IMAGE_COLOR), ("text", TEXT_COLOR)):
            ax.stairs(h[modality], h["edges"], fill=True, alpha=0.5, color=color, label=modality)
        ax.set_title(f"{r['label']} ({r['evaluations']['geometry']['geometry']})", fontsize=10)
        ax.set_xlabel("tower-output norm (before normalisation)" if used == "tower" else "distance from origin",
                      fontsize=9)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def _plot_levels_and_cones(runs: list[dict], path: Path) -> str | None:
    with_levels = [r for r in runs if _get(r["evaluations"]["geometry"], "levels", "per_level")]
    with_cones = [r for r in runs if _get(r["evaluations"]["geometry"], "cones", "fraction") is not None]
    if not with_levels and not with_cones:
        return None
    plt = _pyplot()
    n = len(with_levels) + (1 if with_cones else 0)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    # One panel per run, in its own units: geometries measure norms differently, the trend is what compares.
    for ax, r in zip(axes[0], with_levels):
        lv = r["evaluations"]["geometry"]["levels"]
        per = lv["per_level"]
        levels = sorted(per, key=int)
        means = [per[k]["mean"] for k in levels]
        stds = [per[k]["std"] for k in levels]
        color = RUN_COLORS[runs.index(r) % len(RUN_COLORS)]
        ax.errorbar([int(k) for k in levels], means, yerr=stds, fmt="o-", color=color, capsize=3)
        ax.set_title(f"{r['label']}: Spearman {lv['spearman']:.2f}", fontsize=10)
        ax.set_xlabel("caption level (0 generic … 4 specific)", fontsize=9)
        ax.set_xticks(range(5))
        ax.grid(alpha=0.3)
    if with_levels:
        axes[0][0].set_ylabel("mean caption norm (± std)", fontsize=9)
    if with_cones:
        ax_c = axes[0][-1]
        names = [r["label"] for r in with_cones]
        matched = [r["evaluations"]["geometry"]["cones"]["fraction"] for r in with_cones]
        mismatched = [r["evaluations"]["geometry"]["cones"].get("fraction_mismatched") or 0.0 for r in with_cones]
        x = list(range(len(names)))
        ax_c.bar([i - 0.2 for i in x], matched, 0.4, label="own image", color="#2ca02c")
        ax_c.bar([i + 0.2 for i in x], mismatched, 0.4, label="another image", color="#7f7f7f")
        ax_c.set_xticks(x, names, fontsize=9)
        ax_c.set_ylim(0, 1)
        for bars in ax_c.containers:
            ax_c.bar_label(bars, labels=[f"{100 * b.get_height():.0f}%" for b in bars], fontsize=8)
        ax_c.set_title("image inside caption's cone", fontsize=10)
        ax_c.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_views(run: dict, path: Path) -> str | None:
    views = _get(run["evaluations"]["geometry"], "views")
    if not views or "pca" not in views:
        return None
    plt = _pyplot()
    panels = [("pca", "PCA of images and captions")]
    if "poincare" in views:
        panels.append(("poincare", "Poincaré disk (PCA plane)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    levels = views.get("text_levels")
    from matplotlib.colors import ListedColormap

    # Five discrete levels from orange to dark red (the colormap's near-white start would vanish on white).
    level_cmap = ListedColormap(plt.get_cmap("YlOrRd")(np.linspace(0.35, 1.0, 5)))
    for ax, (key, title) in zip(axes[0], panels):
        v = views[key]
        if v["image"]:
            xs, ys = zip(*v["image"])
            ax.scatter(xs, ys, s=12, color=IMAGE_COLOR, alpha=0.6, label="image", linewidths=0)
        if v["text"]:
            xs, ys = zip(*v["text"])
            if levels:
                sc = ax.scatter(xs, ys, s=16, c=levels, cmap=level_cmap, vmin=-0.5, vmax=4.5, alpha=0.85, marker="^",
                                linewidths=0, label="caption (colour = level)")
                fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="caption level", ticks=range(5))
            else:
                ax.scatter(xs, ys, s=16, color=TEXT_COLOR, alpha=0.7, marker="^", linewidths=0, label="caption")
        ax.plot([0], [0], "k+", ms=10, mew=1.5, label="origin")
        if key == "poincare":
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="k", lw=1))
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal", adjustable="datalim" if key == "pca" else "box")
        ax.set_title(f"{run['label']}: {title}", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; font-size: 0.9em; }
table.metrics { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
table.metrics th, table.metrics td { padding: 3px 12px; border-bottom: 1px solid #eee; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; color: #444; }
table.metrics thead th { border-bottom: 2px solid #888; }
table.metrics tr.section td { font-weight: bold; text-align: left; background: #f4f6f8; color: #222; }
img.figure { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
.views { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
ul.walks { font-size: 0.88em; padding-left: 1.2em; } ul.walks li { margin: 3px 0; }
.on { color: #1a7f37; } .off { color: #b42318; } .tag { color: #666; font-family: monospace; }
"""


def _unique_labels(runs: list[dict]) -> None:
    names = [r["name"] for r in runs]
    for r in runs:
        r["label"] = r["name"] if names.count(r["name"]) == 1 else f"{Path(r['dir']).parent.name}/{r['name']}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _table_html(runs: list[dict], tables: list[dict]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(r['label'])}</th>" for r in runs)
    rows = [f"<table class='metrics'><thead><tr><th>metric</th>{head}</tr></thead><tbody>"]
    for section in tables[0]:
        labels = list(dict.fromkeys(label for t in tables for label in t[section]))
        rows.append(f"<tr class='section'><td colspan='{len(runs) + 1}'>{esc(section)}</td></tr>")
        for label in labels:
            cells = "".join(f"<td>{esc(_fmt(*t[section].get(label, (None, 'str'))))}</td>" for t in tables)
            rows.append(f"<tr><td>{esc(label)}</td>{cells}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _walks_html(run: dict, limit: int = 8) -> str:
    esc = html.escape
    examples = (_get(run["evaluations"]["traversal"], "examples") or [])[:limit]
    if not examples:
        return ""
    items = []
    for ex in examples:
        im = ex["image"]
        steps = " → ".join(f"<span class='{'on' if w['on_path'] else 'off'}'>{esc(w['caption'])}</span>"
                           f"<span class='tag'> [{w['level']}]</span>" for w in ex["walk"])
        items.append(f"<li><b>{esc(im.get('color', ''))} {esc(im.get('shape', ''))}</b>: {steps}</li>")
    root = esc(str(_get(run["evaluations"]["traversal"], "root") or ""))
    return (f"<h3>{esc(run['label'])} <span class='meta'>(walk to: {root})</span></h3>"
            f"<ul class='walks'>{''.join(items)}</ul>")


def _figures_html(figures: dict[str, str | None], views: dict[str, str | None], runs: list[dict]) -> list[str]:
    """The page's figure sections (those drawn), the 2-D views and the traversal examples."""
    esc = html.escape
    parts: list[str] = []

    def figure(name: str | None, alt: str, heading: str, note: str = "") -> None:
        if name:
            parts.append(f"<h2>{esc(heading)}</h2>")
            if note:
                parts.append(f"<p class='meta'>{esc(note)}</p>")
            parts.append(f"<img class='figure' src='{esc(name)}' alt='{esc(alt)}'>")

    figure(figures["curves"], "training curves", "Training curves", "From each run's metrics.jsonl.")
    figure(figures["norms"], "norm histograms", "Norms per modality",
           "Generic text should sit closer to the origin than images (MERU's partial order).")
    figure(figures["levels"], "caption levels and cones", "Caption levels and entailment cones",
           "Mean caption norm per caption level, per run in its own units; it should rise with specificity. Last "
           "panel: fraction of (caption, image) pairs whose image lies inside the caption's entailment cone, for "
           "every euclidean and hyperbolic run whether or not it was trained with the entailment loss.")
    shown = [(label, name) for label, name in views.items() if name]
    if shown:
        parts.append("<h2>Embeddings in 2-D</h2><p class='meta'>Circles: images; triangles: captions, coloured by "
                     "caption level. Directions from a PCA of both modalities; the origin stays at (0, 0). Hyperbolic "
                     "runs also show the Poincaré disk.</p><div class='views'>")
        parts += [f"<img class='figure' src='{esc(name)}' alt='{esc(label)} embeddings'>" for label, name in shown]
        parts.append("</div>")
    walks = [w for w in (_walks_html(r) for r in runs) if w]
    if walks:
        parts.append("<h2>Traversal examples</h2><p class='meta'>From each image toward the root; each caption is the "
                     "best match at a step (repeats removed), with its level in brackets. <span class='on'>Green"
                     "</span>: names the image's shape, its family or the root; <span class='off'>red</span>: off "
                     "the image's ancestor chain.</p>")
        parts += walks
    return parts


def write_report(run_dirs: list[str | Path], out_dir: str | Path, title: str | None = None) -> Path:
    """Write ``out_dir/index.html``, ``out_dir/report.json`` and the PNG figures for ``run_dirs``.

    Args:
        run_dirs: run directories, shown left to right in this order.
        out_dir: the report folder (created).
        title: page title (default: "euclip report: <run names>").

    Returns:
        The path of ``index.html``.

    Raises:
        ValueError: no runs.
        FileNotFoundError: a run directory does not exist.
    """
    if not run_dirs:
        raise ValueError("the report needs at least one run directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    _unique_labels(runs)
    tables = [metrics_table(r) for r in runs]
    title = title or "euclip report: " + ", ".join(r["label"] for r in runs)
    esc = html.escape

    figures = {"curves": _plot_curves(runs, out / "curves.png"), "norms": _plot_norms(runs, out / "norms.png"),
               "levels": _plot_levels_and_cones(runs, out / "levels_cones.png")}
    views = {r["label"]: _plot_views(r, out / f"views_{_slug(r['label'])}.png") for r in runs}

    head = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>")
    parts = [head,
             f"<h1>{esc(title)}</h1>",
             "<p class='meta'>" + " · ".join(esc(r["dir"]) for r in runs) + "</p>",
             "<h2>Metrics</h2>",
             ("<p class='meta'>Zero-shot, retrieval, hierarchy and diagnostics on the synthetic test split unless the "
              "run's evaluation files say otherwise (report.json holds the source of each). ↓: lower is better. "
              "Norms are distances from the origin (hyperbolic: from the vertex); elliptic runs show tower-output "
              "norms, as every point on the sphere has norm 1.</p>"),
             _table_html(runs, tables)]

    parts += _figures_html(figures, views, runs)
    parts.append("</body></html>\n")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")

    report = {"title": title, "figures": {k: v for k, v in figures.items() if v} | {f"views:{k}": v
                                                                                   for k, v in views.items() if v},
              "runs": [{"label": r["label"], "dir": r["dir"], "config": r["config"],
                        "sources": {k: _get(v, "source_file") for k, v in r["evaluations"].items()},
                        "metrics": {section: {label: v for label, (v, _) in rows.items()}
                                    for section, rows in table.items()}}
                       for r, table in zip(runs, tables)]}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return page
