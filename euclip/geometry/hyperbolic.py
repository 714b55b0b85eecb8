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

whose first term is the radial part (from the norms alone) and whose second is non-negative and
vanishes only for parallel vectors, so that ``u`` never comes from the cancellation of two numbers near 1;
then ``d = acosh(1 + u) / sqrt(c)``. The pairwise functions evaluate both in one fused autograd function
(:class:`_LorentzLogits`), with no per-pair transcendental function but one ``log``.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from euclip.geometry._numerics import asin_saturating, float32_backward, frobenius_inner, safe_atan2
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


class _LorentzLogits(torch.autograd.Function):
    """Pairwise ``⟨x, y⟩_L`` (``power`` 0) or ``sign · d(x, y)^power`` (1 or 2), ``(B1, B2)``, fused.

    Inputs: the points, their norms ``nx``, ``ny``, half radii ``hx = ρx / 2``, ``hy = ρy / 2`` and ``c``
    (autograd differentiates the per-point vectors, including ``ρ``'s dependence on ``c``; ``backward``
    returns the explicit partial derivatives). With ``h = u / 2``, in place on the matrix product's buffer:

        h = (c/2)(||x|| ||y|| − x·y) + sinh²(hx − hy),   2 sinh(hx − hy) = P − 1/P,   P = e^{hx} e^{−hy},

    so the radial term costs no per-pair transcendental function: ``P`` is an outer product of per-point
    exponentials, and ``P − 1/P`` carries an absolute rounding error of a few ``eps`` (``sinh`` would carry a
    relative one), the order of the angular term's, which comes from a float32 matrix product. Then
    ``r = √c d = acosh(1 + 2h) = log(1 + 2h + 2s)`` with ``s = sqrt(h (1 + h)) = sinh(r) / 2``: again an
    absolute error of a few ``eps`` where ``asinh`` would give a relative one (five times the cost on CPU).

    Autograd through that chain would keep about eight ``(B1, B2)`` tensors for the backward pass; this
    keeps its output (which the loss keeps anyway) and, for distances, one more: ``s`` (or ``r / s`` for the
    squared distance, ``r = √c d``).
    """

    @staticmethod
    def forward(ctx, x, y, nx, ny, hx, hy, curvature, power: int, sign: float):
        half_c = curvature / 2
        # (c/2) scales the operand with fewer rows: a blocked loss pairs a block of rows with every column.
        h = torch.mm(x * half_c, y.T) if x.shape[0] <= y.shape[0] else torch.mm(x, (y * half_c).T)
        h.addr_(nx * half_c, ny, beta=-1)  # (c/2)(nx ny − x·y) >= 0 ...
        h.clamp_min_(0)  # ... up to rounding for (near-)parallel vectors.
        p, q = torch.exp(hx), torch.exp(-hy)
        radial = torch.outer(p, q).addr_(p.reciprocal(), q.reciprocal(), alpha=-1)  # 2 sinh(hx − hy)
        h.addcmul_(radial, radial, value=0.25)
        del radial
        factor = None  # what backward needs besides the output: s (distance) or r / s (squared distance)
        if power == 0:
            out = h.mul_(-2 / curvature).sub_(1 / curvature)  # −(1 + u) / c
        else:
            factor = torch.addcmul(h, h, h).sqrt_()  # s
            out = h.add_(factor).mul_(2).add_(1).log_()  # r = √c d
            if power == 2:
                torch.div(out, factor, out=factor).nan_to_num_(2.0)  # r / s, whose limit at h = 0 (0/0) is 2
                out.square_()
            out.mul_(sign / curvature ** (power / 2))
        ctx.power, ctx.sign = power, sign
        ctx.save_for_backward(x, y, nx, ny, hx, hy, curvature, out, factor)
        return out

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad):
        x, y, nx, ny, hx, hy, c, out, factor = ctx.saved_tensors
        power, sign = ctx.power, ctx.sign
        # ∂out/∂h = scale · v (v a (B1, B2) matrix) and ∂out/∂c at fixed h = explicit · out.
        if power == 0:  # out = −(1 + 2h) / c
            v, scale, explicit = grad, -2 / c, -1 / c
        elif power == 1:  # out = sign · r / √c, r = acosh(1 + 2h), ∂r/∂h = 1 / s
            v = (grad / factor).nan_to_num_(0.0, 0.0, 0.0)  # 0 (a subgradient) where s = 0, i.e. d = 0
            scale, explicit = sign / torch.sqrt(c), -1 / (2 * c)
        else:  # out = sign · r² / c: ∂out/∂h = (2 sign / c) · r / s
            v = grad * factor
            scale, explicit = 2 * sign / c, -1 / c
        # h = (c/2)(nx ny − x·y) + sinh²(hx − hy), with ∂h/∂hx = sinh(2 (hx − hy)) = (P² − P⁻²) / 2 = −∂h/∂hy.
        # P² − P⁻² is an outer product minus another, so its sums against v are matrix-vector products: append
        # them (and the norms') to the matrix products as columns, and no (B1, B2) temporary is needed. The
        # rounding is that of P² − P⁻² computed entrywise from the same exponentials.
        p2, q2 = torch.exp(2 * hx), torch.exp(-2 * hy)
        half_c_scale = c / 2 * scale
        v_y = v @ torch.cat([y, ny[:, None], q2[:, None], q2.reciprocal()[:, None]], dim=1)
        # y's gradients come out of the product already scaled (x's side of it is the smaller one in a blocked
        # loss, where y holds every column).
        v_x = v.T @ torch.cat([x * -half_c_scale, (nx * half_c_scale)[:, None], p2[:, None],
                               p2.reciprocal()[:, None]], dim=1)
        grad_x, grad_nx = -half_c_scale * v_y[:, :-3], half_c_scale * v_y[:, -3]
        grad_y, grad_ny = v_x[:, :-3], v_x[:, -3]
        grad_hx = (scale / 2) * (p2 * v_y[:, -2] - v_y[:, -1] / p2)
        grad_hy = (-scale / 2) * (q2 * v_x[:, -2] - v_x[:, -1] / q2)
        grad_c = None
        if ctx.needs_input_grad[6]:
            # Σ ∂out/∂h ∘ (nx ny − x·y) / 2 from the products above, plus Σ grad ∘ out · explicit.
            angular = (nx * v_y[:, -3]).sum() - (x * v_y[:, :-3]).sum()
            grad_c = scale / 2 * angular + explicit * frobenius_inner(grad, out)
        return grad_x, grad_y, grad_nx, grad_ny, grad_hx, grad_hy, grad_c, None, None


