"""Image-text retrieval recall@k through a nearest-neighbour index: the numbers of ``euclip.eval.retrieval``.

:func:`retrieval_recall` indexes the captions and searches them with every image (image → text), and indexes the
images and searches them with every caption (text → image), with the protocol of
:func:`euclip.eval.retrieval.retrieval_metrics`: an image is retrieved at ``k`` if any of its captions is among its
``k`` best, a caption if its image is. With an exact index (``"Flat"``) the recalls are the same (ties aside: both
rank by :func:`euclip.geometry.pairwise_logits`); an approximate factory trades recall for speed.

Memory: the two indexes (a copy of the embeddings each for ``"Flat"``, less for compressed ones) and the results,
``(N_i + N_t) × max(ks)`` indices; never a block of the ``N_i × N_t`` score matrix. Queries are searched in batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from euclip.index.search import build_index

__all__ = ["retrieval_recall"]


def retrieval_recall(emb, ks: Sequence[int] = (1, 5, 10), factory: str = "Flat", search_params: str | None = None,
                     batch_size: int = 16384) -> dict:
    """Recall@k for image→text and text→image retrieval over an index.

    Args:
        emb: an :class:`~euclip.eval.embed.Embeddings` (``image``, ``text``, ``text_to_image``, ``geometry``,
            ``logit``, ``curvature``).
        ks: the cut-offs (each ``>= 1``).
        factory: the FAISS index factory string of both indexes.
        search_params: FAISS search parameters (``"nprobe=16"``).
        batch_size: queries per search call (memory of one call's results: ``batch_size × max(ks)``).

    Returns:
        The dictionary of :func:`euclip.eval.retrieval.retrieval_metrics` (``"image_to_text"``, ``"text_to_image"``,
        ``"mean_recall"``, ``"num_images"``, ``"num_texts"``, ``"ks"``) plus ``"factory"`` and ``"search_params"``.

    Raises:
        ValueError: mismatched shapes, an image without captions, a caption pointing at no image, bad ``ks``.
    """
    from euclip.eval.retrieval import check_retrieval_inputs, recalls

    image, text = torch.as_tensor(emb.image), torch.as_tensor(emb.text)
    text_to_image = check_retrieval_inputs(image, text, emb.text_to_image, ks)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k_max = max(ks)

    def nearest(database: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        index = build_index(database, None, emb.geometry, emb.logit, emb.curvature, factory,
                            search_params=search_params)
        k = min(k_max, len(index))
        parts = [index.search(queries[s:s + batch_size], k).indices for s in range(0, queries.shape[0], batch_size)]
        return torch.cat(parts)

    best_texts = nearest(text, image)  # (N_i, min(k_max, N_t)) caption rows, best first (-1: fewer found)
    best_images = nearest(image, text)  # (N_t, min(k_max, N_i))
    return {**recalls(best_texts, best_images, text_to_image, ks), "factory": factory, "search_params": search_params}
