"""Hyperbolic geometry: the Lorentz model (hyperboloid) of curvature ``-c``, ``c > 0`` (MERU).

Convention (MERU's): functions take and return the *space* components ``x ∈ R^D`` of points on the
upper sheet of the hyperboloid ``{(x, x_time) : ||x||² − x_time² = −1/c, x_time > 0}``; the time
component is implied, ``x_time = sqrt(1/c + ||x||²)``. The origin (hyperboloid vertex) is ``x = 0``.

Pairwise functions take ``x`` ``(B1, D)`` and ``y`` ``(B2, D)`` and return ``(B1, B2)`` through a
single matrix product. Row-wise functions (cones) take two ``(B, D)`` tensors and return ``(B,)``.

Numerics. The textbook distance ``acosh(−c⟨x, y⟩_L) / sqrt(c)`` loses everything below float32's
epsilon in ``−c⟨x, y⟩_L − 1``, which is the whole signal for nearby points near the origin (where
training starts). This module instead uses the exact identity

    u := −c⟨x, y⟩_L − 1 = 2 sinh²((ρx − ρy) / 2) + c (||x|| ||y|| − x·y),   ρ = asinh(sqrt(c) ||x||),

whose first term is the radial part (exact from the norms) and whose second is non-negative and
vanishes only for parallel vectors; then ``d = 2 asinh(sqrt(u / 2)) / sqrt(c)`` (= ``acosh(1 + u)``).
"""

from __future__ import annotations

import math

import torch

from euclip.geometry._numerics import clamp_unit, safe_atan2, safe_sqrt
from euclip.geometry.euclidean import _axial_and_perpendicular

# MERU caps sqrt(c)·||v|| so that sinh stays finite in float32 (sinh(asinh(2^15)) = 2^15).
MAX_EXPMAP_RADIUS = math.asinh(2.0**15)


