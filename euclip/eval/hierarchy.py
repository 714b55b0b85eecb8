"""Hierarchy-aware scores of top-1 predictions: how *bad* is a mistake, given a class taxonomy.

For each sample, with ``t`` the true class and ``p`` the predicted one (both nodes of a :class:`~euclip.tree.Tree`,
normally leaves), and ``A(x)`` the ancestor set of ``x``:

==================  ===========================================================================================
key                 per-sample value (averaged over samples)
==================  ===========================================================================================
``top1``            1 if ``p == t`` else 0
``tie``             tree-induced error: number of edges on the tree path between ``p`` and ``t``
``lca``             LCA error (definition depends on the convention, below)
``jaccard``         ``|A(p) & A(t)| / |A(p) | A(t)|``
``hier_precision``  ``|A(p) & A(t)| / |A(p)|``
``hier_recall``     ``|A(p) & A(t)| / |A(t)|``
==================  ===========================================================================================

Two conventions for ``A`` and the LCA error, selected by ``convention``:

``"hycoclip"``
    As in HyCoCLIP (Pal et al., ICLR 2025, arXiv 2410.06912), ``hycoclip/evaluation/hierarchical_metrics.py``
    (function ``hierarchical_based_metrics``; read in the public copies github.com/dyoshyy/hycoclip and
    github.com/BarnabasJuhasz1/hycoclip_v2). ``A(x)`` holds the *strict* ancestors of ``x`` (the class itself is
    left out) and the LCA error is ``|A(p)| - |A(p) & A(t)| + 1`` ("+1 for the actual class label"). So a correct
    prediction scores 1, and for two distinct leaves the score is the number of edges from the *prediction* up to
    their lowest common ancestor. Two consequences worth knowing: a sibling of the true class (same parent) gets
    ``lca == 1``, ``jaccard == hier_precision == hier_recall == 1``, exactly like a correct prediction (only ``tie``
    and ``top1`` tell them apart); and the LCA error is not symmetric in ``p`` and ``t``.

``"inclusive"``
    The textbook sets (Kiritchenko et al. 2006; Kosmopoulos et al. 2015): ``A(x)`` includes ``x`` itself, and the
    LCA error is the number of edges from the *true* class up to the lowest common ancestor, 0 for a correct
    prediction. Siblings score ``lca == 1`` and set-overlap scores below 1.

``tie`` and ``top1`` do not depend on the convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from euclip.eval.registry import EvalContext, Metric, NotApplicable, register_evaluation
from euclip.tree import Tree

__all__ = ["CONVENTIONS", "METRIC_KEYS", "all_conventions", "hierarchy", "hierarchy_metrics",
           "hierarchy_metrics_per_sample", "load_tree"]

#: Valid values of ``convention``.
CONVENTIONS: tuple[str, ...] = ("hycoclip", "inclusive")

#: Keys of the dictionaries returned by :func:`hierarchy_metrics` and :func:`hierarchy_metrics_per_sample`.
METRIC_KEYS: tuple[str, ...] = ("top1", "tie", "lca", "jaccard", "hier_precision", "hier_recall")


def _check_inputs(tree: Tree, true: Sequence[str], pred: Sequence[str], convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid conventions: {', '.join(CONVENTIONS)}")
    if len(true) != len(pred):
        raise ValueError(f"true and pred differ in length: {len(true)} != {len(pred)}")
    if len(true) == 0:
        raise ValueError("no samples: true and pred are empty")
    for which, labels in (("true", true), ("pred", pred)):
        # Check each distinct label once: the sequences are typically 50k samples over 1k classes.
        for label in dict.fromkeys(labels):
            if label not in tree:
                raise ValueError(f"{which} label {label!r} is not a node of the tree")
            if convention == "hycoclip" and label == tree.root:
                # Its strict ancestor set is empty, so precision/recall/Jaccard would divide by zero.
                raise ValueError(f"{which} label {label!r} is the tree's root, which has no ancestors; "
                                 "the 'hycoclip' convention needs labels below the root")


def _pair_scores(tree: Tree, t: str, p: str, convention: str,
                 ancestor_sets: dict[str, frozenset[str]]) -> tuple[float, ...]:
    """Scores of one ``(true, pred)`` pair, in the order of :data:`METRIC_KEYS`."""
    include_self = convention == "inclusive"
    for node in (t, p):
        if node not in ancestor_sets:
            ancestor_sets[node] = frozenset(tree.ancestors(node, include_self=include_self))
    a_true, a_pred = ancestor_sets[t], ancestor_sets[p]
    shared = len(a_true & a_pred)
    union = len(a_true | a_pred)
    if convention == "hycoclip":
        # HyCoCLIP: len(pred_ancestors) - len(intersection) + 1, with strict ancestor sets.
        lca_error = len(a_pred) - shared + 1
    else:
        lca_error = tree.depth(t) - tree.depth(tree.lca(t, p))
    return (
        float(t == p),
        float(tree.distance(t, p)),
        float(lca_error),
        shared / union,
        shared / len(a_pred),
        shared / len(a_true),
    )


def hierarchy_metrics_per_sample(tree: Tree, true: Sequence[str], pred: Sequence[str],
                                 convention: str = "hycoclip") -> dict[str, np.ndarray]:
    """Per-sample hierarchy-aware scores of top-1 predictions.

    Args:
        tree: the class taxonomy.
        true: true class of each sample (node ids of ``tree``, normally leaves).
        pred: predicted class of each sample, same length as ``true``.
        convention: ``"hycoclip"`` or ``"inclusive"``; see the module docstring.

    Returns:
        One float64 array of shape ``(len(true),)`` per key of :data:`METRIC_KEYS`.

    Raises:
        ValueError: unknown convention, lengths differ, no samples, a label not in the tree, or (``"hycoclip"``)
            a label that is the root.
    """
    _check_inputs(tree, true, pred, convention)
    ancestor_sets: dict[str, frozenset[str]] = {}
    # Many samples share a (true, pred) pair (every correct prediction of a class, common confusions), so score
    # each distinct pair once.
    pair_cache: dict[tuple[str, str], tuple[float, ...]] = {}
    rows = []
    for t, p in zip(true, pred, strict=True):
        scores = pair_cache.get((t, p))
        if scores is None:
            scores = pair_cache[(t, p)] = _pair_scores(tree, t, p, convention, ancestor_sets)
        rows.append(scores)
    table = np.asarray(rows, dtype=np.float64)
    return {key: table[:, i] for i, key in enumerate(METRIC_KEYS)}


def hierarchy_metrics(tree: Tree, true: Sequence[str], pred: Sequence[str],
                      convention: str = "hycoclip") -> dict[str, float]:
    """Hierarchy-aware scores of top-1 predictions, averaged over samples.

    Args:
        tree: the class taxonomy.
        true: true class of each sample (node ids of ``tree``, normally leaves).
        pred: predicted class of each sample, same length as ``true``.
        convention: ``"hycoclip"`` (HyCoCLIP's definitions: strict ancestor sets, LCA error 1 when correct) or
            ``"inclusive"`` (ancestor sets include the node, LCA error 0 when correct); see the module docstring.

    Returns:
        ``{"top1", "tie", "lca", "jaccard", "hier_precision", "hier_recall"}`` mapped to their means.

    Raises:
        ValueError: unknown convention, lengths differ, no samples, a label not in the tree, or (``"hycoclip"``)
            a label that is the root.
    """
    per_sample = hierarchy_metrics_per_sample(tree, true, pred, convention)
    return {key: float(values.mean()) for key, values in per_sample.items()}


def all_conventions(tree: Tree, true: Sequence[str], pred: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`hierarchy_metrics` under every convention of :data:`CONVENTIONS`.

    Args:
        tree: the class taxonomy.
        true: true class of each sample.
        pred: predicted class of each sample.

    Returns:
        ``{convention: metrics}`` for each convention.
    """
    return {convention: hierarchy_metrics(tree, true, pred, convention) for convention in CONVENTIONS}


# ----------------------------------------------------------------------------------------------------------------
# The registered evaluation: hierarchy metrics of the zero-shot predictions
# ----------------------------------------------------------------------------------------------------------------


def load_tree(spec: str, classes: Sequence[str]) -> Tree:
    """``"wordnet"``: the WordNet tree over ``classes`` (wnids); ``"shapes"``: the synthetic taxonomy; else an
    edges file whose nodes include ``classes``."""
    if spec == "wordnet":
        from euclip.eval.wordnet import WordNetUnavailableError, wordnet_tree

        try:
            return wordnet_tree(list(classes))
        except WordNetUnavailableError as e:
            # Bad setup, not a bug: the CLI prints a ValueError as one line (the message says how to install).
            raise ValueError(str(e)) from e
    if spec == "shapes":
        from euclip.data.synthetic import shape_taxonomy

        return shape_taxonomy()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"--tree: no such edges file: {spec} (or use 'wordnet' or 'shapes')")
    tree = Tree.from_edges_file(spec)
    missing = [c for c in classes if c not in tree]
    if missing:
        raise ValueError(f"{len(missing)} class(es) are not nodes of the tree in {spec}: {missing[:5]}")
    return tree


