"""Image traversals: walk from an image's embedding toward the root and read off the nearest caption at each step.

MERU's qualitative probe (Desai et al. 2023, Sec. 5.3), generalised to every geometry. From an image's point ``x``
the walk visits ``steps + 1`` points from ``x`` (``t = 0``) to the root (``t = 1``):

* **euclidean**: the straight segment to the origin, ``(1 − t) x``;
* **hyperbolic**: the geodesic to the origin (the hyperboloid's vertex), ``exp_map0((1 − t) log_map0(x))``, as MERU
  does (geodesics through the origin are straight lines in its tangent space);
* **elliptic**: the origin is not on the sphere, so the walk follows the great circle (``slerp``) to a *root point on
  the sphere*: the normalised mean embedding of the pool's level-0 captions (``"a shape"``, ``"an object"``, ...).
  That is the caption-side analogue of MERU's ``[ROOT]``; MERU's CLIP baseline used the mean of all pool texts, which
  for this pool would be dominated by its 1,200 most specific captions and so would not be a generic point.

At each point the best caption of a pool (scored with the model's own logit) is retrieved and consecutive repeats
are removed. On the synthetic data each pool caption names a node of the shape taxonomy (:func:`caption_pool`), so a
walk can be scored against the image's true ancestor chain (leaf shape → family → ``shape``):

* ``on_path``: fraction of retrieved captions (over all walks) whose node is on the image's ancestor chain;
* ``monotone``: fraction of walks whose caption levels never increase (they only get more generic);
* ``reaches_root``: fraction of walks that end on a level-0 caption; ``starts_on_leaf``: fraction whose first caption
  names the image's own shape; ``mean_length``: distinct captions per walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from tqdm.auto import tqdm

from euclip import geometry as geom
from euclip.eval.embed import embed_texts
from euclip.eval.registry import EvalContext, Metric, register_evaluation
from euclip.geometry.hyperbolic import exp_map0, log_map0
from euclip.tree import Tree

__all__ = [
    "dedupe",
    "format_walk",
    "interpolation_path",
    "nearest_captions",
    "root_point",
    "traversal",
    "slerp",
    "traversal_scores",
    "traverse_embeddings",
]


def root_point(geometry: str, pool_emb: torch.Tensor, pool_levels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The walk's end point ``(D,)``: the origin (euclidean, hyperbolic), else the normalised mean of level-0 captions.

    Args:
        geometry: the model's geometry.
        pool_emb: ``(P, D)`` caption embeddings on the manifold.
        pool_levels: ``(P,)`` caption levels; elliptic needs at least one level-0 caption.
    """
    if geometry != "elliptic":
        return torch.zeros(pool_emb.shape[1], dtype=pool_emb.dtype)
    levels = torch.as_tensor(pool_levels)
    generic = pool_emb[levels == 0]
    if generic.shape[0] == 0:
        raise ValueError("an elliptic traversal needs level-0 (root) captions in the pool to define its end point")
    return geom.project(generic.mean(0), "elliptic")


