"""The paper's claims as paired comparisons over a sweep's seeds, each with an effect size, a 95 % interval and a
verdict.

A claim compares runs A and B that differ only in what the claim is about and share their seed (paired: same
data order, same initial towers). For each metric the effect is the mean over pairs of ``A − B``, signed so that
a positive effect is in the claim's direction (for lower-is-better metrics, ``B − A``), with a 95 % Student-t
interval over the pairs (pairs pooled over cells and seeds are treated as independent). Verdicts, with a
tolerance ``margin`` in the metric's units (default 0.01, one point of accuracy):

* ``gt`` (A beats B): holds if the interval lies above 0, contradicted if it lies below 0;
* ``ge`` (A matches or beats B): holds if the interval lies above ``−margin``, contradicted if below it;
* ``le`` (A does not exceed B): holds if the interval lies below ``+margin``, contradicted if above it;

otherwise, and with fewer than two pairs, inconclusive. A claim over several metrics holds if every metric's
verdict holds, is contradicted if any is, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from euclip.study.results import mean_ci

__all__ = ["CLAIMS", "Claim", "evaluate_claims", "verdict"]

ZEROSHOT = ("zeroshot.top1", "zeroshot.color_top1", "zeroshot.composition_top1")
HIERARCHY = {"hierarchy.tie": False, "hierarchy.lca_hycoclip": False, "hierarchy.jaccard_hycoclip": True,
             "hierarchy.hier_precision_inclusive": True, "hierarchy.hier_recall_inclusive": True}
CONES = ("euclidean", "hyperbolic")


def _separation(row: dict) -> float | None:
    """How far the norms separate images from texts: |2·AUC − 1| (0: not at all, 1: completely)."""
    auc = row.get("geometry.separation_auc")
    return None if auc is None else abs(2 * auc - 1)


# metric name -> (how to read it from a row, higher is better)
DERIVED: dict[str, tuple[Callable[[dict], float | None], bool]] = {"modality separation |2·AUC−1|": (_separation, True)}


def _is(row: dict, geometry=None, logit=None, final_ln=None, entailment=None) -> bool:
    return all(value is None or row.get(key) == value for key, value in
               (("geometry", geometry), ("logit", logit), ("final_ln", final_ln), ("entailment", entailment)))


def _key(row: dict, *ignore: str) -> tuple:
    return tuple((k, v) for k, v in sorted(row.items()) if k in _SETTINGS and k not in ignore)


_SETTINGS = {"geometry", "logit", "final_ln", "entailment", "seed", "embed_dim", "model", "train_num_samples",
             "steps"}


def _pairs_between(a: dict, b: dict) -> Callable[[list[dict]], list[tuple[dict, dict]]]:
    """Pairs of fixed cells A (``a``'s settings) and B, seed by seed (and by every axis beyond the paper)."""
    def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
        ignore = ("geometry", "logit", "final_ln", "entailment")
        bs = {_key(r, *ignore): r for r in rows if _is(r, **b)}
        return [(r, bs[_key(r, *ignore)]) for r in rows if _is(r, **a) and _key(r, *ignore) in bs]

    return pairs


def _pairs_varying(axis: str, a_value, b_value, geometries: tuple[str, ...] = CONES):
    """Pairs of runs that differ only in ``axis`` (A: ``a_value``, B: ``b_value``), within ``geometries``."""
    def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
        bs = {_key(r, axis): r for r in rows if r.get(axis) == b_value and r.get("geometry") in geometries}
        return [(r, bs[_key(r, axis)]) for r in rows
                if r.get(axis) == a_value and r.get("geometry") in geometries and _key(r, axis) in bs]

    return pairs


EUCLIP = dict(geometry="euclidean", logit="squared", final_ln=False, entailment=0.0)
CLIP = dict(geometry="elliptic", logit="inner", final_ln=True, entailment=0.0)
MERU = dict(geometry="hyperbolic", logit="distance", final_ln=True, entailment=0.2)


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str  # what is compared, in euclip's terms
    paper: str  # the paper's statement
    kind: str  # "gt", "ge" or "le" (see the module docstring)
    metrics: tuple[str, ...] | dict[str, bool]  # flat metric keys (→ higher is better), or DERIVED names
    pairs: Callable[[list[dict]], list[tuple[dict, dict]]]


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "EuCLIP (euclidean, squared, no final LN) ≥ CLIP (elliptic, inner, final LN) in zero-shot accuracy",
          "EuCLIP matches or outperforms CLIP in zero-shot classification", "ge", ZEROSHOT,
          _pairs_between(EUCLIP, CLIP)),
    Claim("C2", "EuCLIP's hierarchy metrics ≥ MERU's (hyperbolic, distance, final LN, entailment 0.2)",
          "EuCLIP supports hierarchical relationships at least as well as MERU", "ge", HIERARCHY,
          _pairs_between(EUCLIP, MERU)),
    Claim("C3", "the squared-distance logit ≥ the distance logit (euclidean and hyperbolic, all other settings "
          "paired)", "negative squared distance performs at least as well as negative distance", "ge", ZEROSHOT,
          _pairs_varying("logit", "squared", "distance")),
    Claim("C4", "without the final LayerNorm > with it, for the norm-carrying geometries (euclidean, hyperbolic)",
          "removing the final LayerNorm helps when the geometry uses the norm", "gt", ZEROSHOT,
          _pairs_varying("final_ln", False, True)),
    Claim("C5", "the entailment loss separates text from image norms: separation with > without (cone geometries)",
          "text and image embeddings are separated only with the entailment loss", "gt",
          ("modality separation |2·AUC−1|",), _pairs_varying("entailment", 0.2, 0.0)),
    Claim("C6", "the entailment loss improves zero-shot accuracy (cone geometries, paired)",
          "the entailment loss improves zero-shot performance", "gt", ZEROSHOT,
          _pairs_varying("entailment", 0.2, 0.0)),
    Claim("C7", "the entailment loss does not order caption norms by caption level: Spearman(level, text norm) with "
          "≤ without", "the entailment loss does not arrange captions in concentric rings around the root", "le",
          ("geometry.level_spearman",), _pairs_varying("entailment", 0.2, 0.0)),
)


