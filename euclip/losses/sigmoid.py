"""SigLIP's sigmoid loss for any embedding geometry, plus MERU's entailment loss.

Every image–text pair of the batch is an independent binary classification (Zhai et al. 2023, as OpenCLIP's
``SigLipLoss``): with logits ``z_ij = t · s(x_i, y_j) + b`` (``s`` the geometry's
:func:`~euclip.geometry.pairwise_logits`, ``t`` the logit scale, ``b`` a learnable bias) and labels
``y_ij = +1`` for positives and −1 otherwise,

    L = −(1/B) Σ_ij log σ(y_ij z_ij),

summed over the ``B × B`` matrix and divided by the batch (per image row). Positives are the diagonal plus,
with caption ids, every pair whose captions are identical. SigLIP initialises ``log t = log 10`` and
``b = −10`` (:data:`INIT_LOG_SCALE`, :data:`INIT_BIAS`): most pairs are negatives, and the bias starts the
loss near the prior.

Under ``torch.distributed`` each process computes its own image rows against the texts of every process.
The texts travel around the ring of processes by differentiable point-to-point exchange (OpenCLIP's
``bidir`` scheme by default: each step receives from both neighbours; or ``shift``: one direction), so no
process ever gathers the whole batch's features, and their caption ids travel with them.

Convention (what the loss means under W processes): each process's loss is the sum over its ``B`` rows
against all ``W·B`` texts, divided by its local ``B``, so the mean over processes, which is what the
trainer logs, is the loss one process computes over the global batch, and DistributedDataParallel's
averaging of gradients gives that global loss's gradients (the exchange's backward returns to every
process the gradient the others' losses put on its texts).
"""

from __future__ import annotations

import math

import torch

from euclip import geometry as geom
from euclip.losses.base import HeadScalars, Loss, LossOutput, register_loss
from euclip.losses.blocked import blocked_sigmoid_sum, rows_per_block, softplus_of_minus_yz
from euclip.losses.contrastive import sum_stats
from euclip.losses.exchange import exchange, ring_neighbours
from euclip.losses.gather import distributed_world

INIT_LOG_SCALE = math.log(10.0)
INIT_BIAS = -10.0
EXCHANGES: tuple[str, ...] = ("bidir", "shift")


