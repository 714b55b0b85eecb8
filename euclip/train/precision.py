"""Numeric precision modes of training (``--precision``), in one place."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS: tuple[str, ...] = ("fp32", "amp_bf16", "amp", "pure_bf16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return name


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager:
    """Mixed precision for the towers; the geometry and the loss turn autocast off and compute in float32."""
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def parameter_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights (and the image inputs): bfloat16 for ``pure_bf16``, else float32."""
    return torch.bfloat16 if precision == "pure_bf16" else torch.float32


def needs_loss_scaling(precision: str) -> bool:
    """float16 autocast needs loss scaling, or small gradients flush to zero; bfloat16 has float32's range."""
    return precision == "amp"
