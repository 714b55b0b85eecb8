"""What a logging step records: the step's values read from the device once, with the geometry's health."""

from __future__ import annotations

import logging
import math
import time

import torch

from euclip import geometry as geom
from euclip.train.metrics import MetricsLogger
from euclip.train.setup import Trainer
from euclip.train.state import Counters, last_good_checkpoint
from euclip.train.step import StepResult

log = logging.getLogger("euclip.train")


class NonFiniteLossError(RuntimeError):
    """Raised when more non-finite steps (in all, not only in a row) occurred than ``--nonfinite-limit`` allows."""


class StepLog:
    """Reads a step's results at logging steps, writes them (metrics.jsonl, TensorBoard, the progress bar), and
    enforces ``--nonfinite-limit``, which can therefore only stop a run at a logging step."""

    def __init__(self, trainer: Trainer, metrics: MetricsLogger, progress, nonfinite_seen: int):
        self.trainer, self.metrics, self.progress = trainer, metrics, progress
        self.nonfinite_seen = nonfinite_seen  # non-finite steps already reported
        self.last_saved: int | None = None  # the step of the last checkpoint (written or resumed from)
        self.saved_trained = True  # whether any step had trained when it was written
        self._window_start, self._window_samples = time.perf_counter(), 0

    def saved(self, step: int, trained: bool) -> None:
        """Record the checkpoint of ``step`` (``trained``: some step had trained by then), for error messages."""
        self.last_saved, self.saved_trained = step, trained

    def count_samples(self, n: int) -> None:
        self._window_samples += n

    def __call__(self, step: int, result: StepResult, counters: Counters, extra: dict) -> None:
        """Log step ``step`` (1-based, just finished), or raise if the non-finite steps exceed the limit."""
        host = counters.to_host()
        values = torch.stack([result.loss, result.contrastive, result.entailment, result.grad_norm,
                              result.finite.double()]).tolist()  # the one synchronisation of the step
        loss, contrastive, entailment, grad_norm, finite = values
        self._check_nonfinite(step, loss, host)
        if not finite:
            return  # a skipped step is not logged as trained
        elapsed = time.perf_counter() - self._window_start
        record = {"step": step, "epoch": (step - 1) // self.trainer.data.steps_per_epoch, "loss": loss,
                  "contrastive": contrastive, "entailment": entailment, "grad_norm": grad_norm,
                  "lr": self.trainer.scheduler.get_last_lr()[0], **extra,
                  "samples_per_s": self._window_samples / max(elapsed, 1e-9), **self.trainer.model.scalars(),
                  **_embedding_norms(result, self.trainer), **{k: v.item() for k, v in result.stats.items()},
                  **{k: host[k] for k in ("skipped_samples", "dropped_samples", "empty_steps", "nonfinite_steps")}}
        self.metrics.log(record)
        self.progress.set_postfix(loss=f"{loss:.3f}", sps=f"{record['samples_per_s']:.0f}",
                                  t=f"{record['logit_scale']:.1f}")
        self._window_start, self._window_samples = time.perf_counter(), 0

    def _check_nonfinite(self, step: int, loss: float, host: dict) -> None:
        count, limit = host["nonfinite_steps"], self.trainer.cfg.nonfinite_limit
        if count <= self.nonfinite_seen:
            return
        what = "loss" if not math.isfinite(loss) else "gradient"
        self.nonfinite_seen = count
        log.warning("step %d: non-finite %s (loss %s); %d non-finite step(s) skipped so far (at most %d)", step, what,
                    loss, count, limit)
        if count > limit:
            where = last_good_checkpoint(self.trainer.run, self.last_saved, self.saved_trained)
            raise NonFiniteLossError(f"step {step}: non-finite {what} (loss {loss}); {count} non-finite steps exceed "
                                     f"--nonfinite-limit {limit}. Last finite loss: {host['last_finite_loss']}; "
                                     f"{where}.")


@torch.no_grad()
def _embedding_norms(result: StepResult, trainer: Trainer) -> dict[str, float]:
    model = trainer.model
    norms = [geom.norm_from_origin(x.float(), model.geometry, model.curvature).mean()
             for x in (result.image, result.text)]
    image, text = torch.stack(norms).tolist()
    return {"norm_image": image, "norm_text": text}
