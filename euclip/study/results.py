"""A sweep's results: one row per run (its settings and every registered metric), and the aggregate over seeds.

Written into the sweep folder: ``results.csv`` / ``results.json`` (one row per cell: settings, status, the
training summary and every metric of ``results.json``'s flat ``metrics``) and ``aggregate.csv`` /
``aggregate.json`` (one row per setting: for every numeric column the mean, the standard deviation over
seeds and a 95 % confidence interval of the mean, Student's t).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from euclip.runs import RunDir, read_json, write_json
from euclip.study.grid import Cell
from euclip.study.sweep import ERROR, Sweep, cell_status

__all__ = ["aggregate", "collect", "mean_ci", "t_quantile", "write_results"]

SUMMARY_COLUMNS = ("steps", "final_loss", "train_seconds", "samples_per_s", "nonfinite_steps", "logit_scale",
                   "curvature")
SETTING_COLUMNS = ("geometry", "logit", "final_ln", "entailment")
TIMING = {"train_seconds", "samples_per_s"}  # depend on the machine's load, not on the training

# Two-sided 95 % quantiles of Student's t, t(0.975, df), for df = 1..30 (beyond: the normal 1.96, within 2 %).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """t(0.975, df): the half-width of a 95 % interval of a mean is this × std / √n, with df = n − 1."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: list[float]) -> dict[str, float]:
    """``{"mean", "std", "n", "ci_low", "ci_high"}`` of ``values`` (NaN where undefined: one value has no spread)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else math.nan
    half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def row_of(sweep: Sweep, cell: Cell) -> dict:
    """One cell's row: its settings, status, training summary and every flat metric."""
    run = RunDir(sweep.run_dir(cell))
    row = {"name": cell.name, **cell.describe(), "status": cell_status(run.path)}
    summary = read_json(run.summary) or {}
    row.update({k: summary.get(k) for k in SUMMARY_COLUMNS})
    row.update((read_json(run.results) or {}).get("metrics", {}))
    if row["status"] == "failed":
        row["error"] = (run.path / ERROR).read_text().splitlines()[0]
    return row


def collect(sweep: Sweep) -> list[dict]:
    return [row_of(sweep, cell) for cell in sweep.cells()]


def aggregate(rows: list[dict], settings: tuple[str, ...] = SETTING_COLUMNS) -> list[dict]:
    """The finished rows grouped by ``settings`` (the cell's settings but the seed), every other numeric column
    as ``<column>.mean``, ``.std``, ``.n``, ``.ci_low``, ``.ci_high``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple(row.get(k) for k in settings), []).append(row)
    out = []
    for key, members in groups.items():
        agg = dict(zip(settings, key))
        agg["seeds"] = sorted(m["seed"] for m in members)
        columns = dict.fromkeys(k for m in members for k in m if k not in settings and _numeric_metric(k, members))
        for column in columns:
            stats = mean_ci([m.get(column) for m in members])
            agg.update({f"{column}.{s}": v for s, v in stats.items()})
        out.append(agg)
    return out


def _numeric_metric(key: str, rows: list[dict]) -> bool:
    if key == "seed":
        return False
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell_text(r.get(k)) for k in columns})


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def write_results(sweep: Sweep) -> tuple[list[dict], list[dict]]:
    """Collect the rows, aggregate them, and write results.{csv,json} and aggregate.{csv,json}."""
    rows = collect(sweep)
    settings = tuple(k for k in sweep.cells()[0].describe() if k != "seed")
    agg = aggregate(rows, settings)
    write_json(rows, sweep.root / "results.json")
    write_json(agg, sweep.root / "aggregate.json")
    _write_csv(rows, sweep.root / "results.csv")
    if agg:
        _write_csv(agg, sweep.root / "aggregate.csv")
    return rows, agg
