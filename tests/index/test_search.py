"""GeometryIndex: exact search equals brute force for all nine geometry × logit combinations, entailment filtering
equals a brute-force filter, approximate indexes find most true neighbours on clustered data, bad input is refused."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from euclip import geometry as geom
from euclip.index import build_index

COMBOS = list(itertools.product(geom.GEOMETRIES, geom.LOGITS))
C = 1.3


def manifold_points(n: int, d: int, geometry: str, seed: int, scale: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g) * (0.2 + torch.rand(n, 1, generator=g)) * scale
    return geom.project(f, geometry, C)


def clustered_points(n: int, d: int, geometry: str, seed: int, clusters: int = 50) -> torch.Tensor:
    """Points around ``clusters`` centres, so that nearest neighbours are meaningful (unlike i.i.d. noise)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    f = centres[torch.randint(0, clusters, (n,), generator=g)] + 0.4 * torch.randn(n, d, generator=g)
    return geom.project(f * 0.15, geometry, C)


def brute_force(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str, k: int):
    """Float64 reference: all pairwise logits from euclip.geometry, then the top k."""
    logits = geom.pairwise_logits(x.double(), y.double(), geometry, logit, C)
    top = logits.topk(k, dim=1)
    return top.values, top.indices, logits


def assert_same_ranking(indices: torch.Tensor, ref_indices: torch.Tensor, logits: torch.Tensor, tol: float = 1e-5):
    """Equal top-k lists, except where two logits are within ``tol`` of each other (ties)."""
    for row, (got, want) in enumerate(zip(indices.tolist(), ref_indices.tolist())):
        if got == want:
            continue
        where = f"row {row}: {got} vs {want}"
        torch.testing.assert_close(logits[row, got], logits[row, want], atol=tol, rtol=0,
                                   msg=lambda m, where=where: f"{where}: {m}")


@pytest.mark.parametrize("geometry,logit", COMBOS)
@pytest.mark.parametrize("metric", ["auto", "l2"])
def test_exact_search_equals_brute_force(geometry, logit, metric):
    if metric == "l2" and geometry == "euclidean" and logit != "inner":
        metric = "auto"  # already L2
    y = manifold_points(400, 24, geometry, 0)
    x = manifold_points(30, 24, geometry, 1)
    index = build_index(y, None, geometry, logit, C, "Flat", metric=metric)
    scores, indices = index.search(x, 10)
    ref_values, ref_indices, logits = brute_force(x, y, geometry, logit, 10)
    assert scores.shape == indices.shape == (30, 10) and scores.dtype == torch.float32
    assert_same_ranking(indices, ref_indices, logits)
    torch.testing.assert_close(scores.double(), ref_values, rtol=1e-5, atol=1e-5)
    # FAISS's own scores converted (no re-scoring): the same ranking, values to float32 accuracy of the metric.
    scores2, indices2 = index.search(x, 10, exact_scores=False)
    assert_same_ranking(indices2, ref_indices, logits, tol=1e-4)
    torch.testing.assert_close(scores2.double(), ref_values, rtol=1e-3, atol=1e-3)


def test_exact_search_finds_the_query_itself_first():
    """Coincident points: the float32 cancellation near d = 0 must not push a point off its own top rank."""
    for geometry, logit in COMBOS:
        if logit == "inner" and geometry != "elliptic":
            continue  # the inner logit does not rank a point first against itself (x·y grows with |y|)
        y = manifold_points(300, 16, geometry, 2)
        scores, indices = build_index(y, None, geometry, logit, C).search(y, 1)
        assert (indices[:, 0] == torch.arange(300)).all(), f"{geometry}/{logit}"
        self_logit = 1.0 if logit == "inner" else 0.0  # cos(0) = 1, else −d(x, x) = 0
        # In float32 a distance at 0 is resolved to about sqrt(eps · |x|²) (euclip.geometry's own float32 value).
        torch.testing.assert_close(scores[:, 0], torch.full((300,), self_logit), atol=1e-2, rtol=0)


def test_k_beyond_the_index_size_is_padded():
    y = manifold_points(5, 8, "euclidean", 3)
    scores, indices = build_index(y, None, "euclidean", "squared").search(y[:2], 8)
    assert indices.shape == (2, 8)
    assert (indices[:, 5:] == -1).all() and torch.isinf(scores[:, 5:]).all() and (scores[:, 5:] < 0).all()
    assert sorted(indices[0, :5].tolist()) == list(range(5))


def test_ids_and_single_vector_query():
    y = manifold_points(20, 8, "elliptic", 4)
    ids = [f"image_{i}.jpg" for i in range(20)]
    index = build_index(y, ids, "elliptic", "inner")
    indices = index.search(y[3], 2).indices  # a (D,) vector is one query
    assert indices.shape == (1, 2) and indices[0, 0] == 3
    assert index.neighbour_ids(indices)[0][0] == "image_3.jpg"
    assert index.neighbour_ids(torch.tensor([[-1]])) == [[None]]


# ----------------------------------------------------------------------------------------------------------------
# Entailment filtering
# ----------------------------------------------------------------------------------------------------------------