def slerp(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle interpolation on the unit sphere from each row of ``start`` ``(B, D)`` to ``end`` ``(D,)``.

    Args:
        start: ``(B, D)`` unit vectors.
        end: ``(D,)`` unit vector.
        t: ``(S,)`` fractions in ``[0, 1]``.

    Returns:
        ``(B, S, D)`` unit vectors; where ``start`` and ``end`` (nearly) coincide, the normalised linear interpolation.
    """
    cos = (start @ end).clamp(-1, 1)[:, None, None]  # (B, 1, 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    tt = t[None, :, None]
    linear = sin < 1e-6  # parallel: slerp's weights are 0/0
    safe_sin = torch.where(linear, torch.ones_like(sin), sin)
    w_start = torch.where(linear, 1 - tt, torch.sin((1 - tt) * omega) / safe_sin)
    w_end = torch.where(linear, tt, torch.sin(tt * omega) / safe_sin)
    out = w_start * start[:, None, :] + w_end * end[None, None, :]
    return geom.project(out, "elliptic")


def interpolation_path(points: torch.Tensor, geometry: str, steps: int, curvature: float | torch.Tensor = 1.0,
                       root: torch.Tensor | None = None) -> torch.Tensor:
    """Points from each row of ``points`` ``(B, D)`` to the root in ``steps`` equal steps, ``(B, steps + 1, D)``.

    See the module docstring for the path in each geometry; ``root`` is required for elliptic (a unit vector) and
    ignored otherwise (the root is the origin).
    """
    geom.check_geometry(geometry)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(0, 1, steps + 1, dtype=points.dtype)
    if geometry == "euclidean":
        return (1 - t)[None, :, None] * points[:, None, :]
    if geometry == "hyperbolic":
        c = torch.as_tensor(curvature, dtype=points.dtype)
        tangent = log_map0(points, c)
        return exp_map0((1 - t)[None, :, None] * tangent[:, None, :], c)
    if root is None:
        raise ValueError("an elliptic traversal needs a root point on the sphere")
    return slerp(points, root.to(points.dtype), t)


@torch.no_grad()
def nearest_captions(path: torch.Tensor, pool_emb: torch.Tensor, geometry: str, logit: str,
                     curvature: float | torch.Tensor = 1.0, chunk: int = 4096) -> torch.Tensor:
    """Index of the best pool caption (highest logit) for every path point: ``(B, S, D)`` → ``(B, S)`` long."""
    flat = path.reshape(-1, path.shape[-1])
    best = [geom.pairwise_logits(flat[s:s + chunk], pool_emb, geometry, logit, curvature).argmax(1)
            for s in range(0, flat.shape[0], chunk)]
    return torch.cat(best).view(path.shape[:2])


def dedupe(sequence: Sequence[int]) -> list[int]:
    """``sequence`` without consecutive repeats: ``[3, 3, 1, 1, 3] → [3, 1, 3]``."""
    out: list[int] = []
    for x in sequence:
        if not out or out[-1] != x:
            out.append(int(x))
    return out


def traversal_scores(walks: Sequence[Sequence[int]], pool_nodes: Sequence[str], pool_levels: Sequence[int],
                     true_leaves: Sequence[str], tree: Tree) -> dict[str, float]:
    """How well deduplicated walks follow each image's ancestor chain (see the module docstring).

    Args:
        walks: per image, pool indices in walk order (consecutive repeats removed).
        pool_nodes: tree node named by each pool caption.
        pool_levels: level of each pool caption (0 = root).
        true_leaves: each image's true node (a leaf of ``tree``).
        tree: the taxonomy.

    Returns:
        ``{"on_path", "monotone", "reaches_root", "starts_on_leaf", "mean_length", "num_walks"}``.
    """
    if len(walks) != len(true_leaves) or not walks:
        raise ValueError(f"need one true leaf per walk and at least one walk, got {len(walks)} walks and "
                         f"{len(true_leaves)} leaves")
    on_path = total = monotone = reaches_root = starts_on_leaf = 0
    for walk, leaf in zip(walks, true_leaves):
        chain = set(tree.ancestors(leaf, include_self=True))
        on_path += sum(pool_nodes[i] in chain for i in walk)
        total += len(walk)
        levels = [pool_levels[i] for i in walk]
        monotone += all(a >= b for a, b in pairwise(levels))
        reaches_root += levels[-1] == 0
        starts_on_leaf += pool_nodes[walk[0]] == leaf
    n = len(walks)
    return {"on_path": on_path / total, "monotone": monotone / n, "reaches_root": reaches_root / n,
            "starts_on_leaf": starts_on_leaf / n, "mean_length": total / n, "num_walks": n}


def traverse_embeddings(image_emb: torch.Tensor, pool_emb: torch.Tensor, pool: Sequence[tuple[str, int, str]],
                        true_leaves: Sequence[str], tree: Tree, geometry: str, logit: str,
                        curvature: float | torch.Tensor = 1.0, steps: int = 20, batch: int = 64) -> dict:
    """Walk every image to the root, retrieve captions and score the walks.

    Args:
        image_emb: ``(B, D)`` image points on the manifold.
        pool_emb: ``(P, D)`` caption points.
        pool: ``(caption, level, node)`` per pool row (:func:`euclip.data.synthetic.caption_pool`).
        true_leaves: ``B`` true tree nodes.
        tree: the taxonomy the nodes belong to.
        geometry, logit, curvature: the model's.
        steps: interpolation steps (``steps + 1`` points per walk).
        batch: images walked at once (memory ``batch · (steps + 1) · P``).

    Returns:
        :func:`traversal_scores`' dictionary plus ``"walks"``: per image the deduplicated pool indices, and
        ``"root"``: how the end point was chosen.
    """
    levels = [lv for _, lv, _ in pool]
    nodes = [nd for _, _, nd in pool]
    root = root_point(geometry, pool_emb, levels)
    walks: list[list[int]] = []
    for s in range(0, image_emb.shape[0], batch):
        path = interpolation_path(image_emb[s:s + batch], geometry, steps, curvature, root)
        walks += [dedupe(row.tolist()) for row in nearest_captions(path, pool_emb, geometry, logit, curvature)]
    scores = traversal_scores(walks, nodes, levels, true_leaves, tree)
    scores["walks"] = walks
    scores["root"] = "origin" if geometry != "elliptic" else "normalised mean of the level-0 captions"
    return scores


def format_walk(captions: Sequence[str]) -> str:
    """One line for a walk: ``a red triangle → a triangle → a polygon → a shape``."""
    return " → ".join(captions)


@register_evaluation(
    "traversal", title="Traversals", requires=("attributes",),
    settings=("traversal_images", "traversal_steps", "traversal_examples"),
    summary="walk image embeddings toward the root and retrieve captions along the way",
    description="MERU's image traversals for every geometry: from each synthetic image's embedding, step toward the "
                "root (euclidean: straight to the origin; hyperbolic: the geodesic to the origin; elliptic: the great "
                "circle to the normalised mean of the root captions) and retrieve the best caption of the shape "
                "taxonomy's caption pool at each step. Reports how often the retrieved captions lie on the image's "
                "true ancestor chain and how often the walk only gets more generic, with examples.",
    metrics=(Metric("on_path", "captions on true ancestor chain", ("on_path",), "pct"),
             Metric("monotone", "walks with non-increasing level", ("monotone",), "pct"),
             Metric("reaches_root", "walks ending on a root caption", ("reaches_root",), "pct"),
             Metric("mean_length", "distinct captions per walk", ("mean_length",), "num", None)),
    examples=("euclip eval traversal runs/meru --num-images 200", "euclip traverse runs/meru --num-images 200"),
    details=lambda r: [f"[{ex['image']['color']} {ex['image']['shape']}] " + format_walk(w["caption"] for w in ex["walk"])
                       for ex in r["examples"]])
@torch.no_grad()
def traversal(ctx: EvalContext) -> dict:
    """Traversals of the first ``traversal_images`` synthetic images with the canonical caption pool.

    Returns:
        Scores (:func:`traversal_scores`), ``"examples"`` (``{"image": attributes, "walk": [{"caption", "level",
        "node", "on_path"}]}``), and the settings.
    """
    from euclip.data.synthetic import caption_pool, shape_taxonomy

    model, settings = ctx.model, ctx.settings
    pool, tree = caption_pool(), shape_taxonomy()
    emb = ctx.embeddings()
    n, steps = min(settings.traversal_images, emb.num_images), settings.traversal_steps
    pool_emb, _ = embed_texts(model, [c for c, _, _ in pool], ctx.device)
    leaves = [info["shape"] for info in emb.image_info[:n]]
    walks, scores = [], {}
    for s in tqdm(range(0, n, 64), desc="traverse", disable=not ctx.progress, leave=False):
        part = traverse_embeddings(emb.image[:n][s:s + 64], pool_emb, pool, leaves[s:s + 64], tree, model.geometry,
                                   model.logit, emb.curvature, steps)
        walks += part.pop("walks")
        scores["root"] = part["root"]
    scores.update(traversal_scores(walks, [p[2] for p in pool], [p[1] for p in pool], leaves, tree))
    examples = []
    for i in range(min(settings.traversal_examples, n)):
        chain = set(tree.ancestors(leaves[i], include_self=True))
        walk = [{"caption": pool[j][0], "level": pool[j][1], "node": pool[j][2], "on_path": pool[j][2] in chain}
                for j in walks[i]]
        image = {k: emb.image_info[i][k] for k in ("shape", "family", "color", "size", "position", "background")}
        examples.append({"image": image, "walk": walk})
    scores.update(examples=examples, steps=steps, num_images=n, pool_size=len(pool), split=ctx.spec.split,
                  seed=ctx.spec.seed, geometry=model.geometry, logit=model.logit, curvature=emb.curvature)
    return scores
