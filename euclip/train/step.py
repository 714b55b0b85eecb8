"""One optimizer step: forward and backward over its micro-batches, then the update, with no host synchronisation.

Everything a step decides (is the loss finite? skip the update?) is decided on the device; the values it
produces stay there (:class:`StepResult`) until a logging step reads them.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from euclip.data.batch import Batch
from euclip.losses import HeadScalars, LossOutput
from euclip.train.distributed import DistInfo, all_gather_rows
from euclip.train.optim import step_if_finite
from euclip.train.precision import autocast_context
from euclip.train.setup import Trainer


@dataclass
class StepResult:
    """What a step leaves for logging, as device tensors (0-d unless said otherwise)."""

    loss: torch.Tensor  # total loss of the global batch (averaged over processes)
    contrastive: torch.Tensor
    entailment: torch.Tensor
    grad_norm: torch.Tensor  # before clipping
    finite: torch.Tensor  # bool: the update was applied
    stats: dict[str, torch.Tensor]  # the loss's health statistics (this process's)
    image: torch.Tensor  # (B, D) the step's image embeddings, detached
    text: torch.Tensor  # (B, D) the step's text embeddings, detached


def take(batch: Batch, n: int) -> Batch:
    """The first ``n`` samples of ``batch``."""
    if n == len(batch):
        return batch
    return Batch(batch.images[:n], batch.tokens[:n], batch.caption_ids[:n], batch.captions[:n], batch.skipped)


def agree_on_batches(micro: list[Batch], preempt: bool, dist_info: DistInfo) -> tuple[list[Batch], dict]:
    """Make the processes agree on micro-batch sizes, skipped-sample counts and preemption, in one all-gather.

    Unreadable samples shrink a process's micro-batch; the feature all-gather needs equal sizes, so every process
    keeps the smallest size (the samples cut off are counted as ``dropped``). Counts are summed over processes, so
    the counters are global and identical everywhere. The exchange runs over CPU tensors (a gloo group next to
    NCCL), so it never waits for the accelerator.
    """
    skipped = sum(b.skipped for b in micro)
    if not dist_info.distributed:
        return micro, {"skipped": skipped, "dropped": 0, "preempt": preempt}
    mine = torch.tensor([len(b) for b in micro] + [skipped, int(preempt)], dtype=torch.long)
    rows = all_gather_rows(mine, host=True)
    a = len(micro)
    smallest = rows[:, :a].min(dim=0).values
    agreed = {"skipped": int(rows[:, a].sum()), "dropped": int((rows[:, :a] - smallest).sum()),
              "preempt": bool(rows[:, a + 1].any())}
    return [take(b, n) for b, n in zip(micro, smallest.tolist())], agreed


def _features(trainer: Trainer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch.images.to(next(trainer.model.parameters()).dtype)
    size = trainer.model.image_size
    if images.shape[-1] != size or images.shape[-2] != size:
        # Synthetic images rendered small (synthetic_render_size): upsampling on the device is far cheaper than
        # rendering, or moving, full-size images.
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return trainer.train_model(images, batch.tokens)


def forward_backward(trainer: Trainer, micro: list[Batch], entailment_weight: float,
                     min_radius: float) -> tuple[LossOutput, torch.Tensor, torch.Tensor]:
    """Forward and backward over the micro-batches of one optimizer step; returns the loss and the embeddings.

    With ``accum_freq > 1`` the loss is that of the whole accumulated batch (OpenCLIP's scheme): the features of
    every micro-batch are first computed without gradient, then each micro-batch is recomputed with gradient and
    its loss taken against all the cached features, so the negatives of the full batch are used and the summed
    gradients equal those of one big batch. The head's scalars (logit scale, curvature, bias) also enter the loss
    directly, not only through a micro-batch's features; that path is differentiated in the last micro-batch
    only, or their gradients would be ``accum_freq`` times too large.
    """
    amp = autocast_context(trainer.cfg.precision, trainer.device)
    caption_ids = torch.cat([b.caption_ids for b in micro])
    scaler, ddp = trainer.scaler, trainer.ddp

    def loss_of(image, text, scalars: HeadScalars) -> LossOutput:
        return trainer.loss(image, text, scalars, caption_ids=caption_ids, entailment_weight=entailment_weight,
                            min_radius=min_radius)

    if len(micro) == 1:
        with amp:
            image, text = _features(trainer, micro[0])
        out = loss_of(image, text, trainer.model.head_scalars())
        scaler.scale(out.total).backward()
        return out, image.detach(), text.detach()

    with torch.no_grad(), amp:
        cached = [_features(trainer, b) for b in micro]
    images, texts = [c[0] for c in cached], [c[1] for c in cached]
    out = None
    for j, batch in enumerate(micro):
        last = j == len(micro) - 1
        scalars = trainer.model.head_scalars()
        # Gradients accumulate locally; DDP all-reduces them once, in the last micro-batch's backward.
        with ddp.no_sync() if ddp is not None and not last else nullcontext():
            with amp:
                image_j, text_j = _features(trainer, batch)
            image = torch.cat(images[:j] + [image_j] + images[j + 1:])
            text = torch.cat(texts[:j] + [text_j] + texts[j + 1:])
            out = loss_of(image, text, scalars if last else scalars.detached())
            scaler.scale(out.total).backward()
    return out, torch.cat(images), torch.cat(texts)


def _grad_norm(trainer: Trainer) -> torch.Tensor:
    """The global gradient norm before clipping (``--grad-clip-norm`` clips here)."""
    params = [p for p in trainer.model.parameters() if p.grad is not None]
    if trainer.cfg.grad_clip_norm:
        return torch.nn.utils.clip_grad_norm_(params, trainer.cfg.grad_clip_norm)
    if not params:
        return torch.zeros((), device=trainer.device)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def update(trainer: Trainer, out: LossOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the step's gradients unless the loss or the gradient is non-finite; returns the averaged loss parts
    ``(4,)`` (total, contrastive, entailment, grad norm) and the finite flag, all on the device.

    With ``--local-loss`` or the entailment loss each process's loss covers its own rows; their average over
    processes is the loss of the global batch, what one process on the whole batch would log. Gradients are
    already averaged by DDP, so their norm is the same on every process.
    """
    scaler, optimizer = trainer.scaler, trainer.optimizer
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # true gradients for the clipping and the norm
    norm = _grad_norm(trainer)
    values = torch.stack([out.total.detach(), out.contrastive.detach(), out.entailment.detach(),
                          norm.detach().to(out.total.device)]).double()
    if trainer.dist.distributed:
        dist.all_reduce(values)
        values = values / trainer.dist.world_size
    # float16 gradients that overflow are the scaler's to skip (and its scale to lower), not a divergence.
    finite = values[0].isfinite() if scaler.is_enabled() else values[0].isfinite() & values[3].isfinite()
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the update (on the device) if the float16 gradients overflowed
        scaler.update()
    else:
        step_if_finite(optimizer, finite)
    trainer.model.clamp_parameters()
    optimizer.zero_grad(set_to_none=True)
    return values, finite


def train_step(trainer: Trainer, micro: list[Batch], entailment_weight: float, min_radius: float) -> StepResult:
    """One optimizer step over ``micro`` (already on the device and agreed on by all processes)."""
    out, image, text = forward_backward(trainer, micro, entailment_weight, min_radius)
    values, finite = update(trainer, out)
    return StepResult(values[0], values[1], values[2], values[3], finite, out.stats, image, text)
