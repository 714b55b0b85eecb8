"""Embed an evaluation set of image-caption pairs with a trained model, in batches, for every evaluation.

Retrieval, geometry diagnostics, traversals and hierarchy scores all start from the same thing: the manifold points
of a set of images and of their captions, with a map from each caption to its image. A
:class:`~euclip.data.sources.DataSpec` names the data (any registered source: the synthetic test split, a CSV/TSV
file, webdataset shards, an image folder), :func:`embed` streams it through the model in batches with a progress
bar and returns an :class:`Embeddings`. Only ``(N, D)`` embeddings are kept, never images.

Several captions per image are supported: a CSV with several rows for one image path gives one image and several
captions (rows are grouped by path, in file order). Webdataset samples and synthetic samples carry one caption each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from euclip import geometry as geom
from euclip.data.sources import DataSpec

__all__ = ["DataSpec", "Embeddings", "curvature_of", "embed", "embed_texts", "norms"]

log = logging.getLogger(__name__)


def curvature_of(model) -> float:
    """The model's ``c`` as a plain float (1.0 for the geometries that ignore it)."""
    c = model.curvature
    return float(c.detach().item()) if isinstance(c, torch.Tensor) else float(c)


@dataclass
class Embeddings:
    """Manifold points of a set of images and captions (hyperbolic: space components).

    Attributes:
        image: ``(N_i, D)`` image embeddings.
        text: ``(N_t, D)`` caption embeddings.
        text_to_image: ``(N_t,)`` long, the row of ``image`` each caption describes.
        image_tower_norm: ``(N_i,)`` norms of the image tower outputs before the geometry head
            (for elliptic models the only norm that varies).
        text_tower_norm: ``(N_t,)`` the same for captions.
        captions: the ``N_t`` caption strings.
        geometry, logit, curvature: the model's, so metrics can be computed without the model.
        image_info: per image, what the source knows of it: synthetic attributes (``{"shape", "family", "color",
            ...}``) or a folder's class (``{"label", "class"}``); ``None`` when the source knows nothing.
        caption_levels: synthetic data only: ``(N_t,)`` caption specificity level 0..4.
        skipped: images that could not be read (csv/webdataset/folder), with their captions left out.
    """

    image: torch.Tensor
    text: torch.Tensor
    text_to_image: torch.Tensor
    image_tower_norm: torch.Tensor
    text_tower_norm: torch.Tensor
    captions: list[str]
    geometry: str
    logit: str
    curvature: float
    image_info: list[dict] | None = None
    caption_levels: torch.Tensor | None = None
    skipped: int = 0

    @property
    def num_images(self) -> int:
        return self.image.shape[0]

    @property
    def num_texts(self) -> int:
        return self.text.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_texts(model, texts: list[str], device: torch.device | str = "cpu",
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Manifold points ``(N, D)`` and tower-output norms ``(N,)`` of ``texts``, in batches, on the CPU."""
    tokenizer = model.tokenizer()
    points, norms = [], []
    for start in range(0, len(texts), batch_size):
        features = model.towers.encode_text(tokenizer(texts[start:start + batch_size]).to(device)).float()
        norms.append(features.norm(dim=-1).cpu())
        points.append(model.to_manifold(features, "text").float().cpu())
    if not points:
        d = model.embed_dim
        return torch.empty(0, d), torch.empty(0)
    return torch.cat(points), torch.cat(norms)


@torch.no_grad()
def embed(model, spec: DataSpec, device: torch.device | str = "cpu", progress: bool = True,
          desc: str = "embed") -> Embeddings:
    """Embed the images and captions of ``spec`` with ``model``, batch by batch.

    Args:
        model: a :class:`~euclip.model.GeometricCLIP` (in eval mode).
        spec: the data.
        device: where the model is.
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        :class:`Embeddings` on the CPU, float32.

    Raises:
        ValueError: the data yielded no readable image.
    """
    batches, total = spec.source.eval_batches(spec, model.image_size)
    tokenizer = model.tokenizer()
    image_parts, image_norms, text_parts, text_norms, owners = [], [], [], [], []
    captions: list[str] = []
    infos: list[dict | None] = []
    skipped = 0
    for images, caps, info, bad in tqdm(batches, desc=desc, total=total, disable=not progress, leave=False):
        skipped += bad
        if images is None:
            continue
        f_image = model.towers.encode_image(images.to(device)).float()
        image_norms.append(f_image.norm(dim=-1).cpu())
        image_parts.append(model.to_manifold(f_image, "image").float().cpu())
        offset = len(infos)
        flat = [c for per_image in caps for c in per_image]
        if flat:  # a labelled folder has no captions
            f_text = model.towers.encode_text(tokenizer(flat).to(device)).float()
            text_norms.append(f_text.norm(dim=-1).cpu())
            text_parts.append(model.to_manifold(f_text, "text").float().cpu())
        owners += [offset + i for i, per_image in enumerate(caps) for _ in per_image]
        captions += flat
        infos += info
    if not image_parts:
        raise ValueError(f"no readable image-caption pairs in {spec.describe()} ({skipped} unreadable samples "
                         "skipped)")
    if skipped:
        log.warning("%s: %d unreadable image(s) skipped (the warnings above name the first ones)", spec.data, skipped)
    image_info = infos if all(i is not None for i in infos) else None
    levels = None
    if image_info is not None and spec.dataset_type == "synthetic":
        # Synthetic samples have one caption each, so caption i belongs to image i.
        levels = torch.tensor([image_info[j]["caption_level"] for j in owners], dtype=torch.long)
    dim = image_parts[0].shape[1]
    return Embeddings(image=torch.cat(image_parts), text=torch.cat(text_parts) if text_parts else torch.empty(0, dim),
                      text_to_image=torch.tensor(owners, dtype=torch.long), image_tower_norm=torch.cat(image_norms),
                      text_tower_norm=torch.cat(text_norms) if text_norms else torch.empty(0), captions=captions,
                      geometry=model.geometry,
                      logit=model.logit, curvature=curvature_of(model), image_info=image_info,
                      caption_levels=levels, skipped=skipped)


def norms(emb: Embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from the origin (hyperbolic: from the vertex) of ``emb``'s images ``(N_i,)`` and texts ``(N_t,)``."""
    return (geom.norm_from_origin(emb.image, emb.geometry, emb.curvature),
            geom.norm_from_origin(emb.text, emb.geometry, emb.curvature))
