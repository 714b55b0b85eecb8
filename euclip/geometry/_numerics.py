"""Numerical helpers shared by the geometry modules: functions whose values and gradients stay finite,
and the plumbing of the fused pairwise autograd functions (float32 backward under autocast)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable


def asin_saturating(ratio: torch.Tensor) -> torch.Tensor:
    """``asin(min(1, ratio))`` for ``ratio >= 0``: exactly π/2 from 1 on, with finite gradients everywhere.

    Clamping to ``1 − margin`` instead (as MERU does) would make the widest cone narrower than π/2 by
    ``sqrt(2·margin)``, 1e-3 rad in float32. Here the saturated entries take the constant π/2 through a
    ``where`` (zero gradient) and ``asin`` only sees values below 1, where its derivative is at most
    ``1/sqrt(1 − (1 − eps/2)²) ≈ 1/sqrt(eps)``: finite.
    """
    below = ratio < 1
    return torch.where(below, torch.asin(torch.where(below, ratio, torch.zeros_like(ratio))), math.pi / 2)


def safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` that returns 0 with a zero gradient at ``(0, 0)`` instead of NaN."""
    both_zero = (y == 0) & (x == 0)
    return torch.where(both_zero, torch.zeros_like(y), torch.atan2(y, torch.where(both_zero, torch.ones_like(x), x)))


def frobenius_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ a ∘ b`` over all entries, without a temporary when both are contiguous."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


def float32_backward(backward: Callable) -> Callable:
    """Run a custom autograd function's ``backward(ctx, *grads)`` outside autocast.

    ``loss.backward()`` called inside a bf16 autocast region would otherwise run the backward's matrix
    products in bf16, undoing the float32 forward (the geometry's promise under autocast).
    """

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        device_type = next(g.device.type for g in grads if isinstance(g, torch.Tensor))
        with torch.autocast(device_type=device_type, enabled=False):
            return backward(ctx, *grads)

    return wrapper


class _Gram(torch.autograd.Function):
    """``x @ y.T`` whose backward products stay in the inputs' precision under autocast."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x @ y.T

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return (grad @ y if ctx.needs_input_grad[0] else None), (grad.T @ x if ctx.needs_input_grad[1] else None)


def gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise dot products ``x @ y.T``, ``(B1, B2)``; unlike autograd's own, the backward ignores autocast."""
    return _Gram.apply(x, y)


def as_curvature(curvature: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The curvature magnitude ``c`` as a 0-d tensor of ``like``'s dtype and device (keeps its gradient).

    A Python number goes straight to ``like``'s dtype: through the default float32 first, ``c = 0.1``
    would carry a 1.5e-8 relative error into float64 computations.
    """
    if not isinstance(curvature, torch.Tensor):
        return torch.tensor(float(curvature), dtype=like.dtype, device=like.device)
    c = curvature.to(device=like.device)
    if c.dim() != 0:
        raise ValueError(f"curvature must be a scalar, got shape {tuple(c.shape)}")
    if not c.is_floating_point() or c.dtype != like.dtype:
        c = c.to(like.dtype)
    return c
