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
from torch.autograd.function import once_differentiable

from euclip.geometry._numerics import asin_saturating, float32_backward, gram, safe_atan2


def project(features: torch.Tensor) -> torch.Tensor:
    """Map tower outputs ``(..., D)`` into the space: ``f / sqrt(D)``, so initial norms are about 1."""
    return features / math.sqrt(features.shape[-1])


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise dot products ``x · y``, ``(B1, B2)``."""
    return gram(x, y)


class _SignedDistancePower(torch.autograd.Function):
    """Pairwise ``sign · ||x − y||^power`` (power 1 or 2), ``(B1, B2)``, through one matrix product.

    Autograd through the elementwise chain ``||x||² + ||y||² − 2 x·y → clamp → sqrt → negate`` would keep
    several ``(B1, B2)`` tensors for the backward pass; this keeps only the output (power 1) or none
    (power 2: the derivative is constant) and derives the rest in ``backward``. The squared norms come in
    as inputs, so autograd differentiates them.
    """

    @staticmethod
    def forward(ctx, x, y, sq_x, sq_y, power: int, sign: float):
        out = torch.addmm(sq_x[:, None], x, y.T, alpha=-2.0).add_(sq_y)
        # Rounding can make the expansion slightly negative for near-identical points; the clamp keeps the
        # square root real (its gradient is passed through: there the true one is ~0 anyway).
        out.clamp_min_(0)
        if power == 1:
            out.sqrt_()
        out.mul_(sign)
        ctx.power, ctx.sign = power, sign
        ctx.save_for_backward(x, y, out if power == 1 else None)
        return out

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad):
        x, y, out = ctx.saved_tensors
        # grad · ∂out/∂s = scale · v with s = ||x − y||² = ||x||² + ||y||² − 2 x·y.
        if ctx.power == 2:
            v, scale = grad, ctx.sign
        else:
            # ∂(sign·sqrt(s))/∂s = sign / (2 d) = 1 / (2 out); 0 (a subgradient) at d = 0.
            v, scale = (grad / out).nan_to_num_(0.0, 0.0, 0.0), 0.5
        grad_x = -2 * scale * (v @ y) if ctx.needs_input_grad[0] else None
        grad_y = -2 * scale * (v.T @ x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y, scale * v.sum(1), scale * v.sum(0), None, None


def _signed_distance_power(x: torch.Tensor, y: torch.Tensor, power: int, sign: float) -> torch.Tensor:
    return _SignedDistancePower.apply(x, y, (x * x).sum(-1), (y * y).sum(-1), power, sign)


def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise ``||x - y||``, ``(B1, B2)``; the gradient at ``x = y`` is 0 (a subgradient) instead of NaN."""
    return _signed_distance_power(x, y, 1, 1.0)


def logits(x: torch.Tensor, y: torch.Tensor, logit: str) -> torch.Tensor:
    """Pairwise logits ``(B1, B2)``: ``x·y`` (``"inner"``), ``−||x − y||`` or ``−||x − y||²``, each one fused op."""
    if logit == "inner":
        return inner(x, y)
    return _signed_distance_power(x, y, 1 if logit == "distance" else 2, -1.0)


def half_aperture(x: torch.Tensor, min_radius: float) -> torch.Tensor:
    """Half-aperture of the cone at each row of ``x`` ``(B, D)``: ``asin(min(1, K / ||x||))``, ``(B,)``."""
    norm = x.norm(dim=-1)
    # K / max(||x||, K/2) keeps the ratio finite at x = 0; anything >= 1 gives π/2 anyway.
    ratio = min_radius / torch.maximum(norm, torch.full_like(norm, min_radius / 2))
    return asin_saturating(ratio)


