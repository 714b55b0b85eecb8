"""Geometry diagnostics of a model's image and text embeddings.

What :func:`geometry_diagnostics` reports for an :class:`~euclip.eval.embed.Embeddings`:

* **norms** per modality: the distance from the origin (hyperbolic: from the hyperboloid's vertex) by
  :func:`euclip.geometry.norm_from_origin`, and the norms of the tower outputs before the geometry head (for elliptic
  models the only norm that varies: every point on the sphere has norm 1). Summary statistics and histogram counts
  over shared bin edges, so the two modalities can be drawn on one axis.
* **separation**: the AUC of telling images from texts by their norm, ``P(norm(image) > norm(text))`` (ties count
  one half), computed from ranks (Mann-Whitney U). 0.5: the norms do not separate the modalities; 1: every image
  lies farther out than every text (the partial order MERU aims for, "text is more generic than images").
* **entailment cones** (euclidean and hyperbolic only, whatever the training loss): the fraction of (caption, image)
  pairs whose image lies inside the caption's entailment cone (``entailment_penalty == 0``), and as a baseline the
  same fraction for mismatched pairs (each caption with another image).
* **caption levels** (synthetic data): the mean text norm per caption level 0 (``"a shape"``) .. 4 (every attribute),
  with Spearman's ρ and Kendall's τ-b between level and norm; generic captions should sit closer to the origin
  (positive correlations).
* **effective rank** per modality (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = σ / Σσ`` the normalised singular
  values of the centred embeddings (hyperbolic: of their ``log_map0`` tangent vectors); ``D`` for isotropic
  embeddings, 1 for embeddings on a line.
* **views**: 2-D coordinates of a subsample for plotting: a PCA of images and texts together (projected without
  centring, so the origin stays at ``(0, 0)``), and for hyperbolic models the Poincaré-disk view.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from euclip import geometry as geom
from euclip.eval.embed import Embeddings, norms
from euclip.eval.registry import EvalContext, Metric, register_evaluation
from euclip.geometry.hyperbolic import log_map0, time_component

__all__ = [
    "average_ranks",
    "cone_fraction",
    "effective_rank",
    "embedding_views",
    "geometry",
    "geometry_diagnostics",
    "histograms",
    "kendall_tau_b",
    "level_norms",
    "poincare_disk",
    "rank_auc",
    "spearman",
    "summary_stats",
    "tangent_vectors",
]


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values`` ``(N,)``, tied values sharing the mean of their ranks (mid-ranks), ``(N,)``."""
    v = _numpy(values).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # Boundaries of runs of equal values in sorted order; a run from i to j (exclusive) gets rank (i + 1 + j) / 2.
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v))
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    return ranks


def rank_auc(positive, negative) -> float:
    """``P(positive > negative) + P(tie) / 2`` from ranks (the Mann-Whitney U statistic over ``n_p · n_n``).

    Args:
        positive: ``(n_p,)`` scores of the positive class.
        negative: ``(n_n,)`` scores of the negative class.

    Returns:
        The area under the ROC curve of the score as a classifier of positives, in ``[0, 1]``.
    """
    p, n = _numpy(positive).ravel(), _numpy(negative).ravel()
    if len(p) == 0 or len(n) == 0:
        raise ValueError("rank_auc needs at least one positive and one negative score")
    ranks = average_ranks(np.concatenate([p, n]))
    u = ranks[:len(p)].sum() - len(p) * (len(p) + 1) / 2
    return float(u / (len(p) * len(n)))


