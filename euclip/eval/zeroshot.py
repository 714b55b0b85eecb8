"""Zero-shot classification with any geometry: class prototypes from prompt templates, scored by logits.

A class's prototype is the mean over templates of its mapped text embeddings; for the hyperbolic
geometry the mean is taken over the scaled tangent vectors ``α·f`` and then mapped by the
exponential map (MERU's convention), and for the elliptic geometry it is re-normalised onto the
sphere. An image's score for a class is the geometry's own logit (the one the model was trained
with) between the image and the prototype.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from euclip import geometry as geom


@torch.no_grad()
def class_prototypes(model, classnames: Sequence[str], templates: Sequence[str], tokenizer,
                     device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """``(C, D)`` prototypes on the manifold for ``classnames`` with prompt ``templates`` (``"a {}."``)."""
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    for t in templates:
        if "{}" not in t and "{c}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' placeholder for the class name")
    texts = [t.replace("{c}", "{}").format(c) for c in classnames for t in templates]
    features = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        features.append(model.tangent_features(model.towers.encode_text(tokens), "text").float())
    features = torch.cat(features).view(len(classnames), len(templates), -1)
    if model.geometry == "hyperbolic":
        return geom.project(features.mean(1), "hyperbolic", model.curvature)
    mapped = geom.project(features, model.geometry, model.curvature).mean(1)
    return geom.project(mapped, "elliptic") if model.geometry == "elliptic" else mapped


@torch.no_grad()
def zeroshot_scores(model, images: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` scores of images against class prototypes with the model's own logit."""
    return geom.pairwise_logits(model.encode_image(images).float(), prototypes, model.geometry, model.logit,
                                model.curvature)


@torch.no_grad()
def evaluate_zeroshot(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], prototypes: torch.Tensor,
                      classnames: Sequence[str], device: torch.device | str = "cpu", progress: bool = True,
                      total: int | None = None) -> dict:
    """Top-1/top-5 and per-class accuracy over ``(images, labels)`` batches.

    Returns:
        ``{"top1", "top5", "per_class": {name: acc}, "mean_per_class", "num_samples",
        "predictions": list[int], "labels": list[int]}``.
    """
    num_classes = len(classnames)
    correct1 = correct5 = n = 0
    hits = torch.zeros(num_classes)
    counts = torch.zeros(num_classes)
    predictions, labels_all = [], []
    k = min(5, num_classes)
    for images, labels in tqdm(batches, desc="zero-shot", total=total, disable=not progress, leave=False):
        scores = zeroshot_scores(model, images.to(device), prototypes)
        top = scores.topk(k, dim=1).indices.cpu()
        labels = labels.cpu()
        hit1 = top[:, 0] == labels
        correct1 += hit1.sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        n += len(labels)
        hits.index_add_(0, labels, hit1.float())
        counts.index_add_(0, labels, torch.ones(len(labels)))
        predictions += top[:, 0].tolist()
        labels_all += labels.tolist()
    if n == 0:
        raise ValueError("zero-shot evaluation got no samples")
    per_class = {c: (hits[i] / counts[i]).item() for i, c in enumerate(classnames) if counts[i] > 0}
    return {"top1": correct1 / n, "top5": correct5 / n, "per_class": per_class,
            "mean_per_class": sum(per_class.values()) / len(per_class), "num_samples": n,
            "predictions": predictions, "labels": labels_all}
