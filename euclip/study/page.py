"""A sweep's results page (``SWEEP/report/index.html``) and its Markdown summary (docs/results.md).

The page: a heat-map per headline metric over the grid (rows geometry × logit, columns final LayerNorm ×
entailment; each cell the mean over seeds), and a panel per claim with the per-pair differences and their
95 % interval. Self-contained like the run report: inline CSS, PNG figures beside it, no scripts.
"""

from __future__ import annotations

import html
import math
import platform
from pathlib import Path

from euclip import geometry as geom
from euclip.eval.report import CSS, _pyplot, _save

__all__ = ["HEATMAP_METRICS", "markdown", "write_page"]

HEATMAP_METRICS = {
    "zeroshot.top1": "shape zero-shot top-1", "zeroshot.color_top1": "colour zero-shot top-1",
    "zeroshot.composition_top1": "colour+shape zero-shot top-1 (180)",
    "zeroshot.heldout_shape_top1": "shape top-1, held-out combinations",
    "retrieval.mean_recall": "retrieval mean recall@1/5/10", "hierarchy.tie": "tree-induced error ↓",
    "hierarchy.jaccard_hycoclip": "Jaccard (HyCoCLIP)", "geometry.separation_auc": "P(image farther than text)",
    "geometry.cone_fraction": "images in their caption's cone", "geometry.level_spearman": "Spearman(level, text norm)",
}
COLUMNS = [(True, 0.0), (True, 0.2), (False, 0.0), (False, 0.2)]


def _grid_values(agg: list[dict], metric: str) -> tuple[list[str], list[list[float]]]:
    rows = [(g, lo) for g in geom.GEOMETRIES for lo in geom.LOGITS
            if any(a["geometry"] == g and a["logit"] == lo for a in agg)]
    values = []
    for g, lo in rows:
        line = []
        for ln, ent in COLUMNS:
            match = [a.get(f"{metric}.mean") for a in agg if (a["geometry"], a["logit"], a["final_ln"],
                                                                a["entailment"]) == (g, lo, ln, ent)]
            line.append(match[0] if match and match[0] is not None else math.nan)
        values.append(line)
    return [f"{g} / {lo}" for g, lo in rows], values


