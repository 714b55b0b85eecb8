"""Class names and prompt templates for zero-shot classification of image folders (ImageNet layout)."""

from __future__ import annotations

import string
from pathlib import Path


def read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exn:
        line = p.read_bytes()[:exn.start].count(b"\n") + 1
        raise ValueError(f"{what} file {p}, line {line}: not UTF-8 ({exn.reason} at byte {exn.start}); save it as "
                         "UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{what} file {p} is empty")
    return lines


def check_template(template: str, where: str = "") -> None:
    """Raise unless ``template`` has exactly one placeholder for the class name, ``{}`` or ``{c}`` (CLIP_benchmark's).

    Other fields (``{photo}``, a second ``{}``) would fail in ``str.format`` with an IndexError or KeyError when the
    prompts are built, after the images were embedded; literal braces are written ``{{`` and ``}}``.

    Args:
        template: the prompt template.
        where: prefix for the error, e.g. ``"templates.txt:3: "``.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exn:  # a lone { or }
        raise ValueError(f"{where}template {template!r} is not a format string ({exn}); write a literal brace as "
                         "{{ or }}") from None
    wrong = [f"{{{f}}}" for f in fields if f not in ("", "c")]
    if wrong or len(fields) != 1:
        found = f"it has {', '.join(wrong)}" if wrong else f"it has {len(fields)} placeholders"
        raise ValueError(f"{where}template {template!r} needs exactly one placeholder for the class name, {{}} or "
                         f"{{c}}; {found}")


def resolve_templates(spec: str | None) -> list[str]:
    """Prompt templates with ``{}``: from a file, ``openai`` (OpenCLIP's 80 ImageNet ones), or ``simple``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if spec in (None, "openai"):
        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]  # OpenCLIP stores them as lambdas
    if spec == "simple":
        return [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]
    templates = read_lines(spec, "templates")
    for i, t in enumerate(templates, start=1):
        check_template(t, f"{spec}:{i}: ")
    return templates
