"""Hierarchy-aware metrics: hand-worked values on a toy tree, and properties on HyCoCLIP's ImageNet tree."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from euclip.eval.hierarchy import (
    CONVENTIONS,
    METRIC_KEYS,
    all_conventions,
    hierarchy_metrics,
    hierarchy_metrics_per_sample,
)
from euclip.tree import Tree

IMAGENET_ISA = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet_isa.txt"


@pytest.fixture(scope="module")
def toy() -> Tree:
    #            root            depth 0
    #          /      \
    #         A        B         depth 1
    #        / \      / \
    #      a1   a2  b1   b2      depth 2
    return Tree([("root", "A"), ("root", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])


def _one(tree: Tree, true: str, pred: str, convention: str) -> dict[str, float]:
    return hierarchy_metrics(tree, [true], [pred], convention)


# Each case: (true, pred, expected hycoclip metrics, expected inclusive metrics). Keys: top1, tie, lca, jaccard,
# hier_precision, hier_recall. Strict ancestor sets ("hycoclip"): S(a1) = S(a2) = {A, root}, S(b1) = {B, root},
# S(A) = {root}. Inclusive sets: I(x) = S(x) + {x}.
TOY_CASES = [
    # Correct: path a1-a1 has 0 edges.
    # hycoclip: S(a1) & S(a1) = {A, root} (2), union 2 -> lca = |S(pred)| - 2 + 1 = 2 - 2 + 1 = 1, J = P = R = 2/2 = 1.
    # inclusive: I(a1) = {a1, A, root} (3) with itself -> J = P = R = 1; lca = depth(a1) - depth(a1) = 0.
    ("a1", "a1",
     dict(top1=1, tie=0, lca=1, jaccard=1, hier_precision=1, hier_recall=1),
     dict(top1=1, tie=0, lca=0, jaccard=1, hier_precision=1, hier_recall=1)),
    # Sibling: path a1-A-a2 has 2 edges.
    # hycoclip: S(a2) & S(a1) = {A, root} (2), union {A, root} (2) -> lca = 2 - 2 + 1 = 1, J = 2/2, P = 2/2, R = 2/2:
    #   the same as a correct prediction, which is HyCoCLIP's convention.
    # inclusive: I(a2) & I(a1) = {A, root} (2), union {a1, a2, A, root} (4) -> J = 2/4, P = 2/3, R = 2/3;
    #   lca(a1, a2) = A, lca = depth(a1) - depth(A) = 2 - 1 = 1.
    ("a1", "a2",
     dict(top1=0, tie=2, lca=1, jaccard=1, hier_precision=1, hier_recall=1),
     dict(top1=0, tie=2, lca=1, jaccard=2 / 4, hier_precision=2 / 3, hier_recall=2 / 3)),
    # Cousin: path a1-A-root-B-b1 has 4 edges.
    # hycoclip: S(b1) & S(a1) = {root} (1), union {A, B, root} (3) -> lca = 2 - 1 + 1 = 2, J = 1/3, P = 1/2, R = 1/2.
    # inclusive: I(b1) & I(a1) = {root} (1), union {a1, A, b1, B, root} (5) -> J = 1/5, P = 1/3, R = 1/3;
    #   lca(a1, b1) = root, lca = 2 - 0 = 2.
    ("a1", "b1",
     dict(top1=0, tie=4, lca=2, jaccard=1 / 3, hier_precision=1 / 2, hier_recall=1 / 2),
     dict(top1=0, tie=4, lca=2, jaccard=1 / 5, hier_precision=1 / 3, hier_recall=1 / 3)),
    # Internal-node prediction (the true class's parent): path a1-A has 1 edge.
    # hycoclip: S(A) & S(a1) = {root} (1), union {A, root} (2) -> lca = |S(A)| - 1 + 1 = 1 - 1 + 1 = 1, J = 1/2,
    #   P = 1/1, R = 1/2.
    # inclusive: I(A) & I(a1) = {A, root} (2), union {a1, A, root} (3) -> J = 2/3, P = 2/2, R = 2/3;
    #   lca(a1, A) = A, lca = 2 - 1 = 1.
    ("a1", "A",
     dict(top1=0, tie=1, lca=1, jaccard=1 / 2, hier_precision=1, hier_recall=1 / 2),
     dict(top1=0, tie=1, lca=1, jaccard=2 / 3, hier_precision=1, hier_recall=2 / 3)),
    # The reverse (true A, pred a1): path has 1 edge.
    # hycoclip: S(a1) & S(A) = {root} (1), union {A, root} (2) -> lca = |S(a1)| - 1 + 1 = 2 - 1 + 1 = 2, J = 1/2,
    #   P = 1/2, R = 1/1.
    # inclusive: I(a1) & I(A) = {A, root} (2), union 3 -> J = 2/3, P = 2/3, R = 2/2; lca(A, a1) = A,
    #   lca = depth(A) - depth(A) = 0 (the truth is an ancestor of the prediction).
    ("A", "a1",
     dict(top1=0, tie=1, lca=2, jaccard=1 / 2, hier_precision=1 / 2, hier_recall=1),
     dict(top1=0, tie=1, lca=0, jaccard=2 / 3, hier_precision=2 / 3, hier_recall=1)),
]


@pytest.mark.parametrize("true,pred,expected_hycoclip,expected_inclusive", TOY_CASES)
def test_toy_tree_by_hand(toy: Tree, true: str, pred: str, expected_hycoclip: dict, expected_inclusive: dict) -> None:
    assert _one(toy, true, pred, "hycoclip") == pytest.approx(expected_hycoclip)
    assert _one(toy, true, pred, "inclusive") == pytest.approx(expected_inclusive)
    both = all_conventions(toy, [true], [pred])
    assert set(both) == {"hycoclip", "inclusive"}
    assert both["hycoclip"] == pytest.approx(expected_hycoclip)
    assert both["inclusive"] == pytest.approx(expected_inclusive)


def test_toy_tree_averages_over_samples(toy: Tree) -> None:
    true = ["a1", "a1", "a1", "b2"]
    pred = ["a1", "a2", "b1", "b2"]
    # hycoclip, per sample (from TOY_CASES; b2-b2 is a correct prediction like a1-a1):
    #   top1 = 1, 0, 0, 1 -> 2/4;  tie = 0, 2, 4, 0 -> 6/4;  lca = 1, 1, 2, 1 -> 5/4
    #   jaccard = 1, 1, 1/3, 1 -> (3 + 1/3)/4 = 10/12;  precision = recall = 1, 1, 1/2, 1 -> 3.5/4
    assert hierarchy_metrics(toy, true, pred) == pytest.approx(
        dict(top1=2 / 4, tie=6 / 4, lca=5 / 4, jaccard=10 / 12, hier_precision=3.5 / 4, hier_recall=3.5 / 4))
    # inclusive: lca = 0, 1, 2, 0 -> 3/4;  jaccard = 1, 1/2, 1/5, 1 -> 2.7/4;  precision = recall = 1, 2/3, 1/3, 1
    #   -> 3/4
    assert hierarchy_metrics(toy, true, pred, "inclusive") == pytest.approx(
        dict(top1=2 / 4, tie=6 / 4, lca=3 / 4, jaccard=2.7 / 4, hier_precision=3 / 4, hier_recall=3 / 4))
    per_sample = hierarchy_metrics_per_sample(toy, true, pred, "inclusive")
    assert set(per_sample) == set(METRIC_KEYS)
    np.testing.assert_allclose(per_sample["lca"], [0, 1, 2, 0])
    np.testing.assert_allclose(per_sample["jaccard"], [1, 1 / 2, 1 / 5, 1])


def test_hycoclip_lca_counts_edges_from_prediction_to_lca() -> None:
    # Unequal leaf depths: root -> A, b; A -> a1, a2. depth(a1) = 2, depth(b) = 1.
    tree = Tree([("root", "A"), ("root", "b"), ("A", "a1"), ("A", "a2")])
    # true b, pred a1: S(a1) = {A, root}, S(b) = {root}, shared 1 -> hycoclip lca = 2 - 1 + 1 = 2 (a1 -> A -> root);
    #   inclusive lca = depth(b) - depth(root) = 1 (b -> root).
    assert _one(tree, "b", "a1", "hycoclip")["lca"] == 2
    assert _one(tree, "b", "a1", "inclusive")["lca"] == 1
    # Swapped: hycoclip lca = |S(b)| - 1 + 1 = 1; inclusive lca = depth(a1) - 0 = 2.
    assert _one(tree, "a1", "b", "hycoclip")["lca"] == 1
    assert _one(tree, "a1", "b", "inclusive")["lca"] == 2


def test_errors(toy: Tree) -> None:
    with pytest.raises(ValueError, match="hycoclip, inclusive"):
        hierarchy_metrics(toy, ["a1"], ["a1"], convention="textbook")
    with pytest.raises(ValueError, match="'zz'"):
        hierarchy_metrics(toy, ["a1", "zz"], ["a1", "a1"])
    with pytest.raises(ValueError, match="pred label 'qq'"):
        hierarchy_metrics(toy, ["a1"], ["qq"], convention="inclusive")
    with pytest.raises(ValueError, match="length"):
        hierarchy_metrics(toy, ["a1", "a2"], ["a1"])
    with pytest.raises(ValueError, match="empty"):
        hierarchy_metrics(toy, [], [])
    with pytest.raises(ValueError, match="root"):
        hierarchy_metrics(toy, ["root"], ["a1"])
    # The inclusive convention has no such restriction: I(root) = {root}. Path root-A-a1 has 2 edges; I(a1) &
    # I(root) = {root} -> P = 1/3, R = 1/1, J = 1/3; lca = depth(root) - depth(root) = 0.
    assert _one(toy, "root", "a1", "inclusive") == pytest.approx(
        dict(top1=0, tie=2, lca=0, jaccard=1 / 3, hier_precision=1 / 3, hier_recall=1))


# ---------------------------------------------------------------------------------------------------------------
# HyCoCLIP's pruned ImageNet-1k tree (a test fixture only; the package does not need it)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet() -> Tree:
    if not IMAGENET_ISA.exists():
        pytest.skip(f"{IMAGENET_ISA} not found")
    return Tree.from_edges_file(IMAGENET_ISA)


CHIHUAHUA, JAPANESE_SPANIEL, TABBY, TENCH, RACER = "n02085620", "n02085782", "n02123045", "n01440764", "n04037443"


def test_imagenet_tree_shape(imagenet: Tree) -> None:
    assert len(imagenet) == 1372
    assert len(imagenet.leaves) == 1000
    assert imagenet.root == "n00001930"  # physical_entity.n.01


def test_imagenet_hand_checked_pairs(imagenet: Tree) -> None:
    # From imagenet_isa.txt, strict ancestors (nearest first):
    #   chihuahua        toy_dog dog canine carnivore placental mammal vertebrate animal organism whole object
    #                    physical_entity                                                       (12, depth 12)
    #   Japanese spaniel the same 12 (a sibling of chihuahua under toy_dog n02085374)
    #   tabby            domestic_cat cat feline carnivore ... physical_entity                  (12, depth 12)
    #   tench            cyprinid soft-finned_fish teleost_fish fish vertebrate ... physical_entity (10, depth 10)
    #   racer            car motor_vehicle self-propelled_vehicle wheeled_vehicle vehicle conveyance
    #                    instrumentality artifact whole object physical_entity                   (11, depth 11)
    assert imagenet.depth(CHIHUAHUA) == 12 and imagenet.depth(TENCH) == 10 and imagenet.depth(RACER) == 11

    # Siblings: tie = 2; hycoclip: same strict ancestors -> lca 1, J = P = R = 1.
    # inclusive: shared 12 of 13 each, union 14 -> J = 12/14, P = R = 12/13, lca = 1.
    both = all_conventions(imagenet, [CHIHUAHUA], [JAPANESE_SPANIEL])
    assert both["hycoclip"] == pytest.approx(
        dict(top1=0, tie=2, lca=1, jaccard=1, hier_precision=1, hier_recall=1))
    assert both["inclusive"] == pytest.approx(
        dict(top1=0, tie=2, lca=1, jaccard=12 / 14, hier_precision=12 / 13, hier_recall=12 / 13))

    # chihuahua vs tabby: LCA carnivore (depth 8) -> tie = (12 - 8) + (12 - 8) = 8.
    # hycoclip: shared = carnivore..physical_entity = 9, union 12 + 12 - 9 = 15 -> lca = 12 - 9 + 1 = 4,
    #   J = 9/15, P = R = 9/12. inclusive: shared 9, union 13 + 13 - 9 = 17 -> J = 9/17, P = R = 9/13, lca = 4.
    both = all_conventions(imagenet, [CHIHUAHUA], [TABBY])
    assert both["hycoclip"] == pytest.approx(
        dict(top1=0, tie=8, lca=4, jaccard=9 / 15, hier_precision=9 / 12, hier_recall=9 / 12))
    assert both["inclusive"] == pytest.approx(
        dict(top1=0, tie=8, lca=4, jaccard=9 / 17, hier_precision=9 / 13, hier_recall=9 / 13))

    # true tench, pred racer: LCA whole (depth 2) -> tie = (10 - 2) + (11 - 2) = 17.
    # hycoclip: shared {whole, object, physical_entity} = 3, union 10 + 11 - 3 = 18 -> lca = 11 - 3 + 1 = 9,
    #   J = 3/18, P = 3/11, R = 3/10.
    # inclusive: shared 3, union 11 + 12 - 3 = 20 -> J = 3/20, P = 3/12, R = 3/11, lca = 10 - 2 = 8.
    both = all_conventions(imagenet, [TENCH], [RACER])
    assert both["hycoclip"] == pytest.approx(
        dict(top1=0, tie=17, lca=9, jaccard=3 / 18, hier_precision=3 / 11, hier_recall=3 / 10))
    assert both["inclusive"] == pytest.approx(
        dict(top1=0, tie=17, lca=8, jaccard=3 / 20, hier_precision=3 / 12, hier_recall=3 / 11))


def test_imagenet_properties(imagenet: Tree) -> None:
    leaves = imagenet.leaves
    rng = random.Random(0)
    true = [rng.choice(leaves) for _ in range(3000)]
    # A third of predictions correct, a third a sibling-or-cousin sharing the parent's subtree, a third random.
    pred = []
    for i, t in enumerate(true):
        if i % 3 == 0:
            pred.append(t)
        elif i % 3 == 1:
            pred.append(rng.choice([x for x in leaves if imagenet.parent[x] == imagenet.parent[t]]))
        else:
            pred.append(rng.choice(leaves))
    hy = hierarchy_metrics_per_sample(imagenet, true, pred, "hycoclip")
    inc = hierarchy_metrics_per_sample(imagenet, true, pred, "inclusive")
    rev = hierarchy_metrics_per_sample(imagenet, pred, true, "hycoclip")
    correct = np.array([t == p for t, p in zip(true, pred)])

    # TIE: symmetric, convention-independent, 0 iff correct.
    np.testing.assert_array_equal(hy["tie"], rev["tie"])
    np.testing.assert_array_equal(hy["tie"], inc["tie"])
    np.testing.assert_array_equal(hy["tie"] == 0, correct)
    np.testing.assert_array_equal(hy["top1"] == 1, correct)
    # Scores in [0, 1], equal to 1 when correct.
    for scores in (hy, inc):
        for key in ("jaccard", "hier_precision", "hier_recall"):
            assert np.all((scores[key] >= 0) & (scores[key] <= 1)), key
            assert np.all(scores[key][correct] == 1), key
    # Inclusive sets: J == 1 iff correct; hycoclip sets: J == 1 for correct and for same-parent predictions.
    np.testing.assert_array_equal(inc["jaccard"] == 1, correct)
    same_parent = np.array([imagenet.parent[t] == imagenet.parent[p] for t, p in zip(true, pred)])
    np.testing.assert_array_equal(hy["jaccard"] == 1, same_parent)
    # Precision and recall swap when truth and prediction swap.
    np.testing.assert_allclose(hy["hier_precision"], rev["hier_recall"])
    # LCA error: hycoclip >= 1 (1 when correct), inclusive >= 0 (0 iff correct).
    assert np.all(hy["lca"] >= 1) and np.all(hy["lca"][correct] == 1)
    np.testing.assert_array_equal(inc["lca"] == 0, correct)
    # Closed forms for distinct leaves: hycoclip lca = depth(pred) - depth(LCA), inclusive = depth(true) - depth(LCA),
    # and tie = sum of the two.
    for i, (t, p) in enumerate(zip(true, pred)):
        if t == p:
            continue
        d_lca = imagenet.depth(imagenet.lca(t, p))
        assert hy["lca"][i] == imagenet.depth(p) - d_lca
        assert inc["lca"][i] == imagenet.depth(t) - d_lca
        assert hy["tie"][i] == hy["lca"][i] + inc["lca"][i]
    # Averages agree with the per-sample arrays.
    means = hierarchy_metrics(imagenet, true, pred)
    assert means == pytest.approx({k: float(v.mean()) for k, v in hy.items()})
    assert means["top1"] == pytest.approx(correct.mean())


def test_conventions_constant() -> None:
    assert CONVENTIONS == ("hycoclip", "inclusive")