def verdict(kind: str, ci_low: float, ci_high: float, margin: float) -> str:
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    if kind == "gt":
        return "holds" if ci_low > 0 else "contradicted" if ci_high < 0 else "inconclusive"
    if kind == "ge":
        return "holds" if ci_low > -margin else "contradicted" if ci_high < -margin else "inconclusive"
    if kind == "le":
        return "holds" if ci_high < margin else "contradicted" if ci_low > margin else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}")


def _reader(metric: str, metrics: tuple[str, ...] | dict[str, bool]) -> tuple[Callable[[dict], float | None], bool]:
    if metric in DERIVED:
        return DERIVED[metric]
    if isinstance(metrics, dict):
        return (lambda row: row.get(metric)), metrics[metric]
    return (lambda row: row.get(metric)), True


def evaluate_claim(claim: Claim, rows: list[dict], margin: float = 0.01) -> dict:
    """One claim's verdict with, per metric, the effect, its 95 % interval and the per-pair differences."""
    pairs = claim.pairs([r for r in rows if r.get("status", "done") == "done"])
    results = []
    for metric in claim.metrics:
        read, higher = _reader(metric, claim.metrics)
        sign = 1.0 if higher else -1.0
        points = [{"a": a["name"], "b": b["name"], "seed": a.get("seed"), "difference": sign * (read(a) - read(b))}
                  for a, b in pairs if read(a) is not None and read(b) is not None]
        stats = mean_ci([p["difference"] for p in points])
        results.append({"metric": metric, "higher_is_better": higher, "effect": stats["mean"],
                        "ci_low": stats["ci_low"], "ci_high": stats["ci_high"], "pairs": stats["n"],
                        "verdict": verdict(claim.kind, stats["ci_low"], stats["ci_high"], margin), "points": points})
    verdicts = [m["verdict"] for m in results]
    overall = ("holds" if verdicts and all(v == "holds" for v in verdicts) else
               "contradicted" if "contradicted" in verdicts else "inconclusive")
    return {"id": claim.id, "statement": claim.statement, "paper": claim.paper, "kind": claim.kind,
            "verdict": overall, "metrics": results, "margin": margin}


def evaluate_claims(rows: list[dict], margin: float = 0.01, claims: tuple[Claim, ...] = CLAIMS) -> list[dict]:
    """Every claim's :func:`evaluate_claim` on a sweep's rows (``results.json``)."""
    return [evaluate_claim(claim, rows, margin) for claim in claims]
