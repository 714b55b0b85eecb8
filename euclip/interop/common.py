"""Helpers shared by the converters: building the GeometricCLIP and loading a converted state dict into it."""

from __future__ import annotations

import torch

from euclip.interop.detect import first
from euclip.model import GeometricCLIP, ModelConfig

HEAD_KEYS: tuple[str, ...] = ("log_logit_scale", "log_curvature", "log_alpha_image", "log_alpha_text")


def scalar(t: torch.Tensor) -> torch.Tensor:
    """A 0-d float tensor from a stored scalar (older OpenCLIP files keep ``logit_scale`` as ``(1,)``)."""
    if t.numel() != 1:
        raise ValueError(f"expected a scalar, got a tensor of shape {tuple(t.shape)}")
    return t.detach().reshape(()).float().clone()


def build_and_load(config: ModelConfig, state_dict: dict[str, torch.Tensor], what: str, hint: str) -> GeometricCLIP:
    """``GeometricCLIP(config)`` with ``state_dict`` loaded strictly; a mismatch is a ValueError naming keys.

    Args:
        config: the model's config.
        state_dict: euclip's key names (``towers.*`` and the head's scalars).
        what: the source, for messages (``"paper checkpoint x.pt"``).
        hint: what to try when it does not fit (the flags).
    """
    model = GeometricCLIP(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def bare(keys):
            return [k.removeprefix("towers.") for k in keys]

        raise ValueError(f"{what} does not fit the model {config.model!r} ({config.towers} towers): "
                         f"missing keys: {first(bare(missing))}; unexpected keys: {first(bare(unexpected))}; "
                         f"shape mismatches (file vs model): {first(shapes, 3)}. {hint}")
    converted = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(converted, strict=True)
    return model.eval()
