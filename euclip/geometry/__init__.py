"""Embedding geometries of contrastive language-image pre-training, as pure functions.

Three geometries — ``"euclidean"`` (R^d, EuCLIP), ``"elliptic"`` (the unit sphere, CLIP) and
``"hyperbolic"`` (the Lorentz hyperboloid of curvature ``−c``, MERU) — and three logits —
``"inner"`` (inner product), ``"distance"`` (negative geodesic distance) and ``"squared"`` (negative
squared distance). Every function here takes the geometry as a string and dispatches to
:mod:`euclip.geometry.euclidean`, :mod:`~euclip.geometry.elliptic` or
:mod:`~euclip.geometry.hyperbolic`, so losses, zero-shot classification and retrieval are written
once for all geometries.

Conventions:
    * Pairwise functions take ``x`` ``(B1, D)`` and ``y`` ``(B2, D)`` and return ``(B1, B2)``; they
      use one matrix product and never build a ``(B1, B2, D)`` tensor (memory is O(B1·B2)).
    * Row-wise functions (cones) take two ``(B, D)`` tensors and return ``(B,)``.
    * Hyperbolic points are space components only (MERU's convention); the time component is implied.
    * ``curvature`` is ``c > 0`` (the curvature is ``−c``): a float or a 0-d tensor that may carry
      gradient. Euclidean and elliptic functions ignore it.
    * Float32 by default; float64 inputs give float64 results; half-precision inputs (and calls
      inside a bf16/fp16 autocast region) are computed in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from euclip.geometry import elliptic, euclidean, hyperbolic
from euclip.geometry._numerics import as_curvature

GEOMETRIES: tuple[str, ...] = ("euclidean", "elliptic", "hyperbolic")
LOGITS: tuple[str, ...] = ("inner", "distance", "squared")
CONE_GEOMETRIES: tuple[str, ...] = ("euclidean", "hyperbolic")

# The paper's code names one (geometry, logit) per string; its users will type these.
ALIASES: dict[str, tuple[str, str]] = {
    "clip": ("elliptic", "inner"),
    "elliptic": ("elliptic", "distance"),
    "elliptic-squared": ("elliptic", "squared"),
    "elliptic-inner": ("elliptic", "inner"),
    "euclidean": ("euclidean", "distance"),
    "euclidean-squared": ("euclidean", "squared"),
    "euclidean-inner": ("euclidean", "inner"),
    "hyperbolic": ("hyperbolic", "distance"),
    "hyperbolic-squared": ("hyperbolic", "squared"),
    "hyperbolic-inner": ("hyperbolic", "inner"),
}

__all__ = [
    "ALIASES", "CONE_GEOMETRIES", "GEOMETRIES", "LOGITS", "check_geometry", "check_logit", "distance",
    "entailment_penalty", "exterior_angle", "half_aperture", "norm_from_origin", "pairwise_logits", "project",
    "resolve",
]


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; valid geometries: {', '.join(GEOMETRIES)}")
    return geometry


def check_logit(logit: str) -> str:
    if logit not in LOGITS:
        raise ValueError(f"unknown logit {logit!r}; valid logits: {', '.join(LOGITS)}")
    return logit


def resolve(name_or_geometry: str, logit: str | None = None) -> tuple[str, str]:
    """Resolve a geometry name or a paper-code alias to ``(geometry, logit)``.

    Args:
        name_or_geometry: a geometry (``"euclidean"``, ``"elliptic"``, ``"hyperbolic"``) or an alias
            from :data:`ALIASES` (``"clip"``, ``"euclidean-squared"``, ...).
        logit: overrides the alias's logit when the name is a plain geometry; an alias that fixes a
            different logit is an error.

    Returns:
        ``(geometry, logit)``, both validated.
    """
    name = name_or_geometry.strip().lower()
    if name not in ALIASES:
        valid = ", ".join(list(GEOMETRIES) + [a for a in ALIASES if a not in GEOMETRIES])
        raise ValueError(f"unknown geometry {name_or_geometry!r}; valid names: {valid}")
    geometry, alias_logit = ALIASES[name]
    if logit is None:
        return geometry, alias_logit
    check_logit(logit)
    if name not in GEOMETRIES and logit != alias_logit:
        raise ValueError(f"{name_or_geometry!r} already means logit {alias_logit!r}; it conflicts with {logit!r}")
    return geometry, logit


def _float32_region(fn: Callable) -> Callable:
    """Run ``fn`` outside autocast with half-precision tensor arguments upcast to float32.

    Squared-distance logits in bf16 carry about 50× the error of cosine logits, so the geometry
    always computes in float32 (or float64 when given float64).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def up(t):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16):
                return t.float()
            return t

        args = tuple(up(a) for a in args)
        kwargs = {k: up(v) for k, v in kwargs.items()}
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


