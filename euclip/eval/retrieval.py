"""Zero-shot image-text retrieval with each geometry's own logits: recall@k in both directions.

Scores are :func:`euclip.geometry.pairwise_logits` with the logit the model was trained with (the logit scale is a
positive multiplier and does not change rankings). Several captions per image are supported:

* image → text: an image is retrieved correctly at ``k`` if *any* of its captions is among its ``k`` best texts;
* text → image: a caption is retrieved correctly at ``k`` if *its* image is among its ``k`` best images.

Memory stays bounded for any number of pairs: the score matrix is computed in ``chunk × chunk`` blocks and each
query keeps only a running top-``k`` (values and indices) that every block is merged into, so the largest tensor is
one block, plus ``(N_images + N_texts) × max(ks)`` for the running lists. Since all three logits are symmetric
(``s(x, y) = s(y, x)``) each block serves both directions: its rows update the images' lists, its columns the texts'.

Ties between scores are broken by :func:`torch.topk` (arbitrarily); with continuous embeddings they do not occur.
Identical caption strings of different images count as different captions (the usual protocol): on the synthetic
data a generic caption such as "a polygon." describes many images but is correct for one only, which caps recall
for generic captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from euclip import geometry as geom
from euclip.eval.embed import Embeddings
from euclip.eval.registry import EvalContext, Metric, register_evaluation

__all__ = ["retrieval", "retrieval_from_embeddings", "retrieval_metrics"]


def _merge_topk(values: torch.Tensor, indices: torch.Tensor, new_values: torch.Tensor, new_indices: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a block's candidates ``(Q, m)`` into running lists ``(Q, k')``; returns the best ``min(k, k'+m)``."""
    all_values = torch.cat([values, new_values], dim=1)
    all_indices = torch.cat([indices, new_indices], dim=1)
    top = all_values.topk(min(k, all_values.shape[1]), dim=1)
    return top.values, all_indices.gather(1, top.indices)


@torch.no_grad()
def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, geometry: str,
                      logit: str, curvature: float | torch.Tensor = 1.0, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024) -> dict:
    """Recall@k for image→text and text→image retrieval, computed blockwise.

    Args:
        image_emb: ``(N_i, D)`` image points on the manifold.
        text_emb: ``(N_t, D)`` caption points on the manifold.
        text_to_image: ``(N_t,)`` long: the row of ``image_emb`` that caption ``j`` describes. Every image needs at
            least one caption.
        geometry, logit, curvature: as for :func:`euclip.geometry.pairwise_logits`.
        ks: the cut-offs (each ``>= 1``).
        chunk: block side; memory is ``O(chunk² + (N_i + N_t) · max(ks))``.

    Returns:
        ``{"image_to_text": {"R@1": ..}, "text_to_image": {"R@1": ..}, "mean_recall": mean of all recalls,
        "num_images", "num_texts", "ks"}``. Recalls are fractions in ``[0, 1]``.

    Raises:
        ValueError: mismatched shapes, an image without captions, a caption pointing at no image, bad ``ks``.
    """
    text_to_image = check_retrieval_inputs(image_emb, text_emb, text_to_image, ks)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    k_max = max(ks)
    device = image_emb.device
    dtype = torch.float64 if image_emb.dtype == torch.float64 else torch.float32
    image_emb, text_emb = image_emb.to(dtype), text_emb.to(device, dtype)
    # Running lists start empty (width 0) and grow to k_max as blocks are merged in.
    img_vals = [torch.empty(min(chunk, n_img - s), 0, dtype=dtype, device=device) for s in range(0, n_img, chunk)]
    img_idx = [torch.empty(v.shape, dtype=torch.long, device=device) for v in img_vals]
    txt_vals = [torch.empty(min(chunk, n_txt - s), 0, dtype=dtype, device=device) for s in range(0, n_txt, chunk)]
    txt_idx = [torch.empty(v.shape, dtype=torch.long, device=device) for v in txt_vals]
    for bi, i0 in enumerate(range(0, n_img, chunk)):
        images = image_emb[i0:i0 + chunk]
        for bj, j0 in enumerate(range(0, n_txt, chunk)):
            block = geom.pairwise_logits(images, text_emb[j0:j0 + chunk], geometry, logit, curvature)
            k_rows, k_cols = min(k_max, block.shape[1]), min(k_max, block.shape[0])
            top = block.topk(k_rows, dim=1)
            img_vals[bi], img_idx[bi] = _merge_topk(img_vals[bi], img_idx[bi], top.values, top.indices + j0, k_max)
            top = block.T.topk(k_cols, dim=1)
            txt_vals[bj], txt_idx[bj] = _merge_topk(txt_vals[bj], txt_idx[bj], top.values, top.indices + i0, k_max)
            del block, top
    # (N_i, min(k_max, N_t)) caption indices and (N_t, min(k_max, N_i)) image indices, best first
    return recalls(torch.cat(img_idx).cpu(), torch.cat(txt_idx).cpu(), text_to_image, ks)


