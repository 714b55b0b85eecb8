"""Numerical helpers shared by the geometry modules: clamps whose gradients stay finite."""

from __future__ import annotations

import torch


def unit_margin(dtype: torch.dtype) -> float:
    """How far inside [-1, 1] to clamp before ``acos``/``asin``: their derivatives are infinite at ±1.

    A clamp that reaches ±1 exactly would multiply that infinity by the clamp's zero gradient (NaN).
    """
    return 4 * torch.finfo(dtype).eps


def clamp_unit(x: torch.Tensor) -> torch.Tensor:
    m = unit_margin(x.dtype)
    return x.clamp(-1 + m, 1 - m)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, tiny))``: finite value and gradient at 0 (where the true derivative is infinite)."""
    return torch.sqrt(x.clamp_min(torch.finfo(x.dtype).tiny))


def safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` that returns 0 with a zero gradient at ``(0, 0)`` instead of NaN."""
    both_zero = (y == 0) & (x == 0)
    return torch.where(both_zero, torch.zeros_like(y), torch.atan2(y, torch.where(both_zero, torch.ones_like(x), x)))


def as_curvature(curvature: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The curvature magnitude ``c`` as a 0-d tensor of ``like``'s dtype and device (keeps its gradient)."""
    c = torch.as_tensor(curvature, device=like.device)
    if c.dim() != 0:
        raise ValueError(f"curvature must be a scalar, got shape {tuple(c.shape)}")
    if not c.is_floating_point() or c.dtype != like.dtype:
        c = c.to(like.dtype)
    return c