def cone_data(geometry: str):
    """Generic "captions" near the origin and specific "images" farther out, half of them along the captions."""
    g = torch.Generator().manual_seed(5)
    d = 12
    text = torch.randn(40, d, generator=g) * 0.05
    image = torch.cat([text.repeat(5, 1) * 6 + 0.05 * torch.randn(200, d, generator=g),
                       torch.randn(200, d, generator=g) * 0.3])
    return geom.project(text, geometry, C), geom.project(image, geometry, C)


def brute_force_filtered(queries, database, geometry, logit, k, cone, radius):
    logits = geom.pairwise_logits(queries.double(), database.double(), geometry, logit, C)
    q_rows = queries.double().repeat_interleave(database.shape[0], 0)
    y_rows = database.double().repeat(queries.shape[0], 1)
    parent, child = (q_rows, y_rows) if cone == "query" else (y_rows, q_rows)
    inside = (geom.exterior_angle(parent, child, geometry, C)
              <= geom.half_aperture(parent, geometry, radius, C)).reshape(logits.shape)
    masked = logits.masked_fill(~inside, -math.inf)
    return masked.topk(k, dim=1), inside, logits


@pytest.mark.parametrize("geometry", geom.CONE_GEOMETRIES)
@pytest.mark.parametrize("cone", ["query", "result"])
def test_entailment_filter_equals_brute_force(geometry, cone):
    text, image = cone_data(geometry)
    logit = "distance"
    radius = 0.3
    queries, database = (text, image) if cone == "query" else (image[:40], text)
    index = build_index(database, None, geometry, logit, C)
    k = 5
    top, inside, logits = brute_force_filtered(queries, database, geometry, logit, k, cone, radius)
    assert 0 < inside.float().mean() < 0.9, "the data should put some but not all pairs inside the cones"
    # Fetching every row, the filter is exact.
    scores, indices = index.search(queries, k, cone=cone, min_radius=radius, overfetch=len(index))
    for row in range(queries.shape[0]):
        want = [i for v, i in zip(top.values[row].tolist(), top.indices[row].tolist()) if v > -math.inf]
        got = [i for i in indices[row].tolist() if i >= 0]
        assert got == want, f"row {row}"
        assert torch.isinf(scores[row, len(got):]).all()
    # With a small over-fetch, results are the entailed ones among the k · overfetch nearest, in order.
    scores, indices = index.search(queries, k, cone=cone, min_radius=radius, overfetch=2)
    nearest = logits.topk(2 * k, dim=1).indices
    for row in range(queries.shape[0]):
        want = [i for i in nearest[row].tolist() if inside[row, i]][:k]
        assert [i for i in indices[row].tolist() if i >= 0] == want


def test_entailment_filter_uses_the_manifest_min_radius():
    text, image = cone_data("hyperbolic")
    wide = build_index(image, None, "hyperbolic", "distance", C, min_radius=2.0)
    narrow = build_index(image, None, "hyperbolic", "distance", C, min_radius=0.01)
    kept_wide = (wide.search(text, 50, cone="query", overfetch=8).indices >= 0).sum()
    kept_narrow = (narrow.search(text, 50, cone="query", overfetch=8).indices >= 0).sum()
    assert kept_wide > kept_narrow


def test_entailment_filter_bad_input():
    y = manifold_points(10, 4, "elliptic", 6)
    with pytest.raises(ValueError, match="not for this elliptic index"):
        build_index(y, None, "elliptic", "inner").search(y, 2, cone="query")
    index = build_index(manifold_points(10, 4, "euclidean", 6), None, "euclidean", "squared")
    with pytest.raises(ValueError, match="unknown cone filter 'parent'"):
        index.search(y, 2, cone="parent")
    with pytest.raises(ValueError, match="min_radius must be positive"):
        index.search(y, 2, cone="query", min_radius=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Approximate indexes
# ----------------------------------------------------------------------------------------------------------------


def recall_at(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx.tolist(), exact.tolist())]))


@pytest.mark.parametrize("geometry,logit", [("elliptic", "inner"), ("euclidean", "squared"), ("euclidean", "inner"),
                                            ("hyperbolic", "distance"), ("hyperbolic", "inner")])
@pytest.mark.parametrize("factory,params", [("IVF32,Flat", "nprobe=8"), ("HNSW32", "efSearch=128"),
                                            ("IVF32,SQ8", "nprobe=8")])
def test_approximate_indexes_recall_on_clustered_data(geometry, logit, factory, params):
    y = clustered_points(4000, 32, geometry, 7)
    x = clustered_points(100, 32, geometry, 8)
    exact = build_index(y, None, geometry, logit, C).search(x, 10)
    index = build_index(y, None, geometry, logit, C, factory, search_params=params)
    l2 = (geometry == "euclidean" and logit != "inner") or (geometry == "hyperbolic" and factory.startswith("HNSW"))
    assert index.manifest.metric == ("l2" if l2 else "ip")
    approx = index.search(x, 10)
    assert recall_at(approx.indices, exact.indices) >= (0.85 if "SQ8" in factory else 0.9)  # SQ8: compressed
    # Whatever the index compresses, reported scores are the exact logits of the rows it returns.
    ref = geom.pairwise_logits(x.double(), y.double(), geometry, logit, C).gather(1, approx.indices.clamp_min(0))
    torch.testing.assert_close(approx.scores.double(), ref, rtol=1e-5, atol=1e-5)