def _heatmap(agg: list[dict], metric: str, title: str, path: Path) -> str | None:
    labels, values = _grid_values(agg, metric)
    if not labels or all(math.isnan(v) for line in values for v in line):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 0.45 * len(labels) + 1.4))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for i, line in enumerate(values):
        for j, v in enumerate(line):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.3g}", ha="center", va="center", fontsize=8,
                    color="white" if not math.isnan(v) and v < (image.norm.vmin + image.norm.vmax) / 2 else "black")
    ax.set_xticks(range(len(COLUMNS)), [f"{'LN' if ln else 'no LN'}\nent {ent:g}" for ln, ent in COLUMNS], fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


def _claim_panel(claim: dict, path: Path) -> str | None:
    metrics = [m for m in claim["metrics"] if m["points"]]
    if not metrics:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(metrics) + 1.3))
    for i, m in enumerate(metrics):
        xs = [p["difference"] for p in m["points"]]
        ax.scatter(xs, [i] * len(xs), s=14, alpha=0.6, color="#1f77b4")
        if not math.isnan(m["ci_low"]):
            ax.plot([m["ci_low"], m["ci_high"]], [i, i], color="k", lw=2)
        ax.plot([m["effect"]], [i], "k|", ms=14)
    ax.axvline(0, color="#b42318", lw=1)
    if claim["kind"] in ("ge", "le"):
        ax.axvline(-claim["margin"] if claim["kind"] == "ge" else claim["margin"], color="#b42318", lw=1, ls="--")
    ax.set_yticks(range(len(metrics)), [m["metric"] for m in metrics], fontsize=8)
    ax.set_xlabel("A − B per pair (positive: the claim's direction)", fontsize=8)
    ax.set_title(f"{claim['id']}: {claim['verdict']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_page(sweep_root: Path, agg: list[dict], claims: list[dict], title: str | None = None) -> Path:
    """Write ``SWEEP/report/index.html`` and its figures; returns the page's path."""
    out = Path(sweep_root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    title = title or f"euclip sweep: {Path(sweep_root).name}"
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>",
             "<h2>Claims</h2><table class='metrics'><thead><tr><th>claim</th><th>the paper</th><th>tested here</th>"
             "<th>verdict</th></tr></thead><tbody>"]
    parts += [f"<tr><td>{esc(c['id'])}</td><td>{esc(c['paper'])}</td><td>{esc(c['statement'])}</td>"
              f"<td><b>{esc(c['verdict'])}</b></td></tr>" for c in claims]
    parts.append("</tbody></table>")
    for c in claims:
        name = _claim_panel(c, out / f"claim_{c['id']}.png")
        if name:
            parts.append(f"<h3>{esc(c['id'])}</h3><p class='meta'>{esc(c['statement'])}</p>"
                         f"<img class='figure' src='{esc(name)}' alt='{esc(c['id'])}'>")
    parts.append("<h2>The grid</h2><p class='meta'>Mean over seeds; – where the cell does not exist or was not "
                 "run.</p><div class='views'>")
    for metric, label in HEATMAP_METRICS.items():
        name = _heatmap(agg, metric, label, out / f"grid_{metric.replace('.', '_')}.png")
        if name:
            parts.append(f"<img class='figure' src='{esc(name)}' alt='{esc(label)}'>")
    parts.append("</div></body></html>\n")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _fmt(mean: float | None, low: float | None, high: float | None, pct: bool) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale, unit = (100, " %") if pct else (1, "")
    text = f"{scale * mean:.1f}{unit}" if pct else f"{mean:.3g}"
    if low is not None and not math.isnan(low):
        half = scale * (high - low) / 2
        text += f" ± {half:.1f}" if pct else f" ± {half:.2g}"
    return text


TABLE_METRICS = {"zeroshot.top1": True, "zeroshot.color_top1": True, "zeroshot.composition_top1": True,
                 "zeroshot.heldout_shape_top1": True, "retrieval.mean_recall": True, "hierarchy.tie": False,
                 "geometry.separation_auc": False, "geometry.level_spearman": False}


def markdown(agg: list[dict], claims: list[dict], commands: list[str], date: str, seconds: float | None,
             seeds: list[int], wall: dict | None = None) -> str:
    """docs/results.md: machine, commands, date, seeds, the grid table and each claim's verdict.

    ``commands``: the ``euclip sweep`` commands that made the folder, the first one and those that extended it.

    ``seconds``: the cells' times summed; ``wall``: :func:`euclip.study.sweep.wall_time` (the clock time of the
    ``euclip sweep`` commands that ran them, with how many cells ran at a time)."""
    timing = f", {seconds / 60:.0f} min of cell time" if seconds else ""
    if wall:
        jobs = "/".join(map(str, wall["jobs"]))
        timing += f", {wall['seconds'] / 60:.0f} min on the clock ({jobs} cell(s) at a time)"
    lines = [f"# Results of `{commands[0]}`", ""]
    if len(commands) > 1:
        lines += ["Extended by " + ", ".join(f"`{c}`" for c in commands[1:]) + ".", ""]
    lines += [
             f"Produced on {date} on {platform.machine()} ({_cpu()}, no GPU, float32), seeds {seeds}{timing}.", "",
             "Each value: the mean over seeds ± half its 95 % interval (Student's t).", "",
             "| geometry | logit | final LN | entailment | " + " | ".join(TABLE_METRICS) + " |",
             "|---|---|---|---|" + "---:|" * len(TABLE_METRICS)]
    for a in agg:
        cells = [_fmt(a.get(f"{m}.mean"), a.get(f"{m}.ci_low"), a.get(f"{m}.ci_high"), pct)
                 for m, pct in TABLE_METRICS.items()]
        lines.append(f"| {a['geometry']} | {a['logit']} | {'yes' if a['final_ln'] else 'no'} | {a['entailment']:g} | "
                     + " | ".join(cells) + " |")
    lines += ["", "## The paper's claims", "", "| claim | the paper says | tested here | effect (95 % interval) | "
              "verdict |", "|---|---|---|---|---|"]
    for c in claims:
        effects = "; ".join(f"{m['metric']}: {m['effect']:+.3g} [{m['ci_low']:+.3g}, {m['ci_high']:+.3g}], "
                            f"{m['pairs']} pairs" for m in c["metrics"] if m["pairs"])
        lines.append(f"| {c['id']} | {c['paper']} | {c['statement']} | {effects or 'no pairs'} | **{c['verdict']}** |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    import os

    return f"{os.cpu_count()} CPU cores"
