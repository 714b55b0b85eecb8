"""Elliptic geometry: embeddings on the unit sphere S^{d-1} (CLIP's L2-normalised embeddings).

Pairwise functions take ``x`` ``(B1, D)`` and ``y`` ``(B2, D)`` on the sphere and return ``(B1, B2)``.
The geodesic distance is the arc length ``acos(x·y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from euclip.geometry._numerics import clamp_unit


def project(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise ``(..., D)`` tower outputs onto the unit sphere (a zero vector stays 0, finite gradient)."""
    return F.normalize(features, dim=-1, eps=torch.finfo(features.dtype).tiny ** 0.5)


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities ``x · y``, ``(B1, B2)`` (CLIP's logit)."""
    return x @ y.T


def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise arc length ``acos(x · y)`` in ``[0, π]``, ``(B1, B2)``.

    The cosine is clamped just inside ``[-1, 1]``: rounding can push it past ±1, and ``acos`` has an
    infinite derivative there.
    """
    return torch.acos(clamp_unit(x @ y.T))