class _AxialPerpendicular(torch.autograd.Function):
    """Row-wise ``(a, q, ||x||, ||y||²)`` for :func:`_axial_and_perpendicular`, with a hand-written backward.

    Autograd through the ``(B, D)`` chain (direction, difference, projection, norms) records some forty
    ``(B, D)`` operations, forward and backward: at B = 4096, D = 512 about as much time as the whole
    elementwise ``(B, B)`` work of the hyperbolic contrastive loss. The derivatives are short, with
    ``x̂ = x / ||x||`` and ``perp = (y − x) − a x̂ = y − (y·x̂) x̂``:

        ∂||x||/∂x = x̂,   ∂a/∂x = perp / ||x|| − x̂,   ∂a/∂y = x̂,
        ∂q/∂x = −(y·x̂) perp / (||x|| q),   ∂q/∂y = perp / q,

    so the backward pass is two ``(B, D)`` combinations of ``x``, ``perp`` and ``y``. Where ``q = 0`` (a child
    on the axis) its gradient is 0, a subgradient, as for a norm.
    """

    @staticmethod
    def forward(ctx, x, y, with_y_norm: bool):
        norm = x.norm(dim=-1)
        # Below sqrt(tiny) the squares in the norm underflow (||x|| reads 0 or too small for a nonzero x), so
        # such an x is treated as the origin: its "direction" shrinks to ~0 instead of blowing up (NaN at ∞·0).
        safe_norm = norm.clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
        perp = y - x
        # (A plain product and sum: torch's cascaded sum leaves a third of the rounding of a BLAS dot, and a's
        # rounding is what remains of perp along x̂, which the hyperbolic metric magnifies far out.)
        axial = (perp * x).sum(-1).div_(safe_norm)
        perp.addcmul_(x, (-axial / safe_norm)[:, None])
        perpendicular = perp.norm(dim=-1)
        y_sq_norm = torch.einsum("bd,bd->b", y, y) if with_y_norm else torch.zeros_like(norm)
        ctx.with_y_norm = with_y_norm
        ctx.save_for_backward(x, y, perp, norm, safe_norm, axial, perpendicular)
        return axial, perpendicular, norm, y_sq_norm

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad_axial, grad_perpendicular, grad_norm, grad_y_sq_norm):
        x, y, perp, norm, safe_norm, axial, perpendicular = ctx.saved_tensors
        along = axial + norm * norm / safe_norm  # y·x̂
        gq_over_q = torch.where(perpendicular > 0, grad_perpendicular / perpendicular, torch.zeros_like(axial))
        x_coef = (grad_norm - grad_axial) / safe_norm
        perp_coef = (grad_axial - gq_over_q * along) / safe_norm
        grad_x = torch.mul(x, x_coef[:, None]).addcmul_(perp, perp_coef[:, None])
        grad_y = torch.mul(x, (grad_axial / safe_norm)[:, None]).addcmul_(perp, gq_over_q[:, None])
        if ctx.with_y_norm:
            grad_y.addcmul_(y, (2 * grad_y_sq_norm)[:, None])
        return grad_x, grad_y, None


def _axial_and_perpendicular(x: torch.Tensor, y: torch.Tensor, with_y_norm: bool = False
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``y − x`` along ``x``'s direction ``x̂``: ``(a, q, ||x||, ||y||²)``, each ``(B,)``.

    ``a = (y − x)·x̂`` is the axial component and ``q = ||(y − x) − a x̂||`` the perpendicular one.
    Working from the difference (not from ``y``, nor ``q = sqrt(||y||² − (y·x̂)²)``) keeps both
    accurate for children near the apex or the axis, and exactly 0 for ``y = x``. ``||y||²`` only
    ``with_y_norm`` (else zeros).
    """
    return _AxialPerpendicular.apply(x, y, with_y_norm)


def exterior_angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angle at ``x`` between the outward ray (origin → x, extended) and the direction to ``y``, ``(B,)``.

    Equals ``acos((y - x)·x / (||y - x|| ||x||))``, computed as ``atan2`` of the components of
    ``y - x`` perpendicular to and along ``x``, which is accurate at every angle. For ``y = x``
    the angle is undefined; it is reported as 0 (the apex is inside its own cone).
    """
    axial, perpendicular, _, _ = _axial_and_perpendicular(x, y)
    return safe_atan2(perpendicular, axial)
