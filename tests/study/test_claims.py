"""The claims on hand-made sweep tables whose verdicts are known, and the statistics under them."""

from __future__ import annotations

import math

import pytest

from euclip.study.claims import CLAIMS, evaluate_claim, evaluate_claims, verdict
from euclip.study.results import aggregate, mean_ci, t_quantile

CLIP = ("elliptic", "inner", True, 0.0)
EUCLIP = ("euclidean", "squared", False, 0.0)
MERU = ("hyperbolic", "distance", True, 0.2)


def row(setting, seed, **metrics):
    g, lo, ln, ent = setting
    name = f"{g}-{lo}_{'ln' if ln else 'noln'}_ent{ent:g}_s{seed}"
    return {"name": name, "geometry": g, "logit": lo, "final_ln": ln, "entailment": ent, "seed": seed,
            "status": "done", **metrics}


def claim(cid: str):
    return next(c for c in CLAIMS if c.id == cid)


def zeroshot(value):
    return {"zeroshot.top1": value, "zeroshot.color_top1": value, "zeroshot.composition_top1": value}


def test_c1_holds_contradicted_and_inconclusive():
    # EuCLIP beats CLIP by 5 points on every seed (a little noise): holds.
    rows = [row(EUCLIP, s, **zeroshot(0.80 + 0.01 * s)) for s in range(3)]
    rows += [row(CLIP, s, **zeroshot(0.75 + 0.012 * s)) for s in range(3)]
    out = evaluate_claim(claim("C1"), rows)
    assert out["verdict"] == "holds" and out["metrics"][0]["pairs"] == 3
    assert out["metrics"][0]["effect"] == pytest.approx(0.05 - 0.002)
    # EuCLIP 10 points worse on every seed: contradicted.
    rows = [row(EUCLIP, s, **zeroshot(0.70 + 0.01 * s)) for s in range(3)]
    rows += [row(CLIP, s, **zeroshot(0.80 + 0.011 * s)) for s in range(3)]
    assert evaluate_claim(claim("C1"), rows)["verdict"] == "contradicted"
    # Seeds disagree wildly: inconclusive; a single seed: inconclusive (no interval).
    rows = [row(EUCLIP, s, **zeroshot(v)) for s, v in enumerate((0.9, 0.5, 0.9))]
    rows += [row(CLIP, s, **zeroshot(v)) for s, v in enumerate((0.5, 0.9, 0.6))]
    assert evaluate_claim(claim("C1"), rows)["verdict"] == "inconclusive"
    assert evaluate_claim(claim("C1"), rows[:1] + rows[3:4])["verdict"] == "inconclusive"


def test_c1_matches_within_the_margin():
    rows = [row(EUCLIP, s, **zeroshot(0.80 - 0.004 + 0.001 * s)) for s in range(3)]
    rows += [row(CLIP, s, **zeroshot(0.80 + 0.001 * s)) for s in range(3)]
    assert evaluate_claim(claim("C1"), rows, margin=0.01)["verdict"] == "holds"  # 0.4 points worse: matches
    assert evaluate_claim(claim("C1"), rows, margin=0.001)["verdict"] == "contradicted"


def test_c2_lower_is_better_metrics_are_flipped():
    better = {"hierarchy.tie": 0.5, "hierarchy.lca_hycoclip": 1.1, "hierarchy.jaccard_hycoclip": 0.9,
              "hierarchy.hier_precision_inclusive": 0.9, "hierarchy.hier_recall_inclusive": 0.9}
    worse = {"hierarchy.tie": 1.5, "hierarchy.lca_hycoclip": 1.6, "hierarchy.jaccard_hycoclip": 0.7,
             "hierarchy.hier_precision_inclusive": 0.7, "hierarchy.hier_recall_inclusive": 0.7}
    jitter = [0.0, 0.01, 0.02]
    rows = [row(EUCLIP, s, **{k: v + jitter[s] for k, v in better.items()}) for s in range(3)]
    rows += [row(MERU, s, **{k: v + 1.5 * jitter[s] for k, v in worse.items()}) for s in range(3)]
    out = evaluate_claim(claim("C2"), rows)
    assert out["verdict"] == "holds"
    tie = next(m for m in out["metrics"] if m["metric"] == "hierarchy.tie")
    assert tie["effect"] > 0.9 and tie["higher_is_better"] is False


