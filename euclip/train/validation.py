"""Validation during training (``--val-data``): the run's loss and retrieval recall on held-out pairs.

OpenCLIP's ``--val-data`` in euclip's terms: at the end of every epoch (or every ``--val-every-steps``) and at
the end of training, the main process embeds the validation pairs, computes the run's own loss over batches of
``--batch-size`` pairs (the multi-positive and entailment settings included) and image↔text recall@1/5/10 with
the geometry's logit, and logs them as ``val/*`` in metrics.jsonl and TensorBoard. The other processes wait.
"""

from __future__ import annotations

import time

import torch

from euclip.data.sources import DataSpec
from euclip.losses import single_process
from euclip.train.distributed import barrier
from euclip.train.metrics import MetricsLogger
from euclip.train.setup import Trainer


class Validator:
    def __init__(self, trainer: Trainer, metrics: MetricsLogger):
        kwargs = trainer.cfg.validation_spec_kwargs()
        self.trainer, self.metrics = trainer, metrics
        self.spec = DataSpec(**kwargs) if kwargs is not None else None

    def due(self, step: int) -> bool:
        """Whether to validate after step ``step`` (1-based)."""
        if self.spec is None:
            return False
        every = self.trainer.cfg.val_every_steps or self.trainer.data.steps_per_epoch
        return step % every == 0 or step == self.trainer.total_steps

    def __call__(self, step: int) -> dict | None:
        """Validate on the main process and log ``val/*`` at ``step``; returns the record there (else ``None``)."""
        record = None
        if self.trainer.dist.is_main:
            model = self.trainer.model
            model.eval()
            try:
                record = {"step": step, **validate(self.trainer, self.spec)}
            finally:
                model.train()
            self.metrics.log(record)
        barrier()
        return record


@torch.no_grad()
def validate(trainer: Trainer, spec: DataSpec) -> dict[str, float]:
    """``{"val/loss", "val/image_to_text_R@k", "val/text_to_image_R@k", ...}`` of ``trainer.model`` on ``spec``."""
    from euclip.data.batch import caption_id
    from euclip.eval.embed import embed
    from euclip.eval.retrieval import retrieval_from_embeddings

    start = time.perf_counter()
    model, cfg = trainer.model, trainer.cfg
    emb = embed(model, spec, trainer.device, progress=False, desc="validate")
    image = emb.image[emb.text_to_image].to(trainer.device)  # one pair per caption
    text = emb.text.to(trainer.device)
    ids = torch.tensor([caption_id(c) for c in emb.captions], dtype=torch.long, device=trainer.device)
    losses, weights = [], []
    with single_process():  # the other processes are not computing this loss
        for lo in range(0, len(text), cfg.batch_size):
            hi = min(lo + cfg.batch_size, len(text))
            if hi - lo < 2:
                continue  # a lone pair has no negatives
            out = trainer.loss(image[lo:hi], text[lo:hi], model.head_scalars(), caption_ids=ids[lo:hi],
                               entailment_weight=cfg.entailment_weight, min_radius=cfg.min_radius_at(
                                   trainer.total_steps, trainer.total_steps))
            losses.append(out.total.double() * (hi - lo))
            weights.append(hi - lo)
    record = {"val/loss": (torch.stack(losses).sum() / sum(weights)).item() if losses else float("nan")}
    recall = retrieval_from_embeddings(emb)
    for direction in ("image_to_text", "text_to_image"):
        record.update({f"val/{direction}_{k}": v for k, v in recall[direction].items()})
    record.update({"val/pairs": len(text), "val/skipped": emb.skipped, "val/seconds": time.perf_counter() - start})
    return record
