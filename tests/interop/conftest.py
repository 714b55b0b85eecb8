"""Tiny stand-ins for the released weights: an OpenCLIP ViT config, real images, a zero-shot folder.

The OpenCLIP config ``euclip-test-ViT`` (32 px, two layers per tower) is registered with OpenCLIP for the whole
session, as a user's own model config would be (``open_clip.add_model_config``); it is the only OpenCLIP config of
its shapes, so checkpoints of it can also be recognised by shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

TINY = "euclip-test-ViT"
TINY_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
CLASSES = ("circle", "square", "triangle")
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


@pytest.fixture(scope="session", autouse=True)
def tiny_openclip_config(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("openclip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / f"{TINY}.json")
    return TINY


def random_images(n: int, seed: int = 0) -> list[Image.Image]:
    """RGB images of assorted sizes and aspect ratios (so resizing and cropping are exercised)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 40), (57, 33), (32, 70), (64, 48)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in (sizes[i % len(sizes)] for i in range(n))]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A zero-shot folder: ``data/<class>/<i>.png`` (real PNG files), 2 images per class."""
    root = tmp_path_factory.mktemp("folder")
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i, image in enumerate(random_images(2, seed=c)):
            image.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def templates_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "templates.txt"
    path.write_text("\n".join(TEMPLATES) + "\n")
    return path


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values for every parameter: LayerNorm gains ``1 + N(0, 0.2²)``, biases too, so removing one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            gain = p.ndim == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if gain else 0.0))
    return module


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a − b| / max |b|`` in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def run_cli(argv: list[str]) -> int:
    from euclip.cli import main

    return main(argv)


@pytest.fixture(scope="session")
def ih():
    """The helpers above (test modules cannot import a conftest under ``--import-mode=importlib``)."""
    from types import SimpleNamespace

    return SimpleNamespace(TINY=TINY, CLASSES=CLASSES, TEMPLATES=TEMPLATES, random_images=random_images,
                           randomize_=randomize_, relative_error=relative_error, run_cli=run_cli)
