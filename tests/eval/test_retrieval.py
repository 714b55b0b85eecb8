"""Retrieval recall@k: hand-worked orderings in every geometry, multi-caption images, chunked == unchunked."""

from __future__ import annotations

import math

import pytest
import torch

from euclip import geometry as geom
from euclip.eval.retrieval import retrieval_metrics

# Four images on a line and four captions (caption j describes image j); coordinates are chosen so that no two
# scores tie. Distances, caption → images (order):
#   t0 = 0.15: 0.15 0.85 1.85 2.85 -> image 0 first                  (hit @1)
#   t1 = 2.2 : 2.2  1.2  0.2  0.8  -> 2, 3, 1, 0: its image 1 third  (hit @3)
#   t2 = 1.9 : 1.9  0.9  0.1  1.1  -> 2 first                        (hit @1)
#   t3 = 10  : -> 3 first                                            (hit @1)
# image → captions (order):
#   i0 = 0: t0 .15, t2 1.9, t1 2.2, t3 10 -> its caption first       (hit @1)
#   i1 = 1: t0 .85, t2 .9, t1 1.2, t3 9   -> third                   (hit @3)
#   i2 = 2: t2 .1, t1 .2, t0 1.85, t3 8   -> first                   (hit @1)
#   i3 = 3: t1 .8, t2 1.1, t0 2.85, t3 7  -> fourth                  (hit @4)
IMAGES = [0.0, 1.0, 2.0, 3.0]
TEXTS = [0.15, 2.2, 1.9, 10.0]
KS = (1, 2, 3, 4)
EXPECTED_I2T = {"R@1": 2 / 4, "R@2": 2 / 4, "R@3": 3 / 4, "R@4": 1.0}
EXPECTED_T2I = {"R@1": 3 / 4, "R@2": 3 / 4, "R@3": 1.0, "R@4": 1.0}


def embed_line(coords: list[float], geometry: str) -> torch.Tensor:
    """Points whose pairwise distances are ordered like |a - b| on the line, in each geometry.

    Euclidean: the coordinate itself (padded to 2-D). Hyperbolic: the same space components on one ray and its
    opposite; the distance is monotone in the difference of signed radii. Elliptic: unit vectors at angle
    ``coordinate / 4`` (all angles < π, so geodesic distance = angle difference / 4).
    """
    x = torch.tensor(coords, dtype=torch.float64)
    if geometry == "elliptic":
        return torch.stack([torch.cos(x / 4), torch.sin(x / 4)], dim=1)
    if geometry == "hyperbolic":
        # Signed radius r -> space component sinh(r) along one axis: d = |r_a - r_b| for c = 1.
        return torch.stack([torch.sinh(x), torch.zeros_like(x)], dim=1)
    return torch.stack([x, torch.zeros_like(x)], dim=1)


@pytest.mark.parametrize("geometry", geom.GEOMETRIES)
@pytest.mark.parametrize("logit", ["distance", "squared"])
def test_hand_ordering(geometry, logit):
    out = retrieval_metrics(embed_line(IMAGES, geometry), embed_line(TEXTS, geometry), torch.arange(4), geometry,
                            logit, 1.0, ks=KS)
    assert out["image_to_text"] == pytest.approx(EXPECTED_I2T)
    assert out["text_to_image"] == pytest.approx(EXPECTED_T2I)
    assert out["mean_recall"] == pytest.approx((sum(EXPECTED_I2T.values()) + sum(EXPECTED_T2I.values())) / 8)
    assert (out["num_images"], out["num_texts"]) == (4, 4)


def test_hand_ordering_inner_product_hyperbolic():
    # -<x, y>_L = cosh(d) for c = 1: the Lorentzian inner product ranks exactly like the negative distance.
    out = retrieval_metrics(embed_line(IMAGES, "hyperbolic"), embed_line(TEXTS, "hyperbolic"), torch.arange(4),
                            "hyperbolic", "inner", 1.0, ks=KS)
    assert out["image_to_text"] == pytest.approx(EXPECTED_I2T)
    assert out["text_to_image"] == pytest.approx(EXPECTED_T2I)


