"""Image–text losses for any embedding geometry.

* :func:`contrastive_loss` / :class:`ContrastiveLoss`: CLIP's symmetric InfoNCE with any geometry's logits,
  plus MERU's entailment loss, with OpenCLIP's feature gathering across processes.
* :func:`sigmoid_loss` / :class:`SigmoidLoss`: SigLIP's sigmoid loss with any geometry's logits, plus the
  entailment loss, with the texts passed around the ring of processes (no all-gather).
* Both compute large logit matrices in row blocks (:mod:`euclip.losses.blocked`): memory bounded by a block.
* :class:`Loss`, :func:`register_loss`, :func:`build_loss`: the configured-loss interface and its registry
  (``euclip train --loss NAME``).
"""

from euclip.losses.base import LOSSES, HeadScalars, Loss, LossOutput, build_loss, check_loss, register_loss
from euclip.losses.contrastive import ContrastiveLoss, contrastive_loss, logit_stats
from euclip.losses.gather import distributed_world, gather_features, single_process
from euclip.losses.sigmoid import SigmoidLoss, sigmoid_loss

__all__ = [
    "LOSSES", "ContrastiveLoss", "HeadScalars", "Loss", "LossOutput", "SigmoidLoss", "build_loss", "check_loss",
    "contrastive_loss", "distributed_world", "gather_features", "logit_stats", "register_loss", "sigmoid_loss",
    "single_process",
]
