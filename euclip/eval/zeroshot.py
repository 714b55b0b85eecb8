"""Zero-shot classification with any geometry, in one place: class prototypes, scoring, accuracy, the evaluation.

A class's prototype is the mean over prompt templates of its text embeddings. For the hyperbolic geometry the
mean is taken over the scaled tangent vectors ``α·f`` and then mapped by the exponential map (MERU's
convention); for the others over the manifold points, re-normalised onto the sphere for the elliptic geometry
(CLIP's). An image's score for a class is the geometry's own logit (the one the model was trained with) between
the image and the prototype.

The registered evaluation ``zeroshot`` classifies

* synthetic images by shape (15 classes, the primary task), colour (12; a colour's prototype averages its
  prompts with every shape, "the red triangle", ..., as training captions name colours only with a shape) and
  colour + shape (the 180 combinations, "compositional"); on the test split also the held-out colour–shape
  combinations (the ``heldout`` split: shapes, and combinations among all 180);
* labelled images (an image folder, ``--dataset-type folder``; a CLIP_benchmark classification set) by their
  classes, with class names from :mod:`euclip.eval.classnames` (folders) or the set, and templates from
  :mod:`euclip.eval.folders` or the set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from euclip import geometry as geom
from euclip.eval.embed import Embeddings
from euclip.eval.registry import EvalContext, Metric, register_evaluation

log = logging.getLogger(__name__)

__all__ = ["accuracy", "class_prototypes", "predict_topk", "zeroshot", "zeroshot_tasks"]


@torch.no_grad()
def class_prototypes(model, classnames: Sequence[str], templates: Sequence[str], tokenizer=None,
                     device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """``(C, D)`` prototypes on the manifold for ``classnames`` with prompt ``templates`` (``"a {}."``)."""
    from euclip.eval.folders import check_template

    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    for t in templates:
        check_template(t)
    tokenizer = tokenizer or model.tokenizer()
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
def predict_topk(images: torch.Tensor, prototypes: torch.Tensor, geometry: str, logit: str,
                 curvature: float | torch.Tensor = 1.0, k: int = 5, chunk: int = 4096) -> torch.Tensor:
    """``(N, min(k, C))`` class indices of the best-scoring prototypes per image (best first), in chunks."""
    k = min(k, prototypes.shape[0])
    prototypes = prototypes.to(images.device, torch.float32)
    parts = [geom.pairwise_logits(images[s:s + chunk].float(), prototypes, geometry, logit, curvature).topk(k, 1)
             .indices for s in range(0, images.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.empty(0, k, dtype=torch.long)


def accuracy(top: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> dict:
    """Top-1/top-5 and per-class accuracy of ``(N, k)`` ranked predictions against ``(N,)`` labels."""
    if labels.numel() == 0:
        raise ValueError("zero-shot evaluation got no samples")
    hit1 = (top[:, 0] == labels).double()
    per_class = {}
    for i, name in enumerate(classnames):
        mask = labels == i
        if mask.any():
            per_class[name] = hit1[mask].mean().item()
    return {"top1": hit1.mean().item(), "top5": (top == labels[:, None]).any(1).double().mean().item(),
            "per_class": per_class, "mean_per_class": sum(per_class.values()) / len(per_class),
            "num_samples": int(labels.numel()), "num_classes": len(classnames)}


def _task(ctx: EvalContext, emb: Embeddings, classnames: list[str], labels: list[int], templates: list[str],
          prompts: list[str] | None = None) -> dict:
    """One classification: predictions (top-5) and labels, as tensors, with the class names."""
    model = ctx.model
    prototypes = class_prototypes(model, prompts or classnames, templates, device=ctx.device)
    top = predict_topk(emb.image, prototypes, model.geometry, model.logit, model.curvature)
    return {"classes": classnames, "top": top.cpu(), "labels": torch.tensor(labels, dtype=torch.long)}


def _synthetic_tasks(ctx: EvalContext) -> dict[str, dict]:
    from euclip.data.synthetic import COLORS, SHAPES, TEMPLATES

    templates = list(TEMPLATES)
    combos = [f"{c} {s}" for c in COLORS for s in SHAPES]
    tasks = {}
    splits = [("", ctx.spec)] + ([("heldout_", ctx.with_split("heldout"))] if ctx.spec.split == "test" else [])
    for prefix, spec in splits:
        emb = ctx.embeddings(spec)
        info = emb.image_info
        shapes = [SHAPES.index(i["shape"]) for i in info]
        tasks[prefix + "shape"] = _task(ctx, emb, list(SHAPES), shapes, templates)
        if not prefix:
            # Colours are named in training only with a shape ("a red triangle"): a colour's prototype averages the
            # prompts of that colour with every shape, so that every prompt is a caption the model has seen.
            with_shapes = [t.replace("{}", "{} " + shape) for shape in SHAPES for t in templates]
            tasks["color"] = _task(ctx, emb, list(COLORS), [COLORS.index(i["color"]) for i in info], with_shapes)
        composition = [COLORS.index(i["color"]) * len(SHAPES) + s for i, s in zip(info, shapes)]
        tasks[prefix + "composition"] = _task(ctx, emb, combos, composition, templates)
    return tasks


def _labelled_tasks(ctx: EvalContext) -> dict[str, dict]:
    """Images with class labels (an image folder, a CLIP_benchmark classification set): one task, their classes."""
    from euclip.eval.folders import check_template, read_lines, resolve_templates

    source, settings = ctx.spec.source, ctx.settings
    # Templates first: a bad one is reported before the images are embedded.
    templates = (resolve_templates(settings.templates) if settings.templates
                 else source.default_templates(ctx.spec) or resolve_templates("openai"))
    for t in templates:
        check_template(t, f"{settings.templates or ctx.spec.data}: ")
    emb = ctx.embeddings()
    classes = source.class_names(ctx.spec)
    if source.named_by_folders:
        names = folder_classnames(ctx, classes)
    else:
        names = read_lines(settings.classnames, "class-names") if settings.classnames else classes
        if len(names) != len(classes):
            raise ValueError(f"{len(names)} class names for {len(classes)} classes ({settings.classnames})")
    task = _task(ctx, emb, classes, [i["label"] for i in emb.image_info], templates, prompts=names)
    task["classnames"] = names
    return {"classes": task}


def folder_classnames(ctx: EvalContext, folders: list[str]) -> list[str]:
    """The prompt names of a folder's classes: ``--classnames``, else WordNet lemmas for a WordNet hierarchy of
    wnid folders, else the folder names."""
    from euclip.eval.classnames import resolve_classnames

    from euclip.eval.wordnet import are_wnids

    if ctx.settings.classnames is None and (ctx.settings.tree or "wordnet") == "wordnet" and are_wnids(folders):
        from euclip.eval.wordnet import WordNetUnavailableError, wnid_to_name

        try:
            return [wnid_to_name(w) for w in folders]
        except WordNetUnavailableError as exn:
            log.warning("wnid folders are prompted by their ids: %s", exn)
    return resolve_classnames(ctx.settings.classnames, folders)


def zeroshot_tasks(ctx: EvalContext) -> dict[str, dict]:
    """Every zero-shot classification of the context's data (computed once per context, shared with the
    hierarchy evaluation): ``{task: {"classes", "top": (N, k), "labels": (N,)}}``."""
    synthetic = "attributes" in ctx.spec.source.provides
    return ctx.cached("zeroshot_tasks", lambda: _synthetic_tasks(ctx) if synthetic else _labelled_tasks(ctx))


def _top(key: str, label: str) -> Metric:
    return Metric(f"{key}_top1", label, ("tasks", key, "top1"), "pct")


@register_evaluation(
    "zeroshot", title="Zero-shot classification", requires=("labels",), settings=("classnames", "templates"),
    summary="zero-shot classification: top-1/top-5 and per-class accuracy",
    description="Zero-shot classification with the geometry's own logit: class prototypes are the mean "
                "template embedding of each class name (hyperbolic: in the tangent space; elliptic: re-normalised), "
                "each image gets the best-scoring class. Synthetic data: shapes (the primary task), colours and the "
                "180 colour-shape combinations, and on the test split also the held-out combinations. An image "
                "folder (one sub-folder per class): its classes, named by --classnames.",
    metrics=(Metric("top1", "top-1 (shapes on synthetic data)", ("top1",), "pct"),
             Metric("top5", "top-5", ("top5",), "pct"),
             _top("color", "colour top-1"), _top("composition", "colour + shape top-1 (180 classes)"),
             _top("heldout_shape", "shape top-1, held-out combinations"),
             _top("heldout_composition", "colour + shape top-1, held-out combinations")),
    examples=("euclip eval zeroshot runs/meru",
              "euclip eval zeroshot runs/meru --data imagenet/val --classnames imagenet --templates openai"))
def zeroshot(ctx: EvalContext) -> dict:
    tasks = zeroshot_tasks(ctx)
    results = {name: accuracy(t["top"], t["labels"], t["classes"]) for name, t in tasks.items()}
    primary = "shape" if "shape" in results else "classes"
    # Images that could not be read are skipped, as in training; the count says how many (warnings name some).
    out = {**results[primary], "tasks": results, "primary_task": primary, "skipped_images": ctx.embeddings().skipped}
    if primary == "classes":
        out.update(classes=tasks["classes"]["classes"], classnames=tasks["classes"]["classnames"],
                   templates=ctx.settings.templates or ("the data's" if ctx.spec.source.default_templates(ctx.spec)
                                                        else "openai"))
    else:
        out.update(classes="synthetic shapes", templates="synthetic")
    return out