def test_several_captions_per_image():
    # A fifth caption t4 = 2.9 describes image 3: image 3 now finds one of its captions first (t4 at 0.1), so
    # image→text R@1 rises to 3/4; t4 itself retrieves image 3 first, so text→image R@1 = 4/5.
    texts = TEXTS + [2.9]
    owners = torch.tensor([0, 1, 2, 3, 3])
    out = retrieval_metrics(embed_line(IMAGES, "euclidean"), embed_line(texts, "euclidean"), owners, "euclidean",
                            "distance", ks=KS)
    assert out["image_to_text"] == pytest.approx({"R@1": 3 / 4, "R@2": 3 / 4, "R@3": 1.0, "R@4": 1.0})
    assert out["text_to_image"] == pytest.approx({"R@1": 4 / 5, "R@2": 4 / 5, "R@3": 1.0, "R@4": 1.0})
    assert out["num_texts"] == 5


def brute_force(image, text, owners, geometry, logit, ks):
    """Recall from the full score matrix and exact ranks: the reference the blockwise version must match."""
    scores = geom.pairwise_logits(image, text, geometry, logit, 0.7)
    n_img = image.shape[0]
    i2t, t2i = {}, {}
    for k in ks:
        top_t = scores.topk(min(k, scores.shape[1]), dim=1).indices
        i2t[f"R@{k}"] = (owners[top_t] == torch.arange(n_img)[:, None]).any(1).double().mean().item()
        top_i = scores.T.topk(min(k, n_img), dim=1).indices
        t2i[f"R@{k}"] = (top_i == owners[:, None]).any(1).double().mean().item()
    return i2t, t2i


@pytest.mark.parametrize("geometry,logit", [("euclidean", "squared"), ("euclidean", "inner"),
                                            ("elliptic", "inner"), ("elliptic", "distance"),
                                            ("hyperbolic", "distance"), ("hyperbolic", "inner")])
def test_chunked_equals_unchunked_and_brute_force(geometry, logit):
    g = torch.Generator().manual_seed(0)
    n_img, d = 37, 6
    owners = torch.cat([torch.arange(n_img), torch.randint(0, n_img, (20,), generator=g)])  # 57 captions
    image = geom.project(torch.randn(n_img, d, generator=g, dtype=torch.float64), geometry, 0.7)
    text = geom.project(torch.randn(len(owners), d, generator=g, dtype=torch.float64), geometry, 0.7)
    ks = (1, 5, 10)
    whole = retrieval_metrics(image, text, owners, geometry, logit, 0.7, ks, chunk=10_000)
    for chunk in (1, 4, 16):
        assert retrieval_metrics(image, text, owners, geometry, logit, 0.7, ks, chunk=chunk) == whole
    i2t, t2i = brute_force(image, text, owners, geometry, logit, ks)
    assert whole["image_to_text"] == pytest.approx(i2t)
    assert whole["text_to_image"] == pytest.approx(t2i)


def test_k_larger_than_gallery():
    image = embed_line([0.0, 1.0], "euclidean")
    out = retrieval_metrics(image, image.clone(), torch.tensor([0, 1]), "euclidean", "distance", ks=(1, 10), chunk=1)
    assert out["image_to_text"] == {"R@1": 1.0, "R@10": 1.0}
    assert out["text_to_image"] == {"R@1": 1.0, "R@10": 1.0}


def test_score_blocks_stay_bounded(monkeypatch):
    # Every score block is at most chunk × chunk, never the full N × N matrix; recall stays exact.
    n, chunk = 1000, 64
    shapes = []
    real = geom.pairwise_logits

    def recording(x, y, *args, **kwargs):
        shapes.append((x.shape[0], y.shape[0]))
        return real(x, y, *args, **kwargs)

    monkeypatch.setattr("euclip.eval.retrieval.geom.pairwise_logits", recording)
    angles = torch.linspace(0, math.pi, n, dtype=torch.float64)
    points = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    out = retrieval_metrics(points, points.clone(), torch.arange(n), "elliptic", "inner", chunk=chunk)
    assert out["image_to_text"]["R@1"] == 1.0 and out["text_to_image"]["R@1"] == 1.0
    assert max(a * b for a, b in shapes) <= chunk * chunk
    assert len(shapes) == math.ceil(n / chunk) ** 2  # each block once: it serves both directions


@pytest.mark.parametrize("owners,match", [([0, 0], "misses some images"), ([0, 5], "outside"), ([0], "shape")])
def test_bad_mapping(owners, match):
    x = embed_line([0.0, 1.0], "euclidean")
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(x, x, torch.tensor(owners), "euclidean", "distance")


def test_bad_ks():
    x = embed_line([0.0, 1.0], "euclidean")
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(x, x, torch.arange(2), "euclidean", "distance", ks=(0,))