def test_pooled_pairs_of_c3_to_c7():
    rows = []
    for g in ("euclidean", "hyperbolic"):
        for ln in (True, False):
            for ent in (0.0, 0.2):
                for s in range(2):
                    for lo, acc in (("squared", 0.8), ("distance", 0.7)):
                        acc += 0.05 * (not ln) + 0.02 * (ent > 0) + 0.001 * s * (lo == "squared")
                        rows.append(row((g, lo, ln, ent), s, **zeroshot(acc),
                                        **{"geometry.separation_auc": 0.95 if ent else 0.5 + 0.01 * s,
                                           "geometry.level_spearman": 0.3 + 0.01 * s}))
    rows.append(row(("elliptic", "squared", False, 0.0), 0, **zeroshot(0.1)))  # no partner: never paired
    out = {c["id"]: c for c in evaluate_claims(rows)}
    assert out["C3"]["verdict"] == "holds" and out["C3"]["metrics"][0]["pairs"] == 16
    assert out["C4"]["verdict"] == "holds" and out["C4"]["metrics"][0]["effect"] == pytest.approx(0.05, abs=1e-3)
    assert out["C5"]["verdict"] == "holds" and out["C5"]["metrics"][0]["effect"] == pytest.approx(0.9 - 0.01, 1e-6)
    assert out["C6"]["verdict"] == "holds"
    assert out["C7"]["verdict"] == "holds"  # the entailment loss changes nothing in the level/norm order here


def test_c7_contradicted_when_the_entailment_loss_orders_the_levels():
    rows = []
    for s in range(3):
        for ent, rho in ((0.0, 0.1), (0.2, 0.8)):
            rows.append(row(("hyperbolic", "distance", True, ent), s, **{"geometry.level_spearman": rho + 0.01 * s}))
    assert evaluate_claim(claim("C7"), rows)["verdict"] == "contradicted"


def test_verdict_rules():
    assert verdict("gt", 0.01, 0.2, 0.01) == "holds" and verdict("gt", -0.01, 0.2, 0.01) == "inconclusive"
    assert verdict("gt", -0.3, -0.1, 0.01) == "contradicted"
    assert verdict("ge", -0.005, 0.2, 0.01) == "holds" and verdict("ge", -0.3, -0.02, 0.01) == "contradicted"
    assert verdict("le", -0.2, 0.005, 0.01) == "holds" and verdict("le", 0.02, 0.3, 0.01) == "contradicted"
    assert verdict("gt", math.nan, math.nan, 0.01) == "inconclusive"


def test_mean_ci_against_the_closed_form():
    values = [0.70, 0.74, 0.78, 0.80]
    out = mean_ci(values)
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert out["mean"] == pytest.approx(mean) and out["std"] == pytest.approx(std) and out["n"] == 4
    assert out["ci_high"] - mean == pytest.approx(3.182 * std / 2)  # t(0.975, 3) = 3.182
    assert t_quantile(1) == 12.706 and t_quantile(30) == 2.042 and t_quantile(100) == 1.96
    assert math.isnan(mean_ci([0.5])["ci_low"]) and mean_ci([])["n"] == 0


def test_aggregate_groups_seeds():
    rows = [row(EUCLIP, s, **{"zeroshot.top1": 0.5 + 0.1 * s}) for s in range(3)]
    rows += [row(CLIP, 0, **{"zeroshot.top1": 0.2}), {**row(CLIP, 1), "status": "failed"}]
    agg = {(a["geometry"]): a for a in aggregate(rows)}
    assert agg["euclidean"]["seeds"] == [0, 1, 2] and agg["euclidean"]["zeroshot.top1.mean"] == pytest.approx(0.6)
    assert agg["elliptic"]["seeds"] == [0] and agg["elliptic"]["zeroshot.top1.n"] == 1  # the failed run is left out


def test_the_results_page_names_every_command_and_both_times():
    from euclip.study.page import markdown

    text = markdown([], [], ["euclip sweep --grid headline", "euclip sweep --geometries euclidean --extend"],
                    "2026-12-03", 1800.0, [0, 1], {"seconds": 1200.0, "jobs": [2, 3]})
    assert text.startswith("# Results of `euclip sweep --grid headline`\n\nExtended by `euclip sweep --geometries "
                           "euclidean --extend`.")
    assert "seeds [0, 1], 30 min of cell time, 20 min on the clock (2/3 cell(s) at a time)." in text