def spearman(x, y) -> float:
    """Spearman's rank correlation ρ: Pearson's correlation of the mid-ranks; NaN if either is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) != len(ry):
        raise ValueError(f"x and y differ in length: {len(rx)} != {len(ry)}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def _count_inversions(a: np.ndarray) -> int:
    """Pairs ``i < j`` with ``a[i] > a[j]`` (strictly), by merge sort in ``O(N log N)``."""
    a = list(a)
    inversions = 0
    width = 1
    n = len(a)
    while width < n:
        merged = []
        for lo in range(0, n, 2 * width):
            left, right = a[lo:lo + width], a[lo + width:lo + 2 * width]
            i = j = 0
            while i < len(left) and j < len(right):
                if right[j] < left[i]:
                    inversions += len(left) - i  # right[j] is smaller than every remaining left element
                    merged.append(right[j])
                    j += 1
                else:
                    merged.append(left[i])
                    i += 1
            merged += left[i:] + right[j:]
        a = merged
        width *= 2
    return inversions


def _tied_pairs(v: np.ndarray) -> int:
    _, counts = np.unique(v, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau_b(x, y) -> float:
    """Kendall's τ-b, ties in either variable accounted for, in ``O(N log N)`` (Knight's algorithm).

    ``τ_b = (C − D) / sqrt((n0 − n1)(n0 − n2))`` with ``C``/``D`` the concordant/discordant pairs, ``n0 = N(N−1)/2``
    and ``n1``/``n2`` the pairs tied in ``x``/``y``. NaN if either variable is constant.
    """
    xv, yv = _numpy(x).ravel(), _numpy(y).ravel()
    if len(xv) != len(yv):
        raise ValueError(f"x and y differ in length: {len(xv)} != {len(yv)}")
    n = len(xv)
    n0 = n * (n - 1) // 2
    order = np.lexsort((yv, xv))  # by x, then y
    xs, ys = xv[order], yv[order]
    n1 = _tied_pairs(xs)
    n2 = _tied_pairs(ys)
    joint = np.unique(np.stack([xs, ys], axis=1), axis=0, return_counts=True)[1] if n else np.array([], dtype=int)
    n3 = int((joint * (joint - 1) // 2).sum())
    # Sorted by (x, y), a pair with x_i < x_j is discordant exactly when y_i > y_j: an inversion of ys. Pairs tied in
    # x are in increasing y order and never count.
    discordant = _count_inversions(ys)
    concordant = n0 - n1 - n2 + n3 - discordant
    denominator = math.sqrt((n0 - n1) * (n0 - n2))
    return float((concordant - discordant) / denominator) if denominator > 0 else float("nan")


def effective_rank(x: torch.Tensor) -> float:
    """Entropy-based effective rank (Roy & Vetterli 2007) of the rows of ``x`` ``(N, D)`` after centring.

    ``exp(−Σ p_i log p_i)`` with ``p = σ / ||σ||_1`` the normalised singular values. Between 1 (all variance along
    one direction) and ``min(N, D)`` (equal singular values); 0 for identical rows. Singular values below
    ``σ_max · max(N, D) · eps`` of the input's dtype are rounding noise and left out.
    """
    eps = torch.finfo(x.dtype).eps if x.is_floating_point() else torch.finfo(torch.float64).eps
    x = x.detach().double().cpu()
    s = torch.linalg.svdvals(x - x.mean(0, keepdim=True))
    if s.numel() == 0 or s[0] <= 0:
        return 0.0
    # Singular values at the input's rounding level are noise, not directions (numpy's matrix_rank tolerance):
    # without the cut a float32 rank-1 set would score 1 + 1e-6 per dimension.
    s = s[s > s[0] * max(x.shape) * eps]
    p = s / s.sum()
    p = p[p > 0]  # 0 log 0 = 0
    return float(torch.exp(-(p * p.log()).sum()))


def summary_stats(values) -> dict[str, float]:
    """``{"n", "mean", "std", "min", "p5", "p25", "median", "p75", "p95", "max"}`` of ``values`` ``(N,)``."""
    v = _numpy(values).ravel()
    q = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
    return {"n": len(v), "mean": float(v.mean()), "std": float(v.std()), "min": float(q[0]), "p5": float(q[1]),
            "p25": float(q[2]), "median": float(q[3]), "p75": float(q[4]), "p95": float(q[5]), "max": float(q[6])}


def histograms(image, text, bins: int = 30) -> dict:
    """Counts of both modalities over shared bin edges: ``{"edges": (bins+1,), "image": (bins,), "text": (bins,)}``."""
    a, b = _numpy(image).ravel(), _numpy(text).ravel()
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    if hi - lo < 1e-9 * max(1.0, abs(hi)):  # constant norms (elliptic): a narrow band around the value
        lo, hi = lo - 0.5e-3 * max(1.0, abs(lo)), hi + 0.5e-3 * max(1.0, abs(hi))
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "image": np.histogram(a, edges)[0].tolist(),
            "text": np.histogram(b, edges)[0].tolist()}


def _norm_block(image, text, bins: int) -> dict:
    return {"image": summary_stats(image), "text": summary_stats(text), "histogram": histograms(image, text, bins),
            "auc_image_farther": rank_auc(image, text)}


# ----------------------------------------------------------------------------------------------------------------
# Geometry-specific measures
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def cone_fraction(parent: torch.Tensor, child: torch.Tensor, geometry: str, min_radius: float,
                  curvature: float | torch.Tensor = 1.0, chunk: int = 65536) -> dict[str, float]:
    """How many ``child`` rows lie in the entailment cone of the matching ``parent`` row.

    Args:
        parent: ``(N, D)`` cone apexes (captions: text entails image).
        child: ``(N, D)`` points tested against the cone of the same row.
        geometry: ``"euclidean"`` or ``"hyperbolic"``.
        min_radius: ``K`` of the cones (the run's ``--min-radius``; its final value if scheduled).
        curvature: ``c`` for hyperbolic.
        chunk: rows per call, to bound the temporaries.

    Returns:
        ``{"fraction": share with entailment_penalty == 0, "mean_penalty": mean penalty in radians}``.
    """
    if parent.shape != child.shape or parent.dim() != 2:
        raise ValueError(f"parent and child must both be (N, D), got {tuple(parent.shape)} and {tuple(child.shape)}")
    inside, total_penalty = 0, 0.0
    for start in range(0, parent.shape[0], chunk):
        penalty = geom.entailment_penalty(parent[start:start + chunk], child[start:start + chunk], geometry,
                                          min_radius, curvature)
        inside += int((penalty == 0).sum())
        total_penalty += float(penalty.double().sum())
    n = max(parent.shape[0], 1)
    return {"fraction": inside / n, "mean_penalty": total_penalty / n}


def level_norms(text_norms, levels) -> dict:
    """Mean text norm per caption level, and rank correlations between level and norm.

    Args:
        text_norms: ``(N,)`` a norm per caption.
        levels: ``(N,)`` integer caption level (0 = most generic).

    Returns:
        ``{"per_level": {level: {"mean", "std", "n"}}, "spearman", "kendall"}`` (levels as strings, for JSON).
    """
    t, lv = _numpy(text_norms).ravel(), _numpy(levels).ravel().astype(int)
    per_level = {str(int(k)): {"mean": float(t[lv == k].mean()), "std": float(t[lv == k].std()),
                               "n": int((lv == k).sum())} for k in np.unique(lv)}
    return {"per_level": per_level, "spearman": spearman(lv, t), "kendall": kendall_tau_b(lv, t)}


def tangent_vectors(x: torch.Tensor, geometry: str, curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Vectors in a flat space for linear analyses: ``log_map0`` for hyperbolic points, else the points, ``(N, D)``."""
    if geometry == "hyperbolic":
        return log_map0(x, torch.as_tensor(curvature, dtype=x.dtype))
    return x


def poincare_disk(x: torch.Tensor, curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Hyperboloid space components ``(N, D)`` to the unit Poincaré ball, ``(N, D)`` with norms ``< 1``.

    The Poincaré ball of curvature ``−c`` has radius ``1/sqrt(c)``; scaled to the unit ball the map is
    ``p = sqrt(c) x / (1 + sqrt(c) x_time)``. With ``y = sqrt(c) x``, ``sqrt(c) x_time = sqrt(1 + ||y||²)``, so
    ``||p|| = ||y|| / (1 + sqrt(1 + ||y||²)) < 1``. Geodesic distance from the origin ``r`` maps to ``tanh(r/2)``.
    """
    c = torch.as_tensor(curvature, dtype=x.dtype)
    sqrt_c = c.sqrt()
    return sqrt_c * x / (1 + sqrt_c * time_component(x, c))[..., None]


def _pca_plane(points: torch.Tensor) -> torch.Tensor:
    """The top two principal directions ``(D, 2)`` of ``points`` ``(N, D)`` (fewer columns padded with zeros)."""
    centred = points.double() - points.double().mean(0, keepdim=True)
    # Eigenvectors of the (D, D) scatter matrix: cheaper than an SVD of the (N, D) points for N >> D.
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    plane = torch.zeros(points.shape[1], 2, dtype=torch.float64)
    k = min(2, points.shape[1])
    plane[:, :k] = vectors.flip(1)[:, :k]
    return plane


def _subsample(n: int, m: int) -> torch.Tensor:
    # Evenly spaced, deterministic: the same points in every run of an evaluation.
    return torch.linspace(0, n - 1, min(n, m)).round().long().unique()


def embedding_views(emb: Embeddings, max_points: int = 400) -> dict:
    """2-D coordinates of up to ``max_points`` images and texts for plotting.

    Returns:
        ``{"pca": {"image": [[x, y]..], "text": [[x, y]..], "explained": [..]}, "text_levels": [..] or None,
        "poincare": {...} (hyperbolic only)}``. The PCA directions come from the centred union of both modalities;
        points are projected without centring, so the origin (hyperbolic: the vertex) is at ``(0, 0)`` and the
        Poincaré view stays inside the unit disk (an orthogonal projection never lengthens a vector).
    """
    ii, ti = _subsample(emb.num_images, max_points), _subsample(emb.num_texts, max_points)
    image, text = emb.image[ii].double(), emb.text[ti].double()
    out: dict = {"text_levels": emb.caption_levels[ti].tolist() if emb.caption_levels is not None else None}
    views = {"pca": (image, text)}
    if emb.geometry == "hyperbolic":
        views["poincare"] = (poincare_disk(image, emb.curvature), poincare_disk(text, emb.curvature))
    for name, (a, b) in views.items():
        both = torch.cat([a, b])
        plane = _pca_plane(both)
        variance = ((both - both.mean(0)) @ plane).var(0).sum() / max(float(both.var(0).sum()), 1e-30)
        out[name] = {"image": (a @ plane).round(decimals=4).tolist(), "text": (b @ plane).round(decimals=4).tolist(),
                     "explained_variance": float(variance)}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Everything together
# ----------------------------------------------------------------------------------------------------------------


def geometry_diagnostics(emb: Embeddings, min_radius: float = 0.1, bins: int = 30, view_points: int = 400) -> dict:
    """All diagnostics of the module docstring for one set of embeddings.

    Args:
        emb: image and caption embeddings (with ``caption_levels`` for the per-level report).
        min_radius: ``K`` of the entailment cones.
        bins: histogram bins.
        view_points: points per modality in the 2-D views.

    Returns:
        ``{"norms": {"manifold": .., "tower": ..}, "separation_auc", "cones" (or None), "levels" (or None),
        "effective_rank": {"image", "text", "dim"}, "views"}``.
    """
    image_norm, text_norm = norms(emb)
    result: dict = {"geometry": emb.geometry, "logit": emb.logit, "curvature": emb.curvature,
                    "num_images": emb.num_images, "num_texts": emb.num_texts}
    result["norms"] = {"manifold": _norm_block(image_norm, text_norm, bins),
                       "tower": _norm_block(emb.image_tower_norm, emb.text_tower_norm, bins)}
    # Elliptic points all have norm 1, so what a norm can say lives in the tower outputs.
    informative = "tower" if emb.geometry == "elliptic" else "manifold"
    result["norm_used"] = informative
    result["separation_auc"] = result["norms"][informative]["auc_image_farther"]
    if emb.geometry in geom.CONE_GEOMETRIES:
        matched_images = emb.image[emb.text_to_image]
        # Baseline: each caption against the image of the next caption that describes another image.
        shifted = emb.text_to_image.roll(-1)
        mismatched = emb.image[shifted]
        valid = shifted != emb.text_to_image
        cones = cone_fraction(emb.text, matched_images, emb.geometry, min_radius, emb.curvature)
        cones["min_radius"] = min_radius
        if valid.any():
            baseline = cone_fraction(emb.text[valid], mismatched[valid], emb.geometry, min_radius, emb.curvature)
            cones["fraction_mismatched"] = baseline["fraction"]
        result["cones"] = cones
    else:
        result["cones"] = None
    if emb.caption_levels is not None:
        level_norm = text_norm if informative == "manifold" else emb.text_tower_norm
        result["levels"] = level_norms(level_norm, emb.caption_levels)
        result["levels"]["norm"] = informative
    else:
        result["levels"] = None
    result["effective_rank"] = {
        "image": effective_rank(tangent_vectors(emb.image, emb.geometry, emb.curvature)),
        "text": effective_rank(tangent_vectors(emb.text, emb.geometry, emb.curvature)),
        "dim": emb.image.shape[1],
    }
    result["views"] = embedding_views(emb, view_points)
    return result


def _mean_norm(modality: str):
    def value(result: dict):
        used = result.get("norm_used")
        return result["norms"][used][modality]["mean"] if used else None

    return value


def _level_metric(level: int) -> Metric:
    return Metric(f"text_norm_level{level}", f"mean text norm, level {level}",
                  ("levels", "per_level", str(level), "mean"), "num", None)


@register_evaluation(
    "geometry", title="Geometry", requires=("captions",), settings=("min_radius",),
    summary="norms, modality separation, entailment cones, caption levels, effective rank",
    description="Geometry diagnostics of image and caption embeddings: distance-from-origin (and tower-output) norm "
                "distributions, the AUC of telling images from captions by norm, the fraction of pairs whose image "
                "lies in its caption's entailment cone (euclidean/hyperbolic), the mean caption norm per synthetic "
                "caption level with Spearman/Kendall correlations, the effective rank per modality, and 2-D views "
                "for the report.",
    metrics=(Metric("norm_shown", "norm shown", lambda r: {"tower": "tower output", "manifold": "from origin"}.get(
                 r.get("norm_used")), "str", None),
             Metric("mean_image_norm", "mean image norm", _mean_norm("image"), "num", None),
             Metric("mean_text_norm", "mean text norm", _mean_norm("text"), "num", None),
             Metric("separation_auc", "P(image farther than text)", ("separation_auc",), "num", None),
             Metric("cone_fraction", "images inside their caption's entailment cone", ("cones", "fraction"), "pct"),
             Metric("cone_fraction_mismatched", "… for mismatched pairs", ("cones", "fraction_mismatched"), "pct",
                    False),
             *(_level_metric(level) for level in range(5)),
             Metric("level_spearman", "Spearman(level, text norm)", ("levels", "spearman"), "num"),
             Metric("level_kendall", "Kendall(level, text norm)", ("levels", "kendall"), "num"),
             Metric("effective_rank_image", "effective rank, image", ("effective_rank", "image"), "num", None),
             Metric("effective_rank_text", "effective rank, text", ("effective_rank", "text"), "num", None)),
    examples=("euclip eval geometry runs/meru",
              "euclip eval geometry runs/euclip --dataset-type webdataset --data 'val/{0000..0003}.tar'"))
def geometry(ctx: EvalContext) -> dict:
    emb = ctx.embeddings()
    results = geometry_diagnostics(emb, ctx.min_radius)
    results["skipped_images"] = emb.skipped
    return results
