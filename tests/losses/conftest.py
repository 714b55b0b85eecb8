"""Float64 references for the loss tests, written from FORMULAS.md (broadcast (B1, B2, D), explicit time component)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from euclip import geometry as geom


def ref_logits(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str,
               c: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The geometry's similarity ``(B1, B2)`` from the textbook formulas (differentiable, also in ``c``)."""
    dot = (x[:, None, :] * y[None, :, :]).sum(-1)
    if geometry == "hyperbolic":
        time_x, time_y = torch.sqrt(1 / c + (x * x).sum(-1)), torch.sqrt(1 / c + (y * y).sum(-1))
        lorentz = dot - time_x[:, None] * time_y[None, :]
        if logit == "inner":
            return lorentz
        d = torch.acosh((-c * lorentz).clamp_min(1)) / c**0.5
    elif logit == "inner":
        return dot
    elif geometry == "euclidean":
        d = (x[:, None, :] - y[None, :, :]).norm(dim=-1)
    else:
        d = torch.acos(dot.clamp(-1, 1))
    return -d if logit == "distance" else -d * d


def embeddings(geometry: str, n: int, seed: int, c: float = 1.0, dim: int = 32,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched image/text points on the manifold: captions correlate (weakly) with their images."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    text = image + 1.5 * torch.randn(n, dim, dtype=torch.float64, generator=generator)
    scale = {"euclidean": 1.0, "elliptic": 1.0, "hyperbolic": 1.5 / math.sqrt(dim)}[geometry]
    return (geom.project((scale * image).to(dtype), geometry, c), geom.project((scale * text).to(dtype), geometry, c))


def spread_scale(image: torch.Tensor, text: torch.Tensor, geometry: str, logit: str, c: float = 1.0) -> float:
    """A logit scale that spreads the logits by about 3 (a loss of order 1, where relative errors mean something)."""
    return 3.0 / geom.pairwise_logits(image, text, geometry, logit, c).std().item()


def grad_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Close relative to the gradient's own scale: entries near 0 carry the rounding of the larger ones."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """The helpers above (test modules cannot import a conftest under ``--import-mode=importlib``)."""
    return SimpleNamespace(logits=ref_logits, embeddings=embeddings, spread_scale=spread_scale, grad_close=grad_close)
