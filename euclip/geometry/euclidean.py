"""Euclidean geometry: embeddings live in R^d, scaled by a fixed 1/sqrt(d) (the paper's EuCLIP).

Pairwise functions take ``x`` of shape ``(B1, D)`` and ``y`` of shape ``(B2, D)`` and return
``(B1, B2)``; they go through one matrix product and never build a ``(B1, B2, D)`` tensor.
Row-wise functions (cones) take two ``(B, D)`` tensors and return ``(B,)``.

Entailment cones are Ganea et al. (2018)'s Euclidean cones, as in the paper's code: the cone at
``x`` has its apex at ``x``, its axis along the ray from the origin through ``x``, and half-aperture
``asin(min(1, K / ||x||))``; points near the origin (``||x|| <= K``) get the widest cone, π/2.
"""

from __future__ import annotations

import math

import torch

from euclip.geometry._numerics import clamp_unit, safe_atan2, safe_sqrt


def project(features: torch.Tensor) -> torch.Tensor:
    """Map tower outputs ``(..., D)`` into the space: ``f / sqrt(D)``, so initial norms are about 1."""
    return features / math.sqrt(features.shape[-1])


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise dot products ``x · y``, ``(B1, B2)``."""
    return x @ y.T


def squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise ``||x - y||^2 = ||x||^2 + ||y||^2 - 2 x·y``, ``(B1, B2)``, clamped at 0.

    Rounding can make the expansion slightly negative for near-identical points; the clamp keeps the
    square root (in :func:`distance`) real.
    """
    sq_norms = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :]
    return torch.addmm(sq_norms, x, y.T, alpha=-2.0).clamp_min(0)


def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise ``||x - y||``, ``(B1, B2)``; the gradient at ``x = y`` is 0 (a subgradient) instead of NaN."""
    return safe_sqrt(squared_distance(x, y))


def half_aperture(x: torch.Tensor, min_radius: float) -> torch.Tensor:
    """Half-aperture of the cone at each row of ``x`` ``(B, D)``: ``asin(min(1, K / ||x||))``, ``(B,)``."""
    norm = x.norm(dim=-1)
    # K / max(||x||, K/2) keeps the ratio finite at x = 0; anything >= 1 is clamped just below 1 anyway.
    ratio = min_radius / torch.maximum(norm, torch.full_like(norm, min_radius / 2))
    return torch.asin(clamp_unit(ratio))


def _axial_and_perpendicular(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``y − x`` along ``x``'s direction ``x̂``: ``(a, q, ||x||)``, each ``(B,)``.

    ``a = (y − x)·x̂`` is the axial component and ``q = ||(y − x) − a x̂||`` the perpendicular one.
    Working from the difference (not from ``y``, nor ``q = sqrt(||y||² − (y·x̂)²)``) keeps both
    accurate for children near the apex or the axis, and exactly 0 for ``y = x``.
    """
    norm = x.norm(dim=-1, keepdim=True)
    direction = x / norm.clamp_min(torch.finfo(x.dtype).tiny)
    diff = y - x
    axial = (diff * direction).sum(-1)
    perpendicular = (diff - axial[:, None] * direction).norm(dim=-1)
    return axial, perpendicular, norm.squeeze(-1)


def exterior_angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angle at ``x`` between the outward ray (origin → x, extended) and the direction to ``y``, ``(B,)``.

    Equals ``acos((y - x)·x / (||y - x|| ||x||))``, computed as ``atan2`` of the components of
    ``y - x`` perpendicular to and along ``x``, which is accurate at every angle. For ``y = x``
    the angle is undefined; it is reported as 0 (the apex is inside its own cone).
    """
    axial, perpendicular, _ = _axial_and_perpendicular(x, y)
    return safe_atan2(perpendicular, axial)