def _convention_metric(convention: str, key: str, label: str, higher: bool) -> Metric:
    return Metric(f"{key}_{convention}", label, ("conventions", convention, key), "num", higher)


@register_evaluation(
    "hierarchy", title="Hierarchy (top-1 zero-shot predictions)", requires=("labels",),
    settings=("tree", "classnames", "templates"),
    summary="hierarchy-aware scores (TIE, LCA, Jaccard, ...) of top-1 zero-shot predictions",
    description="Scores how bad top-1 zero-shot mistakes are in a class taxonomy (tree-induced error, LCA error, "
                "Jaccard, hierarchical precision and recall), under HyCoCLIP's and the inclusive conventions (see "
                "euclip.eval.hierarchy). Synthetic images are scored on the shape taxonomy (shape → family → leaf); "
                "an ImageNet-style folder whose sub-folders are wnids on their WordNet tree, or any folder on a tree "
                "given as a 'parent child' edges file (--tree FILE) whose nodes include the folder names.",
    metrics=(Metric("top1", "top-1", ("top1",), "pct"),
             Metric("tie", "tree-induced error (TIE) ↓", ("conventions", "hycoclip", "tie"), "num", False),
             _convention_metric("hycoclip", "lca", "LCA error, HyCoCLIP ↓", False),
             _convention_metric("inclusive", "lca", "LCA error, inclusive ↓", False),
             _convention_metric("hycoclip", "jaccard", "Jaccard, HyCoCLIP", True),
             _convention_metric("inclusive", "jaccard", "Jaccard, inclusive", True),
             _convention_metric("inclusive", "hier_precision", "hier. precision, inclusive", True),
             _convention_metric("inclusive", "hier_recall", "hier. recall, inclusive", True)),
    examples=("euclip eval hierarchy runs/meru",
              "euclip eval hierarchy runs/meru --data imagenet/val --num-samples 5000",
              "euclip eval hierarchy runs/meru --data my_images --tree my_tree.txt --classnames names.txt"))
def hierarchy(ctx: EvalContext) -> dict:
    from euclip.eval.zeroshot import zeroshot_tasks

    tasks = zeroshot_tasks(ctx)
    task = tasks.get("shape") or tasks["classes"]
    classes = task["classes"]
    tree = ctx.settings.tree or ("shapes" if "shape" in tasks else "wordnet")
    from euclip.eval.wordnet import are_wnids

    if tree == "wordnet" and not are_wnids(classes):
        raise NotApplicable(f"the classes are not WordNet ids ({classes[0]!r}, ...): give a taxonomy with --tree")
    true = [classes[i] for i in task["labels"].tolist()]
    pred = [classes[i] for i in task["top"][:, 0].tolist()]
    results = {"conventions": all_conventions(load_tree(tree, classes), true, pred),
               "top1": sum(t == p for t, p in zip(true, pred)) / len(true), "num_samples": len(true), "tree": tree,
               "top5": (task["top"] == task["labels"][:, None]).any(1).float().mean().item()}
    if "shape" in tasks:
        results.update(classes="synthetic shapes", templates="synthetic")
    else:
        results.update(classes=classes, classnames=task["classnames"], templates=ctx.settings.templates or "openai")
    return results
