"""Elliptic geometry: embeddings on the unit sphere S^{d-1} (CLIP's L2-normalised embeddings).

Pairwise functions take ``x`` ``(B1, D)`` and ``y`` ``(B2, D)`` on the sphere and return ``(B1, B2)``.
The geodesic distance is the arc length ``acos(x·y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from euclip.geometry._numerics import float32_backward, gram


def project(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise ``(..., D)`` tower outputs onto the unit sphere (a zero vector stays 0, finite gradient)."""
    return F.normalize(features, dim=-1, eps=torch.finfo(features.dtype).tiny ** 0.5)


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities ``x · y``, ``(B1, B2)`` (CLIP's logit)."""
    return gram(x, y)


class _SignedArcPower(torch.autograd.Function):
    """Pairwise ``sign · acos(x·y)^power`` (power 1 or 2), ``(B1, B2)``, through one matrix product.

    Keeps only its output for the backward pass (autograd through ``clamp → acos → square → negate`` keeps
    three ``(B1, B2)`` tensors); the derivative ``−1/sin θ`` is recovered from ``θ``.

    The cosine is clamped to ``[-1, 1]`` exactly, so that ``acos`` is 0 for coincident points (a margin
    below 1 would put them ``sqrt(2·margin)`` apart), and ``backward`` defines the derivative where
    ``sin θ`` is 0: 0 for the arc length at ``θ = 0`` (a subgradient of a cone-shaped function), the limit
    ``−2`` of ``−2θ/sin θ`` for the squared arc, and 0 at antipodes (an infinite slope) where ``sin θ``
    rounds to ``<= 0``.
    """

    @staticmethod
    def forward(ctx, x, y, power: int, sign: float):
        out = torch.mm(x, y.T).clamp_(-1, 1).acos_()
        if power == 2:
            out.square_()
        out.mul_(sign)
        ctx.power, ctx.sign = power, sign
        ctx.save_for_backward(x, y, out)
        return out

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad):
        x, y, out = ctx.saved_tensors
        sign = ctx.sign
        # grad · ∂out/∂cos θ = scale · factor · grad, with ∂θ/∂cos θ = −1/sin θ. sin θ is 0 at θ = 0 and
        # rounds to <= 0 at θ = π (antipodes, an infinite slope): there the factor is set as documented.
        if ctx.power == 1:  # out = sign·θ: ∂out/∂cos θ = −sign / sin θ = −1 / sin(out)
            sine = torch.sin(out)  # = sign · sin θ
            not_positive = sine <= 0 if sign > 0 else sine >= 0
            factor, scale = sine.reciprocal_().masked_fill_(not_positive, 0.0), -1.0
        else:  # out = sign·θ²: ∂out/∂cos θ = −2 sign θ / sin θ
            theta = (out * sign).sqrt_()
            sine = torch.sin(theta)
            factor = theta.div_(sine).nan_to_num_(1.0).masked_fill_(sine < 0, 0.0)  # θ / sin θ, 1 at θ = 0 (0/0)
            scale = -2 * sign
        w = factor.mul_(grad)
        grad_x = scale * (w @ y) if ctx.needs_input_grad[0] else None
        grad_y = scale * (w.T @ x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y, None, None


def _signed_arc_power(x: torch.Tensor, y: torch.Tensor, power: int, sign: float) -> torch.Tensor:
    return _SignedArcPower.apply(x, y, power, sign)


def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise arc length ``acos(x · y)`` in ``[0, π]``, ``(B1, B2)``.

    The cosine is clamped to ``[-1, 1]``: rounding can push it past ±1. The derivative (infinite at ±1)
    is defined in :class:`_SignedArcPower`.
    """
    return _signed_arc_power(x, y, 1, 1.0)


def logits(x: torch.Tensor, y: torch.Tensor, logit: str) -> torch.Tensor:
    """Pairwise logits ``(B1, B2)``: cosine ``x·y`` (``"inner"``, CLIP), ``−θ`` or ``−θ²`` (``θ`` the arc)."""
    if logit == "inner":
        return inner(x, y)
    return _signed_arc_power(x, y, 1 if logit == "distance" else 2, -1.0)