def check_retrieval_inputs(image: torch.Tensor, text: torch.Tensor, text_to_image, ks: Sequence[int]) -> torch.Tensor:
    """Validate retrieval inputs (raises ValueError naming what is wrong); returns ``text_to_image`` as CPU longs."""
    n_img, n_txt = image.shape[0], text.shape[0]
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long).cpu()
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1]:
        raise ValueError(f"need (N_i, D) and (N_t, D) embeddings, got {tuple(image.shape)} and {tuple(text.shape)}")
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},), got {tuple(text_to_image.shape)}")
    if n_img == 0 or n_txt == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if text_to_image.min() < 0 or text_to_image.max() >= n_img:
        raise ValueError(f"text_to_image has entries outside [0, {n_img})")
    if torch.bincount(text_to_image, minlength=n_img).min() == 0:
        raise ValueError("every image needs at least one caption (text_to_image misses some images)")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return text_to_image


def recalls(best_texts: torch.Tensor, best_images: torch.Tensor, text_to_image: torch.Tensor,
            ks: Sequence[int]) -> dict:
    """Recall@k both ways from each image's best captions ``(N_i, k)`` and each caption's best images ``(N_t, k)``
    (best first; −1 marks a missing result, which never matches)."""
    n_img, n_txt = best_texts.shape[0], best_images.shape[0]
    # image → text: a hit at rank r if the r-th best caption describes this image.
    owner = torch.where(best_texts >= 0, text_to_image[best_texts.clamp_min(0)], -1)
    i2t_hit = owner == torch.arange(n_img)[:, None]
    t2i_hit = best_images == text_to_image[:, None]
    i2t = {f"R@{k}": i2t_hit[:, :k].any(1).float().mean().item() for k in ks}
    t2i = {f"R@{k}": t2i_hit[:, :k].any(1).float().mean().item() for k in ks}
    values = list(i2t.values()) + list(t2i.values())
    return {"image_to_text": i2t, "text_to_image": t2i, "mean_recall": sum(values) / len(values),
            "num_images": n_img, "num_texts": n_txt, "ks": list(ks)}


def retrieval_from_embeddings(emb: Embeddings, ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict:
    """:func:`retrieval_metrics` on an :class:`~euclip.eval.embed.Embeddings`."""
    return retrieval_metrics(emb.image, emb.text, emb.text_to_image, emb.geometry, emb.logit, emb.curvature, ks,
                             chunk)


def _recall(direction: str, k: int) -> Metric:
    arrow = "image→text" if direction == "image_to_text" else "text→image"
    return Metric(f"{direction}_R@{k}", f"{arrow} R@{k}", (direction, f"R@{k}"), "pct")


@register_evaluation(
    "retrieval", title="Retrieval", requires=("captions",), settings=("ks", "chunk", "index", "index_params"),
    summary="image→text and text→image recall@1/5/10 with the model's geometry",
    description="Zero-shot retrieval: every image is scored against every caption with the geometry's own logit "
                "(computed in blocks, so 100k pairs fit in memory); an image counts as retrieved if any of its "
                "captions is in its top k, a caption if its image is. Rows of a CSV that share an image path are one "
                "image with several captions.",
    metrics=(*(_recall(d, k) for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)),
             Metric("mean_recall", "mean recall", ("mean_recall",), "pct"),
             Metric("pairs", "pairs", ("num_texts",), "int", None)),
    examples=("euclip eval retrieval runs/meru --num-samples 2000",
              "euclip eval retrieval runs/meru --dataset-type csv --data val.tsv --csv-img-key filepath",
              "euclip eval retrieval runs/meru --num-samples 100000 --index Flat   # bounded memory at any N"))
def retrieval(ctx: EvalContext) -> dict:
    emb = ctx.embeddings()
    if ctx.settings.index:
        from euclip.index import retrieval_recall

        results = retrieval_recall(emb, ctx.settings.ks, ctx.settings.index, ctx.settings.index_params)
    else:
        results = retrieval_from_embeddings(emb, ctx.settings.ks, ctx.settings.chunk)
    results.update(geometry=emb.geometry, logit=emb.logit, curvature=emb.curvature, chunk=ctx.settings.chunk,
                   skipped_images=emb.skipped)
    return results
