"""Traversals: paths to the root in each geometry, and a hand-made embedding whose walks are known."""

from __future__ import annotations

import math

import pytest
import torch

from euclip import geometry as geom
from euclip.eval.traverse import (
    dedupe,
    format_walk,
    interpolation_path,
    nearest_captions,
    root_point,
    slerp,
    traversal_scores,
    traverse_embeddings,
)
from euclip.tree import Tree

TREE = Tree([("shape", "polygon"), ("shape", "round"), ("polygon", "triangle"), ("round", "circle")])

# A 2-D caption pool: the triangle's chain on the x axis, a circle up the y axis.
POOL = [("a triangle", 2, "triangle"), ("a polygon", 1, "polygon"), ("a shape", 0, "shape"), ("a circle", 2, "circle")]
POOL_EMB = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.2, 0.0], [0.0, 3.0]])


def test_dedupe_and_format():
    assert dedupe([3, 3, 1, 1, 3]) == [3, 1, 3]
    assert dedupe([]) == []
    assert format_walk(["a red triangle", "a triangle", "a shape"]) == "a red triangle → a triangle → a shape"


def test_euclidean_path_is_the_segment_to_the_origin():
    path = interpolation_path(torch.tensor([[4.0, 2.0]]), "euclidean", steps=4)
    assert path.shape == (1, 5, 2)
    assert path[0].tolist() == [[4.0, 2.0], [3.0, 1.5], [2.0, 1.0], [1.0, 0.5], [0.0, 0.0]]


def test_hyperbolic_path_is_the_geodesic_to_the_origin():
    c = 0.7
    x = geom.project(torch.tensor([[1.5, -2.0, 0.5]], dtype=torch.float64), "hyperbolic", c)
    path = interpolation_path(x, "hyperbolic", steps=5, curvature=c)[0]
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    total = geom.norm_from_origin(x, "hyperbolic", c)[0]
    assert torch.allclose(path[0], x[0]) and path[-1].abs().max() == 0
    # On the geodesic: d(x, p_t) = t · d(x, 0) and d(p_t, 0) = (1 - t) · d(x, 0).
    assert torch.allclose(geom.norm_from_origin(path, "hyperbolic", c), (1 - t) * total)
    distances = geom.distance(x, path, "hyperbolic", c)[0]
    assert torch.allclose(distances[1:], t[1:] * total, atol=1e-9)
    # path[0] equals x up to rounding; the distance of (nearly) equal points is accurate to √ε only (the
    # arccosh/√ of a difference of rounded products), ~1e-7 in float64.
    assert distances[0] < 1e-6


def test_elliptic_path_is_the_great_circle_to_the_root():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    root = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    path = interpolation_path(x, "elliptic", steps=4, root=root)
    assert torch.allclose(path.norm(dim=-1), torch.ones(2, 5, dtype=torch.float64))
    assert torch.allclose(path[:, 0], x) and torch.allclose(path[:, -1], root.expand(2, 3))
    # Equal angular steps: the first walk covers 90° in four steps of 22.5°.
    angles = torch.arccos((path[0] @ root).clamp(-1, 1))
    assert torch.allclose(angles, torch.tensor([90, 67.5, 45, 22.5, 0], dtype=torch.float64) * math.pi / 180)
    # A point at the root itself stays put (slerp's 0/0 case).
    assert torch.allclose(slerp(root[None], root, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))[0],
                          root.expand(3, 3))
    with pytest.raises(ValueError, match="root"):
        interpolation_path(x, "elliptic", steps=2)


def test_root_point():
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert root_point("euclidean", pool, [0, 0, 2]).tolist() == [0.0, 0.0]
    assert root_point("hyperbolic", pool, [0, 0, 2]).tolist() == [0.0, 0.0]
    # Elliptic: the normalised mean of the level-0 captions (rows 0 and 1): (1, 1) / sqrt(2).
    assert torch.allclose(root_point("elliptic", pool, [0, 0, 2]), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="level-0"):
        root_point("elliptic", pool, [1, 2, 2])


def test_hand_made_traversal():
    # Image A at (4, 0), a triangle: path (4,0) (3,0) (2,0) (1,0) (0,0); nearest captions triangle (d 1), triangle
    # (0), polygon (0), shape (0.8 < polygon's 1), shape: walk [triangle, polygon, shape], all on its chain.
    # Image B at (0, 4), a circle: (0,4) (0,3) (0,2) -> circle (1, 0, 1 < shape's 2.01), (0,1) (0,0) -> shape
    # (1.02 < circle's 2): walk [circle, shape], both on its chain.
    # Image C at (3.2, 0), labelled circle: (3.2,0) -> triangle (.2); (2.4,0) polygon (.4 < .6); (1.6,0) polygon
    # (.4); (.8,0) shape (.6 < 1.2); (0,0) shape: walk [triangle, polygon, shape], only "shape" on circle's chain.
    images = torch.tensor([[4.0, 0.0], [0.0, 4.0], [3.2, 0.0]])
    out = traverse_embeddings(images, POOL_EMB, POOL, ["triangle", "circle", "circle"], TREE, "euclidean",
                              "distance", steps=4)
    assert out["walks"] == [[0, 1, 2], [3, 2], [0, 1, 2]]
    assert out["on_path"] == pytest.approx((3 + 2 + 1) / 8)
    assert out["monotone"] == 1.0 and out["reaches_root"] == 1.0
    assert out["starts_on_leaf"] == pytest.approx(2 / 3)
    assert out["mean_length"] == pytest.approx(8 / 3) and out["num_walks"] == 3
    assert out["root"] == "origin"
    # The squared-distance logit ranks like the distance: the same walks. Small batches change nothing.
    again = traverse_embeddings(images, POOL_EMB, POOL, ["triangle", "circle", "circle"], TREE, "euclidean",
                                "squared", steps=4, batch=1)
    assert again["walks"] == out["walks"]


def test_nearest_captions_chunks():
    path = interpolation_path(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), "euclidean", steps=4)
    whole = nearest_captions(path, POOL_EMB, "euclidean", "distance")
    assert whole.tolist() == [[0, 0, 1, 2, 2], [3, 3, 3, 2, 2]]
    assert nearest_captions(path, POOL_EMB, "euclidean", "distance", chunk=3).tolist() == whole.tolist()


def test_scores_of_a_non_monotone_walk():
    # Walk shape -> triangle goes back down a level: not monotone, does not end at the root, starts off the leaf.
    out = traversal_scores([[2, 0]], [p[2] for p in POOL], [p[1] for p in POOL], ["triangle"], TREE)
    assert out == {"on_path": 1.0, "monotone": 0.0, "reaches_root": 0.0, "starts_on_leaf": 0.0, "mean_length": 2.0,
                   "num_walks": 1}
    with pytest.raises(ValueError, match="one true leaf per walk"):
        traversal_scores([[0]], ["triangle"], [2], [], TREE)
