"""Zero-shot classification and retrieval on CLIP_benchmark's webdataset sets, with any geometry's scoring.

Library functions for ``euclip eval zeroshot`` / ``euclip eval retrieval`` (``--dataset-type clip_benchmark``
or a ``wds_*`` folder as ``--data``, once wired): :func:`benchmark_zeroshot` returns what
:func:`euclip.eval.folders.folder_zeroshot` returns; :func:`benchmark_embeddings` returns the
:class:`~euclip.eval.embed.Embeddings` that :func:`euclip.eval.retrieval.retrieval_from_embeddings` and the
geometry diagnostics take. The class-prototype rule is in :mod:`euclip.data.clip_benchmark`'s docstring.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from euclip.data.clip_benchmark import classification_batches, open_benchmark, retrieval_batches
from euclip.data.transforms import image_transform
from euclip.eval.embed import Embeddings, curvature_of
from euclip.eval.zeroshot import class_prototypes, evaluate_zeroshot

__all__ = ["benchmark_embeddings", "benchmark_zeroshot"]


@torch.no_grad()
def benchmark_zeroshot(model, root: str | Path, device: torch.device | str = "cpu", split: str = "test",
                       batch_size: int = 256, workers: int = 0, classnames: list[str] | None = None,
                       templates: list[str] | None = None, progress: bool = True) -> dict:
    """Zero-shot top-1/top-5 and per-class accuracy on a CLIP_benchmark classification set.

    Returns:
        :func:`~euclip.eval.zeroshot.evaluate_zeroshot`'s dict plus ``dataset``, ``task``, ``classnames``,
        ``num_templates`` and ``sources`` (where the names and templates came from).
    """
    bs = open_benchmark(root, split, classnames=classnames, templates=templates)
    prototypes = class_prototypes(model, bs.classnames, bs.templates, model.tokenizer(), device)
    loader = classification_batches(bs, image_transform(model.image_size, train=False), batch_size, workers)
    results = evaluate_zeroshot(model, loader, prototypes, bs.classnames, device, progress=progress)
    results.update(dataset=str(bs.root), task=bs.task, split=split, classnames=bs.classnames,
                   num_templates=len(bs.templates), sources=bs.sources)
    return results


@torch.no_grad()
def benchmark_embeddings(model, root: str | Path, device: torch.device | str = "cpu", split: str = "test",
                         batch_size: int = 128, workers: int = 0, progress: bool = True) -> Embeddings:
    """Manifold points of a CLIP_benchmark retrieval set's images and all their captions."""
    bs = open_benchmark(root, split)
    tokenizer = model.tokenizer()
    images, image_norms, texts, text_norms, owners, captions = [], [], [], [], [], []
    loader = retrieval_batches(bs, image_transform(model.image_size, train=False), batch_size, workers)
    for batch_images, batch_captions in tqdm(loader, desc="embed", disable=not progress, leave=False):
        f_image = model.towers.encode_image(batch_images.to(device)).float()
        image_norms.append(f_image.norm(dim=-1).cpu())
        images.append(model.to_manifold(f_image, "image").float().cpu())
        offset = sum(len(x) for x in images[:-1])
        flat = [c for per_image in batch_captions for c in per_image]
        f_text = model.towers.encode_text(tokenizer(flat).to(device)).float()
        text_norms.append(f_text.norm(dim=-1).cpu())
        texts.append(model.to_manifold(f_text, "text").float().cpu())
        owners += [offset + i for i, per_image in enumerate(batch_captions) for _ in per_image]
        captions += flat
    if not images:
        raise ValueError(f"{bs.root}: no samples in split {split!r}")
    return Embeddings(image=torch.cat(images), text=torch.cat(texts), text_to_image=torch.tensor(owners),
                      image_tower_norm=torch.cat(image_norms), text_tower_norm=torch.cat(text_norms),
                      captions=captions, geometry=model.geometry, logit=model.logit, curvature=curvature_of(model),
                      extra={"dataset": str(bs.root), "task": bs.task, "split": split})