@_float32_region
def project(features: torch.Tensor, geometry: str, curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Map tower outputs ``(..., D)`` onto the geometry's manifold, ``(..., D)``.

    * euclidean: ``f / sqrt(D)``;
    * elliptic: ``f / ||f||``;
    * hyperbolic: the exponential map at the origin, returning space components. The learnable
      per-tower scale ``α`` of MERU is applied by the model *before* this call (``project(α f)``).
    """
    check_geometry(geometry)
    if geometry == "euclidean":
        return euclidean.project(features)
    if geometry == "elliptic":
        return elliptic.project(features)
    return hyperbolic.exp_map0(features, as_curvature(curvature, features))


@_float32_region
def distance(x: torch.Tensor, y: torch.Tensor, geometry: str, curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Pairwise geodesic distances ``(B1, B2)`` between points already on the manifold."""
    check_geometry(geometry)
    if geometry == "euclidean":
        return euclidean.distance(x, y)
    if geometry == "elliptic":
        return elliptic.distance(x, y)
    return hyperbolic.distance(x, y, as_curvature(curvature, x))


@_float32_region
def pairwise_logits(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str,
                    curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Pairwise similarities ``(B1, B2)`` (higher = more similar), before the logit scale.

    ``inner``: the geometry's inner product (dot, cosine, or Lorentzian ``⟨x, y⟩_L``);
    ``distance``: ``−d(x, y)``; ``squared``: ``−d(x, y)²``.
    """
    check_geometry(geometry)
    check_logit(logit)
    if geometry == "euclidean":
        return euclidean.logits(x, y, logit)
    if geometry == "elliptic":
        return elliptic.logits(x, y, logit)
    return hyperbolic.logits(x, y, logit, as_curvature(curvature, x))


def _check_cone_geometry(geometry: str) -> None:
    check_geometry(geometry)
    if geometry not in CONE_GEOMETRIES:
        raise ValueError(f"entailment cones are defined for {' and '.join(CONE_GEOMETRIES)} geometry, not {geometry!r}")


@_float32_region
def half_aperture(x: torch.Tensor, geometry: str, min_radius: float,
                  curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Half-aperture in ``(0, π/2]`` of the entailment cone at each row of ``x`` ``(B, D)``, ``(B,)``.

    ``min_radius`` is ``K``: points closer to the origin than about ``K`` get the widest cone.
    """
    _check_cone_geometry(geometry)
    if min_radius <= 0:
        raise ValueError(f"min_radius must be positive, got {min_radius}")
    if geometry == "euclidean":
        return euclidean.half_aperture(x, min_radius)
    return hyperbolic.half_aperture(x, min_radius, as_curvature(curvature, x))


@_float32_region
def exterior_angle(x: torch.Tensor, y: torch.Tensor, geometry: str,
                   curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Angle in ``[0, π]`` at ``x`` between the cone's axis and the geodesic to ``y``, row-wise, ``(B,)``."""
    _check_cone_geometry(geometry)
    if geometry == "euclidean":
        return euclidean.exterior_angle(x, y)
    return hyperbolic.exterior_angle(x, y, as_curvature(curvature, x))


def entailment_penalty(parent: torch.Tensor, child: torch.Tensor, geometry: str, min_radius: float,
                       curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``max(0, exterior_angle(parent, child) − half_aperture(parent))`` per row, ``(B,)``.

    Zero when ``child`` lies inside the cone at ``parent`` (for euclip: text entails image).
    """
    angle = exterior_angle(parent, child, geometry, curvature)
    return torch.relu(angle - half_aperture(parent, geometry, min_radius, curvature))


@_float32_region
def norm_from_origin(x: torch.Tensor, geometry: str, curvature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Distance of each point ``(..., D)`` from the origin (hyperbolic: from the vertex), ``(...)``.

    Elliptic points all have norm 1; their pre-normalisation norms are not recoverable here.
    """
    check_geometry(geometry)
    if geometry == "hyperbolic":
        return hyperbolic.radius(x, as_curvature(curvature, x))
    return x.norm(dim=-1)
