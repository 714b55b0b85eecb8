"""Geometry diagnostics: every statistic against hand-computed values on toy embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from euclip import geometry as geom
from euclip.eval.diagnostics import (
    average_ranks,
    cone_fraction,
    effective_rank,
    embedding_views,
    geometry_diagnostics,
    histograms,
    kendall_tau_b,
    level_norms,
    poincare_disk,
    rank_auc,
    spearman,
    summary_stats,
)
from euclip.eval.embed import Embeddings

# ---------------------------------------------------------------------------------------------------------------
# Ranks, AUC, correlations
# ---------------------------------------------------------------------------------------------------------------


def test_average_ranks_with_ties():
    # sorted: 1 (rank 1), 2 2 (ranks 2, 3 -> 2.5 each), 5 (rank 4)
    assert average_ranks([5, 2, 1, 2]).tolist() == [4.0, 2.5, 1.0, 2.5]


def test_rank_auc_hand_example():
    # images [3, 1] vs texts [2, 0.5]: pairs (3>2) (3>0.5) (1<2) (1>0.5) -> 3 of 4.
    # Ranks of [3, 1, 2, 0.5] = [4, 2, 3, 1]; U = (4 + 2) - 2·3/2 = 3; AUC = 3 / (2·2) = 0.75.
    assert rank_auc([3.0, 1.0], [2.0, 0.5]) == 0.75
    assert rank_auc([2.0, 0.5], [3.0, 1.0]) == 0.25


def test_rank_auc_ties_count_half():
    # One tie (1 vs 1) and one win (2 > 1): (1 + 0.5) / 2.
    assert rank_auc([1.0, 2.0], [1.0]) == 0.75
    assert rank_auc([1.0], [1.0]) == 0.5


def test_rank_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert rank_auc(pos, neg) == pytest.approx(pairwise)


def test_spearman_hand_example():
    # d = [0, 1, 1, 0]: rho = 1 - 6·Σd² / (n(n² - 1)) = 1 - 12/60 = 0.8.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_kendall_hand_examples():
    # (1,1) (2,3) (3,2) (4,4): of 6 pairs only (2,3)-(3,2) is discordant: tau = (5 - 1) / 6.
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # Ties: x = [0, 0, 1, 1], y = [1, 2, 3, 3]. Pair (1,2) tied in x, (3,4) tied in y, the other 4 concordant.
    # n0 = 6, n1 = 2 (two x-groups of 2), n2 = 1: tau_b = 4 / sqrt((6 - 2)(6 - 1)) = 4 / sqrt(20).
    assert kendall_tau_b([0, 0, 1, 1], [1, 2, 3, 3]) == pytest.approx(4 / math.sqrt(20))
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_kendall_matches_quadratic_definition():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 60), rng.integers(0, 7, 60)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(60, 1)
    s = (sx * sy)[iu].sum()
    n0 = len(iu[0])
    n1, n2 = (sx[iu] == 0).sum(), (sy[iu] == 0).sum()
    assert kendall_tau_b(x, y) == pytest.approx(s / math.sqrt((n0 - n1) * (n0 - n2)))


# ---------------------------------------------------------------------------------------------------------------
# Effective rank
# ---------------------------------------------------------------------------------------------------------------


def test_effective_rank_isotropic_is_dimension():
    d = 7
    x = torch.cat([torch.eye(d), -torch.eye(d)])  # centred, all singular values sqrt(2)
    assert effective_rank(x) == pytest.approx(d)


def test_effective_rank_of_a_line_is_one():
    t = torch.linspace(-1, 1, 11)[:, None]
    assert effective_rank(t * torch.tensor([[1.0, 2.0, -3.0, 0.5]]) + 5.0) == pytest.approx(1.0)


def test_effective_rank_known_spectrum():
    # Rows ±3 e1, ±1 e2: singular values 3·sqrt(2), sqrt(2) -> p = (3/4, 1/4), exp(H) = exp(-(.75 ln .75 + .25 ln .25)).
    x = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(x) == pytest.approx(expected)  # ≈ 1.7548
    assert effective_rank(torch.ones(4, 3)) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Cones
# ---------------------------------------------------------------------------------------------------------------


def test_cone_fraction_euclidean_on_and_off_axis():
    # Cone at (1, 0) with K = 0.1: half-aperture asin(0.1) ≈ 0.1002 rad around the ray from the origin.
    parent = torch.tensor([[1.0, 0.0]] * 4)
    child = torch.tensor([[2.0, 0.0],  # on the axis: inside
                          [2.0, 0.05],  # angle atan(0.05) ≈ 0.05 < 0.1: inside
                          [1.0, 1.0],  # 90°: outside
                          [0.5, 0.0]])  # toward the origin (180°): outside
    out = cone_fraction(parent, child, "euclidean", 0.1)
    assert out["fraction"] == 0.5
    expected_penalty = (math.pi / 2 - math.asin(0.1)) + (math.pi - math.asin(0.1))
    assert out["mean_penalty"] == pytest.approx(expected_penalty / 4, rel=1e-5)


def test_cone_fraction_hyperbolic():
    parent = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    child = torch.tensor([[3.0, 0.0],  # farther out on the same geodesic through the origin: inside
                          [-1.0, 0.0],  # on the other side of the origin: outside
                          [0.0, 5.0]])  # inside
    out = cone_fraction(parent, child, "hyperbolic", 0.1, curvature=1.0)
    assert out["fraction"] == pytest.approx(2 / 3)


def test_cone_fraction_chunks_agree():
    g = torch.Generator().manual_seed(0)
    parent, child = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) * 3
    a = cone_fraction(parent, child, "euclidean", 0.5)
    b = cone_fraction(parent, child, "euclidean", 0.5, chunk=7)
    assert a["fraction"] == b["fraction"] and a["mean_penalty"] == pytest.approx(b["mean_penalty"])


def test_cone_fraction_rejects_elliptic():
    with pytest.raises(ValueError, match="cones"):
        cone_fraction(torch.ones(2, 2), torch.ones(2, 2), "elliptic", 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Levels, summaries, views
# ---------------------------------------------------------------------------------------------------------------


def test_level_norms_hand_example():
    out = level_norms([0.5, 0.7, 1.0, 1.2, 2.0], [0, 0, 1, 1, 2])
    assert out["per_level"]["0"]["mean"] == pytest.approx(0.6)
    assert out["per_level"]["1"]["mean"] == pytest.approx(1.1)
    assert out["per_level"]["2"] == {"mean": 2.0, "std": 0.0, "n": 1}
    # Level mid-ranks [1.5, 1.5, 3.5, 3.5, 5], centred [-1.5, -1.5, .5, .5, 2]; norm ranks centred [-2, -1, 0, 1, 2].
    # rho = 9 / sqrt(9 · 10). Kendall: n0 = 10 pairs, n1 = 2 tied in level, the other 8 concordant:
    # tau-b = 8 / sqrt((10 - 2) · 10).
    assert out["spearman"] == pytest.approx(9 / math.sqrt(90))
    assert out["kendall"] == pytest.approx(8 / math.sqrt(80))


def test_summary_and_histogram():
    s = summary_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["n"], s["mean"], s["median"], s["min"], s["max"]) == (5, 3.0, 3.0, 1.0, 5.0)
    h = histograms([0.0, 1.0], [0.5, 0.5, 1.0], bins=2)
    assert h["edges"] == [0.0, 0.5, 1.0]
    assert h["image"] == [1, 1] and h["text"] == [0, 3]
    constant = histograms([1.0, 1.0], [1.0], bins=3)  # elliptic norms: a narrow band, not a crash
    assert sum(constant["image"]) == 2 and sum(constant["text"]) == 1


def test_poincare_disk():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1e4, 0.0]], dtype=torch.float64)
    for c in (0.5, 1.0, 2.0):
        p = poincare_disk(x, c)
        assert p[0].tolist() == [0.0, 0.0]
        assert (p.norm(dim=1) < 1).all()
        # A point at geodesic distance r from the origin lands at Euclidean radius tanh(sqrt(c) r / 2).
        r = geom.norm_from_origin(x, "hyperbolic", c)
        assert p.norm(dim=1) == pytest.approx(torch.tanh(math.sqrt(c) * r / 2), abs=1e-12)
        assert torch.allclose(p[1] / p[1].norm(), x[1] / x[1].norm())  # same direction


def _embeddings(geometry: str, n: int = 40, d: int = 5, seed: int = 0) -> Embeddings:
    # Images far out, texts close to the origin, and text norms growing with the caption level.
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    levels = torch.arange(n) % 5
    image_f, text_f = 3.0 * directions, (0.2 + 0.1 * levels[:, None]) * directions
    if geometry == "elliptic":
        image, text = directions, directions
    else:
        image, text = (geom.project(f * math.sqrt(d) if geometry == "euclidean" else f, geometry)
                       for f in (image_f, text_f))
    return Embeddings(image=image, text=text, text_to_image=torch.arange(n),
                      image_tower_norm=image_f.norm(dim=1), text_tower_norm=text_f.norm(dim=1),
                      captions=[f"c{i}" for i in range(n)], geometry=geometry, logit="distance", curvature=1.0,
                      caption_levels=levels)


@pytest.mark.parametrize("geometry", geom.GEOMETRIES)
def test_geometry_diagnostics_on_placed_points(geometry):
    emb = _embeddings(geometry)
    out = geometry_diagnostics(emb, min_radius=0.1, bins=10, view_points=15)
    assert out["separation_auc"] == 1.0  # every image lies farther out than every text
    per_level = out["levels"]["per_level"]
    means = [per_level[str(k)]["mean"] for k in range(5)]
    assert means == sorted(means) and per_level["0"]["n"] == 8  # text norms grow with the level
    # Within a level the norms are equal up to rounding, so the correlations are those of 5 tied groups: high.
    assert out["levels"]["spearman"] > 0.95 and out["levels"]["kendall"] > 0.85
    if geometry == "elliptic":
        assert out["norm_used"] == "tower" and out["cones"] is None
        assert out["norms"]["manifold"]["image"]["mean"] == pytest.approx(1.0)
    else:
        # Text and image on the same ray from the origin, the image farther out: every image is inside its
        # caption's cone; with another caption's image (another direction) none is.
        assert out["norm_used"] == "manifold"
        assert out["cones"]["fraction"] == 1.0 and out["cones"]["fraction_mismatched"] == 0.0
    rank = out["effective_rank"]
    assert 1.0 <= rank["image"] <= 5.0 and rank["dim"] == 5
    views = out["views"]
    assert len(views["pca"]["image"]) == 15 and len(views["text_levels"]) == 15
    if geometry == "hyperbolic":
        assert all(x * x + y * y < 1 for x, y in views["poincare"]["image"] + views["poincare"]["text"])
    else:
        assert "poincare" not in views


def test_views_keep_the_origin_at_zero():
    emb = _embeddings("euclidean")
    emb.image = torch.cat([emb.image, torch.zeros(1, 5)])
    emb.text_to_image = torch.arange(40)
    views = embedding_views(emb, max_points=1000)
    assert views["pca"]["image"][-1] == [0.0, 0.0]