def time_component(x: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """``x_time = sqrt(1/c + ||x||²)`` for space components ``x`` ``(..., D)``, returns ``(...)``."""
    return torch.sqrt(1 / curvature + (x * x).sum(-1))


def _sinhc_of_squared(r2: torch.Tensor) -> torch.Tensor:
    """``sinh(r) / r`` as a function of ``r² >= 0``: a Taylor branch near 0 avoids 0/0 and its NaN gradient."""
    small = r2 < 1e-4
    r2_large = torch.where(small, torch.ones_like(r2), r2)
    r = torch.sqrt(r2_large)
    return torch.where(small, 1 + r2 / 6 + r2 * r2 / 120, torch.sinh(r) / r)


def exp_map0(v: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Exponential map at the origin: tangent vectors ``v`` ``(..., D)`` to space components ``(..., D)``.

    ``x = sinh(sqrt(c)||v||) / (sqrt(c)||v||) · v``. Finite with finite gradients at ``v = 0``; like
    MERU, the argument of ``sinh`` is capped at ``asinh(2^15)`` (the direction is kept).
    """
    r2 = curvature * (v * v).sum(-1, keepdim=True)
    capped = r2 > MAX_EXPMAP_RADIUS**2
    # Beyond the cap, x = sinh(R_max) / r · v: same direction, norm sinh(R_max)/sqrt(c).
    r_big = torch.sqrt(torch.where(capped, r2, torch.ones_like(r2)))
    scale = torch.where(capped, math.sinh(MAX_EXPMAP_RADIUS) / r_big,
                        _sinhc_of_squared(torch.where(capped, torch.zeros_like(r2), r2)))
    return scale * v


def log_map0(x: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin (inverse of :func:`exp_map0` below the cap), ``(..., D)``."""
    rho2 = curvature * (x * x).sum(-1, keepdim=True)
    # asinh(s)/s with s = sqrt(c)||x||, Taylor branch near 0.
    small = rho2 < 1e-4
    s = torch.sqrt(torch.where(small, torch.ones_like(rho2), rho2))
    scale = torch.where(small, 1 - rho2 / 6 + 3 * rho2 * rho2 / 40, torch.asinh(s) / s)
    return scale * x


def radius(x: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Geodesic distance from the origin, ``asinh(sqrt(c)||x||) / sqrt(c)``, ``(...)``."""
    sqrt_c = torch.sqrt(curvature)
    return torch.asinh(sqrt_c * x.norm(dim=-1)) / sqrt_c


def _u(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Pairwise ``u = −c⟨x, y⟩_L − 1 >= 0`` ``(B1, B2)`` by the stable identity in the module docstring."""
    sqrt_c = torch.sqrt(curvature)
    nx, ny = x.norm(dim=-1), y.norm(dim=-1)
    rho_x, rho_y = torch.asinh(sqrt_c * nx), torch.asinh(sqrt_c * ny)
    radial = 2 * torch.sinh((rho_x[:, None] - rho_y[None, :]) / 2).square()
    angular = torch.addmm(nx[:, None] * ny[None, :], x, y.T, alpha=-1.0).clamp_min(0)
    return radial + curvature * angular


def lorentz_inner(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Pairwise Lorentzian inner product ``⟨x, y⟩_L = x·y − x_time y_time`` (always ``<= −1/c``), ``(B1, B2)``."""
    return -(1 + _u(x, y, curvature)) / curvature


def distance(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Pairwise geodesic distance ``acosh(−c⟨x, y⟩_L) / sqrt(c)``, ``(B1, B2)``; gradient 0 (not NaN) at ``x = y``."""
    return 2 * torch.asinh(safe_sqrt(_u(x, y, curvature) / 2)) / torch.sqrt(curvature)


def half_aperture(x: torch.Tensor, min_radius: float, curvature: torch.Tensor) -> torch.Tensor:
    """MERU's half-aperture ``asin(min(1, 2K / (sqrt(c) ||x||)))`` of the cone at each row of ``x``, ``(B,)``."""
    scaled_norm = torch.sqrt(curvature) * x.norm(dim=-1)
    ratio = 2 * min_radius / torch.maximum(scaled_norm, torch.full_like(scaled_norm, min_radius))
    return torch.asin(clamp_unit(ratio))


def exterior_angle(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Exterior angle at ``x`` of the hyperbolic triangle origin–x–y, for row-wise pairs, ``(B,)``.

    MERU writes it ``acos((y_time + x_time·l) / (||x|| sqrt(l² − 1)))`` with ``l = c⟨x, y⟩_L``. In
    the plane through the origin, ``x`` and ``y``, the tangent at ``x`` toward ``y`` has a component
    ``q = ||y − (y·x̂) x̂||`` perpendicular to the outward axis and ``sqrt(c)(x_time p − y_time ||x||)``
    along it (``p = y·x̂``), so the angle is their ``atan2``: accurate at every angle, unlike ``acos``.
    For ``y`` ahead of ``x`` (``p > 0``) the axial term is rationalised to avoid cancellation:
    ``x_time p − y_time n = (p²/c − n²/c − q² n²) / (x_time p + y_time n)`` with ``n = ||x||``,
    where ``p² − n² = (p − n)(p + n)`` and ``p − n = (y − x)·x̂`` is computed from the difference.
    For ``y = x`` the angle is reported as 0 (the apex is inside its own cone).
    """
    p_minus_n, q, n = _axial_and_perpendicular(x, y)
    p = p_minus_n + n
    x_time, y_time = time_component(x, curvature), time_component(y, curvature)
    ahead = p > 0
    denominator = torch.where(ahead, x_time * p + y_time * n, torch.ones_like(p))  # no 0/0 in the unused branch
    rationalised = (p_minus_n * (p + n) / curvature - q.square() * n.square()) / denominator
    axial = torch.where(ahead, rationalised, x_time * p - y_time * n)
    return safe_atan2(q, torch.sqrt(curvature) * axial)
