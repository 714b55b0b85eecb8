"""What every image–text loss shares: its output, the head's scalars it reads, and the registry of losses.

A loss is a configured object (:class:`Loss`): built once from the run's settings (geometry, logit,
how features are gathered across processes, whether identical captions are shared positives), then
called every step with the features and the model head's current scalars. A new loss is a subclass
with a ``name``, decorated with :func:`register_loss`; ``euclip train --loss NAME`` then finds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from euclip import geometry as geom
from euclip.losses.blocked import rows_per_block


@dataclass
class LossOutput:
    """The total loss and its parts, plus health statistics for logging.

    Attributes:
        total: ``pairwise + w · entailment``, the 0-d tensor to differentiate.
        contrastive: the image–text matching term (InfoNCE, or the sigmoid loss).
        entailment: the mean entailment-cone penalty (0 when the weight is 0).
        stats: detached 0-d tensors on the features' device (positive/negative logit means, per-direction
            losses). They stay on the device: the trainer reads them once per logging step, so a step
            never waits for the device to finish.
    """

    total: torch.Tensor
    contrastive: torch.Tensor
    entailment: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class HeadScalars:
    """The model head's learnable scalars a loss reads (:meth:`euclip.model.GeometricCLIP.head_scalars`).

    Attributes:
        logit_scale: ``t = exp(log t)``, the multiplier of the logits.
        curvature: ``c`` of the hyperbolic geometry (1.0, unused, for the others).
        logit_bias: the sigmoid loss's learnable bias ``b`` (``None`` for models without one).
    """

    logit_scale: torch.Tensor | float
    curvature: torch.Tensor | float = 1.0
    logit_bias: torch.Tensor | float | None = None

    def detached(self) -> "HeadScalars":
        """The same values without gradient (accumulation differentiates them in one micro-batch only)."""
        def detach(x):
            return x.detach() if isinstance(x, torch.Tensor) else x

        return HeadScalars(detach(self.logit_scale), detach(self.curvature), detach(self.logit_bias))


class Loss:
    """An image–text loss for one (geometry, logit), configured once and called every step.

    Args:
        geometry, logit: see :mod:`euclip.geometry`.
        local_loss: under ``torch.distributed``, each process computes its own rows against all columns.
        gather_with_grad: differentiable all-gather of the features (exact gradients with ``local_loss``).
        multi_positive: identical captions (equal caption ids) are shared positives instead of negatives.
        block_size: rows of the logit matrix computed at once (:func:`euclip.losses.blocked.rows_per_block`):
            ``"auto"`` blocks only matrices larger than one block (bounded memory at large batches), ``None``
            never blocks, an int sets the rows per block.
    """

    name: ClassVar[str]
    needs_logit_bias: ClassVar[bool] = False

    def __init__(self, geometry: str, logit: str, *, local_loss: bool = False, gather_with_grad: bool = False,
                 multi_positive: bool = True, block_size: int | str | None = "auto"):
        self.geometry = geom.check_geometry(geometry)
        self.logit = geom.check_logit(logit)
        self.local_loss, self.gather_with_grad, self.multi_positive = local_loss, gather_with_grad, multi_positive
        rows_per_block(1, 1, block_size)  # validates it
        self.block_size = block_size

    def __call__(self, image: torch.Tensor, text: torch.Tensor, scalars: HeadScalars, *,
                 caption_ids: torch.Tensor | None = None, entailment_weight: float = 0.0,
                 min_radius: float = 0.1) -> LossOutput:
        """The loss of ``(B, D)`` image and text manifold points, row ``i`` a pair, plus the entailment term."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.geometry}/{self.logit}, local_loss={self.local_loss}, "
                f"gather_with_grad={self.gather_with_grad}, multi_positive={self.multi_positive})")


LOSSES: dict[str, type[Loss]] = {}


def register_loss(cls: type[Loss]) -> type[Loss]:
    """Class decorator: make ``cls`` available as ``build_loss(cls.name, ...)`` and ``euclip train --loss``."""
    if cls.name in LOSSES:
        raise ValueError(f"a loss named {cls.name!r} is already registered ({LOSSES[cls.name].__name__})")
    LOSSES[cls.name] = cls
    return cls


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return name


def build_loss(name: str, geometry: str, logit: str, **options) -> Loss:
    """The registered loss ``name`` configured for ``geometry``/``logit`` (options: see :class:`Loss`)."""
    return LOSSES[check_loss(name)](geometry, logit, **options)
