"""The geometry → FAISS-metric transforms, checked against float64 formulas written from the maths (no FAISS)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from euclip import geometry as geom
from euclip.index.transforms import GeometryTransform, as_points, choose_metric

COMBOS = list(itertools.product(geom.GEOMETRIES, geom.LOGITS))
C = 1.7


def metrics_of(geometry: str, logit: str) -> list[str]:
    return ["l2"] if geometry == "euclidean" and logit != "inner" else ["ip", "l2"]


def points(n: int, d: int, geometry: str, seed: int, scale: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Varied norms, so that the hyperbolic time components and the L2 reduction's extra coordinate both matter.
    f = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * scale
    return geom.project(f.double(), geometry, C)


def reference_logits(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str) -> np.ndarray:
    """Pairwise logits in float64 straight from FORMULAS.md (independent of euclip.geometry's fused kernels)."""
    x, y = x.double(), y.double()
    if geometry == "elliptic":
        cos = x @ y.T
        s = {"inner": cos, "distance": -torch.arccos(cos.clamp(-1, 1)),
             "squared": -torch.arccos(cos.clamp(-1, 1)) ** 2}[logit]
    elif geometry == "euclidean":
        sq = ((x[:, None] - y[None]) ** 2).sum(-1)
        s = {"inner": x @ y.T, "distance": -sq.sqrt(), "squared": -sq}[logit]
    else:
        xt, yt = torch.sqrt(1 / C + (x * x).sum(1)), torch.sqrt(1 / C + (y * y).sum(1))
        lorentz = x @ y.T - xt[:, None] * yt[None]
        d = torch.arccosh((-C * lorentz).clamp_min(1)) / math.sqrt(C)
        s = {"inner": lorentz, "distance": -d, "squared": -d * d}[logit]
    return s.numpy()


def faiss_like_scores(transform: GeometryTransform, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """What an exact FAISS index computes from the transformed vectors, here with float64 vectors and arithmetic."""
    q = transform.queries(x.double(), dtype=np.float64)
    db = transform.database(y.double(), dtype=np.float64)
    if transform.metric == "ip":
        return q @ db.T
    return ((q[:, None] - db[None]) ** 2).sum(-1)


@pytest.mark.parametrize("geometry,logit", COMBOS)
def test_scores_convert_to_the_geometry_logits(geometry, logit):
    x, y = points(20, 12, geometry, 0), points(50, 12, geometry, 1)
    expected = reference_logits(x, y, geometry, logit)
    for metric in metrics_of(geometry, logit):
        t = GeometryTransform(geometry, logit, 12, C, metric).with_norm_bound(y.double())
        got = t.to_logits(faiss_like_scores(t, x, y), x.double())
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9, err_msg=f"{geometry}/{logit}/{metric}")


@pytest.mark.parametrize("geometry,logit", COMBOS)
def test_faiss_order_is_the_logit_order(geometry, logit):
    """Higher logit = nearer: the FAISS order (descending IP, ascending L2) sorts the logits descending."""
    x, y = points(10, 8, geometry, 2), points(200, 8, geometry, 3)
    expected = reference_logits(x, y, geometry, logit)
    for metric in metrics_of(geometry, logit):
        t = GeometryTransform(geometry, logit, 8, C, metric).with_norm_bound(y.double())
        s = faiss_like_scores(t, x, y)
        order = np.argsort(-s if metric == "ip" else s, axis=1, kind="stable")
        ranked = np.take_along_axis(expected, order, axis=1)
        assert (np.diff(ranked, axis=1) <= 1e-9).all(), f"{geometry}/{logit}/{metric} ranks out of logit order"


@pytest.mark.parametrize("geometry,logit", COMBOS)
def test_float32_vectors_keep_the_searched_quantity(geometry, logit):
    """What FAISS really gets (float32 vectors) reproduces the monotone quantity within float32 rounding of it."""
    x, y = points(10, 16, geometry, 7), points(100, 16, geometry, 8)
    for metric in metrics_of(geometry, logit):
        t = GeometryTransform(geometry, logit, 16, C, metric).with_norm_bound(y)
        q, db = t.queries(x), t.database(y)
        assert q.dtype == db.dtype == np.float32 and q.shape[1] == db.shape[1] == t.index_dim
        exact = faiss_like_scores(t, x, y)
        s32 = q.astype(np.float64) @ db.astype(np.float64).T if metric == "ip" else \
            ((q.astype(np.float64)[:, None] - db.astype(np.float64)[None]) ** 2).sum(-1)
        scale = np.abs(q).max() * np.abs(db).max() * t.index_dim  # the largest product entering the dot products
        np.testing.assert_allclose(s32, exact, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)


def test_hyperbolic_vectors_give_the_lorentzian_inner_product():
    x, y = points(7, 5, "hyperbolic", 4, scale=2.0), points(9, 5, "hyperbolic", 5, scale=2.0)
    t = GeometryTransform("hyperbolic", "distance", 5, C, "ip")
    q, db = t.queries(x.double(), np.float64), t.database(y.double(), np.float64)
    assert q.shape == (7, 6) and db.shape == (9, 6) and t.index_dim == 6
    x64, y64 = x.double().numpy(), y.double().numpy()
    np.testing.assert_allclose(q[:, 5], np.sqrt(1 / C + (x64 ** 2).sum(1)), rtol=1e-6)  # the time component
    np.testing.assert_allclose(db[:, 5], -np.sqrt(1 / C + (y64 ** 2).sum(1)), rtol=1e-6)  # negated
    lorentz = q @ db.T
    np.testing.assert_allclose(lorentz, reference_logits(x, y, "hyperbolic", "inner"), rtol=1e-12)
    assert (lorentz <= -1 / C + 1e-4).all()  # ⟨x, y⟩_L <= −1/c on the hyperboloid
    # Also euclip.geometry's own Lorentzian inner product.
    np.testing.assert_allclose(lorentz, geom.pairwise_logits(x.double(), y.double(), "hyperbolic", "inner", C).numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("geometry,logit", [("hyperbolic", "distance"), ("euclidean", "inner")])
def test_l2_reduction_puts_every_indexed_vector_on_one_sphere(geometry, logit):
    y = points(100, 6, geometry, 6, scale=3.0)
    t = GeometryTransform(geometry, logit, 6, C, "l2").with_norm_bound(y)
    assert t.augmented and t.index_dim == 6 + (geometry == "hyperbolic") + 1
    db = t.database(y).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), t.norm_bound, rtol=1e-5)
    np.testing.assert_allclose(t.queries(y)[:, -1], 0.0)
    with pytest.raises(ValueError, match="norm bound"):
        t.database(y * 10)  # a point beyond M cannot be added later
    with pytest.raises(ValueError, match="norm_bound"):
        GeometryTransform(geometry, logit, 6, C, "l2").database(y)


