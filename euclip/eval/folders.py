"""Zero-shot classification on a folder-per-class image directory (ImageNet layout)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from euclip.eval.zeroshot import class_prototypes, evaluate_zeroshot


def read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    lines = [line.strip() for line in p.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{what} file {p} is empty")
    return lines


def resolve_classnames(spec: str | None, folder_classes: list[str]) -> list[str]:
    """Class names: a ``folder<TAB>name`` mapping file, a plain list in sorted-folder order (checked), ``imagenet``
    (OpenCLIP's), or the folder names; see :mod:`euclip.eval.classnames`."""
    from euclip.eval.classnames import resolve_classnames as resolve

    return resolve(spec, folder_classes)


def resolve_templates(spec: str | None) -> list[str]:
    """Prompt templates with ``{}``: from a file, ``openai`` (OpenCLIP's 80 ImageNet ones), or ``simple``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if spec in (None, "openai"):
        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]  # OpenCLIP stores them as lambdas
    if spec == "simple":
        return [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]
    templates = read_lines(spec, "templates")
    for i, t in enumerate(templates, start=1):
        if "{}" not in t:
            raise ValueError(f"{spec}:{i}: template {t!r} has no {{}} placeholder")
    return templates


def folder_zeroshot(model, data: str, classnames: str | None, templates: str | None, device: torch.device,
                    batch_size: int = 256, workers: int = 0, progress: bool = True) -> dict:
    """Zero-shot accuracy over ``data/<class>/<image>`` with the model's geometry."""
    from torchvision.datasets import ImageFolder

    from euclip.data.transforms import image_transform

    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data: no such folder: {data}")
    dataset = ImageFolder(data, transform=image_transform(model.image_size, train=False))
    names = resolve_classnames(classnames, dataset.classes)
    prototypes = class_prototypes(model, names, resolve_templates(templates), model.tokenizer(), device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    results = evaluate_zeroshot(model, loader, prototypes, names, device, progress=progress, total=len(loader))
    results.update(dataset=str(data), classes=dataset.classes)
    return results
