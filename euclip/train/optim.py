"""AdamW with explicit no-decay groups, and a cosine learning-rate schedule with linear warmup."""

from __future__ import annotations

import math

import torch

from euclip.model import GeometricCLIP
from euclip.train.config import TrainConfig


def build_optimizer(model: GeometricCLIP, cfg: TrainConfig) -> torch.optim.AdamW:
    """Fused AdamW; no weight decay for the names in ``model.no_weight_decay()`` (gains, biases, head scalars).

    Fused (on CPUs too): one kernel per device and dtype, and it can skip a step on the device
    (:func:`step_if_finite`), so a non-finite step costs no host synchronisation.
    """
    no_decay = model.no_weight_decay()
    decay_params, other_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (other_params if name in no_decay else decay_params).append(p)
    groups = [{"params": decay_params, "weight_decay": cfg.wd}, {"params": other_params, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """``optimizer.step()``, which leaves weights and moments untouched where ``finite`` (a 0-d bool tensor) is False.

    Decided on the device, without reading ``finite``: the fused AdamW kernel takes a ``found_inf`` flag, the
    mechanism ``torch.amp.GradScaler`` uses for optimizers that support it.
    """
    optimizer.grad_scale = None
    optimizer.found_inf = (~finite).float()
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(cfg.warmup, max(total_steps - 1, 0))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, warmup, total_steps))