def _sigmoid_sum(image: torch.Tensor, text: torch.Tensor, geometry: str, logit: str, scale: torch.Tensor,
                 bias: torch.Tensor, curvature: torch.Tensor, diagonal: int | None, image_ids: torch.Tensor | None,
                 text_ids: torch.Tensor | None, rows: int | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Σ −log σ(y ∘ z), Σ own-pair s, Σ s)`` over ``(R, C)`` image rows × text columns, whole or in blocks."""
    if rows is not None:
        return blocked_sigmoid_sum(image, text, geometry, logit, scale, bias, curvature, rows_per_block=rows,
                                   diagonal=diagonal, row_ids=image_ids, col_ids=text_ids)
    s = geom.pairwise_logits(image, text, geometry, logit, curvature)
    z = scale * s + bias
    positives = None if image_ids is None else image_ids[:, None] == text_ids[None, :]
    loss_sum = softplus_of_minus_yz(z, positives, diagonal)
    with torch.no_grad():
        own = s.diagonal(diagonal).sum() if diagonal is not None else s.new_zeros(())
        return loss_sum, own, s.sum()


def sigmoid_loss(image: torch.Tensor, text: torch.Tensor, geometry: str, logit: str,
                 logit_scale: torch.Tensor | float, logit_bias: torch.Tensor | float,
                 curvature: torch.Tensor | float = 1.0, *, entailment_weight: float = 0.0, min_radius: float = 0.1,
                 caption_ids: torch.Tensor | None = None, block_size: int | str | None = "auto",
                 exchange_scheme: str = "bidir") -> LossOutput:
    """SigLIP's sigmoid loss with any geometry's logits, plus the entailment loss.

    Args:
        image: ``(B, D)`` image embeddings on the manifold (:func:`euclip.geometry.project`).
        text: ``(B, D)`` text embeddings on the manifold; row ``i`` is the caption of image ``i``.
        geometry, logit: see :mod:`euclip.geometry`.
        logit_scale: ``t = exp(log t)`` (already exponentiated).
        logit_bias: ``b``, added to every scaled logit.
        curvature: ``c`` of the hyperbolic geometry (ignored by the others).
        entailment_weight, min_radius: MERU's entailment loss (text entails image), as in
            :func:`euclip.losses.contrastive_loss`; the mean over this process's rows.
        caption_ids: optional ``(B,)`` ids; equal ids mark identical captions, positives of each other.
        block_size: rows of each ``(rows, B)`` block of logits (:func:`euclip.losses.blocked.rows_per_block`):
            ``"auto"`` blocks only matrices larger than one block, ``None`` never.
        exchange_scheme: under ``torch.distributed``, ``"bidir"`` or ``"shift"`` (see the module docstring).
            Every process must have the same ``B``.

    Returns:
        :class:`LossOutput`: ``total = sigmoid + w · entailment`` (0-d float32, float64 for float64 inputs) and
        detached statistics: ``logit_pos``/``logit_neg`` (mean unscaled logit of the own pairs and of all other
        pairs of this process's rows).
    """
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(f"image and text embeddings must both be (B, D), got {tuple(image.shape)} and "
                         f"{tuple(text.shape)}")
    if exchange_scheme not in EXCHANGES:
        raise ValueError(f"unknown exchange scheme {exchange_scheme!r}; valid schemes: {', '.join(EXCHANGES)}")
    geom.check_geometry(geometry)
    geom.check_logit(logit)
    world = distributed_world()
    with torch.autocast(device_type=image.device.type, enabled=False):
        dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
        image, text = image.to(dtype), text.to(dtype)
        scale, bias, c = (torch.as_tensor(v, dtype=dtype, device=image.device)
                          for v in (logit_scale, logit_bias, curvature))
        # The entailment term first, as in the contrastive loss: its backward then runs last.
        if entailment_weight > 0:
            entailment = geom.entailment_penalty(text, image, geometry, min_radius, c).mean()
        else:
            entailment = torch.zeros((), dtype=dtype, device=image.device)
        batch = image.shape[0]
        rows = rows_per_block(batch, batch, block_size, image.device.type)

        def chunk(texts: torch.Tensor, ids: torch.Tensor | None, diagonal: int | None):
            return _sigmoid_sum(image, texts, geometry, logit, scale, bias, c, diagonal, caption_ids, ids, rows)

        loss_sum, own_sum, all_sum = chunk(text, caption_ids, 0)
        for texts, ids in _other_chunks(text, caption_ids, world, exchange_scheme):
            part, _, part_all = chunk(texts, ids, None)
            loss_sum, all_sum = loss_sum + part, all_sum + part_all
        sigmoid = loss_sum / batch
        total = sigmoid + entailment_weight * entailment
        stats = sum_stats(own_sum, all_sum, batch, batch * batch * world)
    return LossOutput(total, sigmoid, entailment, stats)


def _other_chunks(text: torch.Tensor, ids: torch.Tensor | None, world: int, scheme: str):
    """Yield ``(texts, ids)`` of every other process, received around the ring (nothing with one process).

    ``bidir``: each step sends what it holds to both neighbours and receives from both, so after
    ``(W − 1) // 2`` steps a process has seen the ranks within that distance on either side; an odd one out
    (even ``W``) comes in one last one-way step. ``shift``: ``W − 1`` one-way steps to the right.
    """
    if world == 1:
        return
    _, _, left, right = ring_neighbours()

    def step(routes, texts, text_ids):
        received = exchange(routes, *texts)
        received_ids = (None,) * len(texts) if ids is None else exchange(routes, *text_ids, with_grad=False)
        return received, received_ids

    to_right, ids_right = text, ids
    if scheme == "shift":
        for _ in range(world - 1):
            (to_right,), (ids_right,) = step(((right, left),), (to_right,), (ids_right,))
            yield to_right, ids_right
        return
    to_left, ids_left = text, ids
    steps, odd = divmod(world - 1, 2)
    for _ in range(steps):
        # What goes to the left is answered by what comes from the right, and the other way round.
        (from_right, from_left), (ids_from_right, ids_from_left) = step(
            ((left, right), (right, left)), (to_left, to_right), (ids_left, ids_right))
        yield from_right, ids_from_right
        yield from_left, ids_from_left
        to_left, to_right, ids_left, ids_right = from_right, from_left, ids_from_right, ids_from_left
    if odd:
        (from_left,), (ids_from_left,) = step(((right, left),), (to_right,), (ids_right,))
        yield from_left, ids_from_left


@register_loss
class SigmoidLoss(Loss):
    """SigLIP's sigmoid loss with the geometry's logits (:func:`sigmoid_loss`), configured once.

    Under ``torch.distributed`` it always computes this process's rows against every process's texts, which
    travel by neighbour exchange: ``local_loss`` and ``gather_with_grad`` do not apply to it.
    """

    name = "sigmoid"
    needs_logit_bias = True

    def __init__(self, geometry: str, logit: str, *, exchange_scheme: str = "bidir", **options):
        super().__init__(geometry, logit, **options)
        if exchange_scheme not in EXCHANGES:
            raise ValueError(f"unknown exchange scheme {exchange_scheme!r}; valid schemes: {', '.join(EXCHANGES)}")
        self.exchange_scheme = exchange_scheme

    def __call__(self, image: torch.Tensor, text: torch.Tensor, scalars: HeadScalars, *,
                 caption_ids: torch.Tensor | None = None, entailment_weight: float = 0.0,
                 min_radius: float = 0.1) -> LossOutput:
        if scalars.logit_bias is None:
            raise ValueError("the sigmoid loss needs a logit bias: a model built with one (euclip train --siglip)")
        return sigmoid_loss(image, text, self.geometry, self.logit, scalars.logit_scale, scalars.logit_bias,
                            scalars.curvature, entailment_weight=entailment_weight, min_radius=min_radius,
                            caption_ids=caption_ids if self.multi_positive else None, block_size=self.block_size,
                            exchange_scheme=self.exchange_scheme)