def point_terms(x: torch.Tensor, curvature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-point terms of the fused pairwise logits: norms ``||x||`` and half radii ``ρ / 2``, ``(B,)`` each.

    A caller that pairs the same ``y`` with many blocks of ``x`` (the blocked losses) computes ``y``'s once and
    passes them to :func:`logits_with_terms`, instead of recomputing them, and their gradients, per block.
    """
    norm = x.norm(dim=-1)
    return norm, torch.asinh(torch.sqrt(curvature) * norm) / 2


def _power_sign(logit: str) -> tuple[int, float]:
    return {"inner": (0, 1.0), "distance": (1, -1.0), "squared": (2, -1.0)}[logit]


def logits_with_terms(x: torch.Tensor, y: torch.Tensor, logit: str, curvature: torch.Tensor,
                      x_terms: tuple[torch.Tensor, torch.Tensor], y_terms: tuple[torch.Tensor, torch.Tensor]
                      ) -> torch.Tensor:
    """:func:`logits` from the points and their :func:`point_terms` (which carry their own gradients)."""
    power, sign = _power_sign(logit)
    return _LorentzLogits.apply(x, y, x_terms[0], y_terms[0], x_terms[1], y_terms[1], curvature, power, sign)


def _lorentz_logits(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor, power: int,
                    sign: float) -> torch.Tensor:
    (nx, hx), (ny, hy) = point_terms(x, curvature), point_terms(y, curvature)
    return _LorentzLogits.apply(x, y, nx, ny, hx, hy, curvature, power, sign)


def lorentz_inner(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Pairwise Lorentzian inner product ``⟨x, y⟩_L = x·y − x_time y_time`` (always ``<= −1/c``), ``(B1, B2)``."""
    return _lorentz_logits(x, y, curvature, 0, 1.0)


def distance(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """Pairwise geodesic distance ``acosh(−c⟨x, y⟩_L) / sqrt(c)``, ``(B1, B2)``; gradient 0 (not NaN) at ``x = y``."""
    return _lorentz_logits(x, y, curvature, 1, 1.0)


def logits(x: torch.Tensor, y: torch.Tensor, logit: str, curvature: torch.Tensor) -> torch.Tensor:
    """Pairwise logits ``(B1, B2)``: ``⟨x, y⟩_L`` (``"inner"``), ``−d`` (``"distance"``, MERU) or ``−d²``."""
    if logit == "inner":
        return lorentz_inner(x, y, curvature)
    return _lorentz_logits(x, y, curvature, 1 if logit == "distance" else 2, -1.0)


def half_aperture(x: torch.Tensor, min_radius: float, curvature: torch.Tensor) -> torch.Tensor:
    """MERU's half-aperture ``asin(min(1, 2K / (sqrt(c) ||x||)))`` of the cone at each row of ``x``, ``(B,)``."""
    scaled_norm = torch.sqrt(curvature) * x.norm(dim=-1)
    ratio = 2 * min_radius / torch.maximum(scaled_norm, torch.full_like(scaled_norm, min_radius))
    return asin_saturating(ratio)


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
    p_minus_n, q, n, y_sq_norm = _axial_and_perpendicular(x, y, with_y_norm=True)
    p = p_minus_n + n
    x_time, y_time = torch.sqrt(1 / curvature + n * n), torch.sqrt(1 / curvature + y_sq_norm)
    ahead = p > 0
    denominator = torch.where(ahead, x_time * p + y_time * n, torch.ones_like(p))  # no 0/0 in the unused branch
    rationalised = (p_minus_n * (p + n) / curvature - q.square() * n.square()) / denominator
    axial = torch.where(ahead, rationalised, x_time * p - y_time * n)
    return safe_atan2(q, torch.sqrt(curvature) * axial)