def test_hyperbolic_graph_indexes_need_the_l2_reduction():
    """Why "auto" picks L2 for hyperbolic HNSW (euclip.index.transforms)."""
    y = clustered_points(4000, 32, "hyperbolic", 14)
    x = clustered_points(100, 32, "hyperbolic", 15)
    exact = build_index(y, None, "hyperbolic", "distance", C).search(x, 10).indices

    def recall(factory, params, metric):
        index = build_index(y, None, "hyperbolic", "distance", C, factory, metric=metric, search_params=params)
        return recall_at(index.search(x, 10).indices, exact)

    assert recall("HNSW32", "efSearch=128", "l2") >= 0.9
    assert recall("HNSW32", "efSearch=128", "ip") < 0.6
    assert recall("IVF32,Flat", "nprobe=8", "auto") >= 0.9  # inner products, with lists around Lorentzian centroids


def test_search_params_change_an_ivf_search():
    y = clustered_points(3000, 16, "euclidean", 9)
    x = clustered_points(100, 16, "euclidean", 10)
    exact = build_index(y, None, "euclidean", "squared").search(x, 10).indices
    index = build_index(y, None, "euclidean", "squared", factory="IVF64,Flat", search_params="nprobe=1")
    low = recall_at(index.search(x, 10).indices, exact)
    index.set_search_params("nprobe=64")  # every list: exact
    assert recall_at(index.search(x, 10).indices, exact) == 1.0 > low
    assert index.manifest.search_params == "nprobe=64"


def test_product_quantizer_dimension_hint():
    y = manifold_points(300, 32, "hyperbolic", 11)  # 32 + 1 (time) = 33 FAISS dimensions
    with pytest.raises(ValueError, match=r"have 33 FAISS dimensions, divisible by 1, 3, 11"):
        build_index(y, None, "hyperbolic", "distance", C, "PQ16")
    index = build_index(y, None, "hyperbolic", "distance", C, "PQ3x4", train_size=300)  # 16 codes: quick to train
    assert index.search(y[:3], 3).indices.shape == (3, 3)


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


def test_bad_input():
    y = manifold_points(50, 8, "euclidean", 12)
    index = build_index(y, None, "euclidean", "squared")
    with pytest.raises(ValueError, match="queries have dimension 9, but the index holds dimension 8"):
        index.search(torch.zeros(2, 9), 3)
    with pytest.raises(ValueError, match="queries contain NaN"):
        index.search(torch.full((1, 8), math.nan), 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(y, 0)
    with pytest.raises(ValueError, match="the data set is empty"):
        build_index(torch.empty(0, 8), [], "euclidean", "squared")
    with pytest.raises(ValueError, match="3 ids for 50 embeddings"):
        build_index(y, ["a", "b", "c"], "euclidean", "squared")
    with pytest.raises(ValueError, match="bad index factory string 'IVF,Bogus'"):
        build_index(y, None, "euclidean", "squared", factory="IVF,Bogus")
    with pytest.raises(ValueError, match="cannot train index 'IVF64,Flat' on 50 vectors"):
        build_index(y, None, "euclidean", "squared", factory="IVF64,Flat")
    with pytest.raises(ValueError, match="bad search parameters 'nprobe=4'"):
        build_index(y, None, "euclidean", "squared", search_params="nprobe=4")  # a Flat index has no nprobe
    with pytest.raises(ValueError, match="unknown geometry 'spherical'"):
        build_index(y, None, "spherical", "inner")
    with pytest.raises(ValueError, match="rank like l2 only"):
        build_index(y, None, "euclidean", "squared", metric="ip")


def test_index_keeps_its_own_copy_of_the_points():
    y = manifold_points(20, 4, "euclidean", 13)
    index = build_index(y, None, "euclidean", "squared")
    before = index.search(y[:2], 3)
    y.mul_(10)  # the caller changes its tensor in place
    after = index.search(y[:2] / 10, 3)
    assert torch.equal(before.indices, after.indices)
    torch.testing.assert_close(before.scores, after.scores)


def test_batching_does_not_change_results(monkeypatch):
    """Small FAISS batches and re-scoring blocks (both loops, ragged ends) give the one-batch results."""
    from euclip.index import search

    y = manifold_points(300, 8, "hyperbolic", 16)
    x = manifold_points(50, 8, "hyperbolic", 17)
    index = build_index(y, None, "hyperbolic", "distance", C)
    whole = index.search(x, 10)
    monkeypatch.setattr(search, "_SEARCH_BATCH", 7)
    monkeypatch.setattr(search, "_RESCORE_BUDGET", 90)  # blocks of 3 queries
    parts = index.search(x, 10)
    assert torch.equal(whole.indices, parts.indices)
    torch.testing.assert_close(whole.scores, parts.scores)