def test_choose_metric():
    assert choose_metric("elliptic", "distance") == "ip"
    assert choose_metric("euclidean", "squared") == "l2"
    assert choose_metric("euclidean", "inner", graph=True) == "ip"
    assert choose_metric("hyperbolic", "distance") == "ip"
    assert choose_metric("hyperbolic", "squared", graph=True) == "l2"  # HNSW: the L2 reduction
    assert choose_metric("hyperbolic", "inner", "ip", graph=True) == "ip"  # an explicit choice stands
    with pytest.raises(ValueError, match="rank like l2 only"):
        choose_metric("euclidean", "distance", "ip")
    with pytest.raises(ValueError, match="unknown metric 'cosine'"):
        choose_metric("elliptic", "inner", "cosine")


def test_elliptic_points_are_renormalised():
    t = GeometryTransform("elliptic", "inner", 3)
    p = t.points(torch.tensor([[3.0, 0.0, 4.0]]))
    torch.testing.assert_close(p, torch.tensor([[0.6, 0.0, 0.8]]))
    p = GeometryTransform("euclidean", "inner", 3).points(torch.tensor([[3.0, 0.0, 4.0]]))
    torch.testing.assert_close(p, torch.tensor([[3.0, 0.0, 4.0]]))


def test_bad_points():
    with pytest.raises(ValueError, match="queries have dimension 4, but the index holds dimension 3"):
        as_points(torch.zeros(2, 4), 3, "queries")
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_points(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
        as_points(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="floating-point"):
        as_points(torch.zeros(2, 2, dtype=torch.long))
    assert as_points(np.ones(5)).shape == (1, 5)
    with pytest.raises(ValueError, match="curvature"):
        GeometryTransform("hyperbolic", "distance", 3, curvature=0.0)
