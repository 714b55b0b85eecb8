"""Class names and prompt templates for zero-shot classification of image folders (ImageNet layout)."""

from __future__ import annotations

from pathlib import Path


def read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    lines = [line.strip() for line in p.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{what} file {p} is empty")
    return lines


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
