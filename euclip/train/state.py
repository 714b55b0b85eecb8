"""A run's resumable state: what a checkpoint holds, how it is written and how a run resumes from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

import euclip
from euclip.runs import RunDir, command_line
from euclip.train.checkpoint import (remove_stale_temporaries, resume_checkpoint, rng_state, save_checkpoint,
                                     set_rng_state)
from euclip.train.config import TrainConfig
from euclip.train.distributed import DistInfo, barrier
from euclip.train.setup import Trainer

log = logging.getLogger("euclip.train")


@dataclass
class Counters:
    """Run-long counts. Host counts come from the data; device counts from the steps, kept on the device so
    that a step never waits for them (they are read at logging steps and checkpoints)."""

    skipped_samples: int = 0  # unreadable samples, summed over processes
    dropped_samples: int = 0  # samples cut to make the processes' micro-batches equal
    empty_steps: int = 0  # steps whose micro-batch had no readable sample
    nonfinite_steps: torch.Tensor | int = 0  # device: steps skipped for a non-finite loss or gradient
    samples_seen: torch.Tensor | int = 0  # device: samples of the steps that trained
    last_finite_loss: torch.Tensor | float | None = None  # device: the loss of the last step that trained

    def on_device(self, device: torch.device) -> "Counters":
        last = float("nan") if self.last_finite_loss is None else self.last_finite_loss
        return Counters(self.skipped_samples, self.dropped_samples, self.empty_steps,
                        torch.as_tensor(self.nonfinite_steps, dtype=torch.long, device=device),
                        torch.as_tensor(self.samples_seen, dtype=torch.long, device=device),
                        torch.as_tensor(last, dtype=torch.float64, device=device))

    def record_step(self, finite: torch.Tensor, loss: torch.Tensor, samples: int) -> None:
        """Count one optimizer step whose finiteness ``finite`` (0-d bool) is known only on the device."""
        self.nonfinite_steps = self.nonfinite_steps + (~finite).long()
        self.samples_seen = self.samples_seen + finite.long() * samples
        self.last_finite_loss = torch.where(finite, loss.double(), self.last_finite_loss)

    def to_host(self) -> dict:
        """Plain numbers (one synchronisation), as checkpoints and summaries store them."""
        last = float("nan") if self.last_finite_loss is None else self.last_finite_loss
        device = last.device if isinstance(last, torch.Tensor) else torch.device("cpu")
        device_values = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device)
                                     for v in (self.nonfinite_steps, self.samples_seen, last)])
        nonfinite, seen, last = device_values.tolist()
        return {"skipped_samples": self.skipped_samples, "dropped_samples": self.dropped_samples,
                "empty_steps": self.empty_steps, "nonfinite_steps": int(nonfinite), "samples_seen": int(seen),
                "last_finite_loss": None if last != last else last}


def read_checkpoint(cfg: TrainConfig) -> dict | None:
    """The checkpoint ``--resume`` names (see :func:`~euclip.train.checkpoint.resume_checkpoint`), once ``cfg`` is
    checked against the settings it was trained with.

    Raises:
        ValueError: ``cfg`` changes a model or geometry setting (:meth:`TrainConfig.resume_changes`).
    """
    if not cfg.resume:
        return None
    path, checkpoint = resume_checkpoint(cfg.resume, cfg.output)
    saved = TrainConfig.from_dict(checkpoint["config"])
    for flag, old, new in cfg.resume_changes(saved):
        log.info("resume: %s changed %s → %s", flag, old, new)
    log.info("resuming from %s at step %d", path, checkpoint["step"])
    return checkpoint


def restore(trainer: Trainer, checkpoint: dict) -> Counters:
    """Load weights, optimizer, schedule, loss scaler and RNG states; returns the saved counters.

    The optimiser's settings (``--lr``, ``--wd``, betas, ε) and the schedule (``--warmup``, ``--steps``) are this
    run's: a resume may change them, and the change takes effect from the first resumed step.
    """
    trainer.model.load_state_dict(checkpoint["model"])
    if trainer.scaler.is_enabled() and checkpoint.get("scaler"):
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    settings = _optimiser_settings(trainer)
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])  # moments and step counts, and the old settings...
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])  # ...the step number, and the old base rates
    _apply_optimiser_settings(trainer, settings)
    _restore_rng(checkpoint["rng"], trainer.dist)
    _check_resume_data(checkpoint.get("data", {}), trainer.data_info())
    return Counters(**checkpoint.get("counters", {}))


_GROUP_SETTINGS = ("weight_decay", "betas", "eps", "initial_lr")


def _optimiser_settings(trainer: Trainer) -> dict:
    """The settings this run's optimizer and scheduler were built with (before a checkpoint's replace them)."""
    return {"groups": [{k: g[k] for k in _GROUP_SETTINGS} for g in trainer.optimizer.param_groups],
            "base_lrs": list(trainer.scheduler.base_lrs)}


def _apply_optimiser_settings(trainer: Trainer, settings: dict) -> None:
    """Put this run's settings back after loading a checkpoint, and recompute the learning rate of the step.

    The rate is ``base * schedule(step)``, as the scheduler computes it: with unchanged settings, the very number
    the interrupted run would have used (a resume stays bit-exact); a new ``--lr`` or schedule applies at once.
    """
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    for group, own in zip(optimizer.param_groups, settings["groups"], strict=True):
        group.update(own)
    scheduler.base_lrs = settings["base_lrs"]
    rates = [base * schedule(scheduler.last_epoch) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports (logged as lr)


def write_run_metadata(trainer: Trainer) -> None:
    """config.json, command.txt and version.txt (main process), after removing torn checkpoint writes."""
    if not trainer.dist.is_main:
        return
    run = trainer.run
    run.path.mkdir(parents=True, exist_ok=True)
    trainer.cfg.save(run.config)
    run.command.write_text(command_line() + "\n")
    run.version.write_text(f"euclip {euclip.__version__}\ntorch {torch.__version__}\n")
    for stale in remove_stale_temporaries(run.checkpoints):
        log.warning("removed %s, left by a checkpoint write that was interrupted", stale)


def save(trainer: Trainer, step: int, counters: Counters) -> bool:
    """Write the checkpoint of ``step`` (every process takes part: the RNG states are gathered); returns whether
    any step had trained by then (else the checkpoint holds the initial weights)."""
    host = counters.to_host()  # global counts: the same on every process
    rngs = [rng_state()]
    if trainer.dist.distributed:
        gathered = [None] * trainer.dist.world_size
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if trainer.dist.is_main:
        state = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                 "scheduler": trainer.scheduler.state_dict(),
                 "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None, "step": step,
                 "config": trainer.cfg.to_dict(), "rng": rngs, "counters": host,
                 "data": trainer.data_info()}
        save_checkpoint(trainer.run.checkpoints, step, state, keep=trainer.cfg.keep_checkpoints)
    barrier()


def _restore_rng(saved: dict | list, dist_info: DistInfo) -> None:
    if not isinstance(saved, list):
        set_rng_state(saved)
    elif dist_info.rank < len(saved):
        set_rng_state(saved[dist_info.rank])
    else:
        log.warning("the checkpoint holds RNG states of %d process(es); process %d starts from its seed",
                    len(saved), dist_info.rank)


def _check_resume_data(saved: dict, now: dict) -> None:
    """Warn when the resumed run will not see the data an uninterrupted run would have seen."""
    keys = ["global_batch"] + (["world_size", "workers"] if now["dataset_type"] == "webdataset" else [])
    changed = [f"{k} {saved[k]} -> {now[k]}" for k in keys if k in saved and saved[k] != now[k]]
    if changed:
        log.warning("resuming with a different %s: the sample order differs from the interrupted run's",
                    ", ".join(changed))


def last_good_checkpoint(run: RunDir, last_saved: int | None, trained_before: bool = True) -> str:
    """A sentence for error messages: where the last good checkpoint is, and how to resume from it.

    Args:
        last_saved: the step of the last checkpoint written (or resumed from); ``None``: none yet.
        trained_before: whether any step had trained when it was written (else it holds the initial weights).
    """
    if last_saved is None:
        return "no checkpoint was written yet"
    if not trained_before:
        return (f"there is no trained checkpoint: {run.latest} (step {last_saved}) holds the initial weights, as no "
                "step had trained when it was written; start again (--overwrite) with e.g. a lower --lr, a smaller "
                "--init-logit-scale or --grad-clip-norm")
    return (f"the last good checkpoint is {run.latest} (step {last_saved}; resume with --resume latest and e.g. a "
            "lower --lr or --grad-clip-norm)")
