"""The training loop: ``train(config)``, for one process or many under ``torchrun``.

The parts, each with one job: :mod:`~euclip.train.setup` builds the run (model, loss, optimizer, data),
:mod:`~euclip.train.state` resumes and checkpoints it, :mod:`~euclip.train.step` runs one optimizer step,
:mod:`~euclip.train.log` records logging steps and :mod:`~euclip.train.validation` validates. This module
only sequences them.
"""

from __future__ import annotations

import logging
import signal
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from euclip.data.batch import NoReadableDataError, nothing_readable
from euclip.runs import write_json
from euclip.train.config import TrainConfig
from euclip.train.distributed import env_world_size, init_distributed
from euclip.train.log import NonFiniteLossError, StepLog
from euclip.train.metrics import MetricsLogger
from euclip.train.setup import Trainer, build_trainer, prepare_process
from euclip.train.state import Counters, read_checkpoint, restore, save, write_run_metadata
from euclip.train.step import StepResult, agree_on_batches, train_step
from euclip.train.validation import Validator

__all__ = ["NonFiniteLossError", "train"]

log = logging.getLogger("euclip.train")


class _Preemption:
    """Turns SIGTERM (preemption, ``kill``) into a flag the loop checks after each step.

    Under torchrun the processes get the signal at slightly different times; the loop agrees on the
    flag across processes before acting on it, so that all of them save the same step and stop.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(cfg: TrainConfig) -> dict:
    """Train a GeometricCLIP as ``cfg`` says; returns a summary (final loss, steps, samples/s, ...).

    Writes into ``cfg.output`` (see :class:`euclip.runs.RunDir`): ``config.json``, ``command.txt``,
    ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/`` and ``summary.json`` (the main process only). Under
    ``torchrun`` every process calls this; the process group is created here unless the caller already made one.

    Raises:
        ValueError, FileNotFoundError: bad options or data, before any work.
        NoReadableDataError: (a ValueError) the data is unreadable as a whole: a worker's shards yield nothing, an
            epoch of unreadable samples, or a run whose every step was empty (raised before its last checkpoint).
        NonFiniteLossError: more non-finite steps than ``cfg.nonfinite_limit`` (checked at logging steps).
        SystemExit: code 143 after SIGTERM, once a checkpoint of the last finished step is written.
    """
    checkpoint = read_checkpoint(cfg)
    cfg.validate(env_world_size())
    owns_group = env_world_size() > 1 and not (dist.is_available() and dist.is_initialized())
    dist_info, device = init_distributed(cfg.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        prepare_process(cfg, device)
        trainer = build_trainer(cfg, dist_info, device, checkpoint["step"] if checkpoint else 0)
        counters = restore(trainer, checkpoint) if checkpoint else Counters()
        write_run_metadata(trainer)
        return _run(trainer, counters.on_device(device), resumed=checkpoint is not None)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)  # global state: leave it as we found it
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(trainer: Trainer, counters: Counters, resumed: bool) -> dict:
    cfg, main = trainer.cfg, trainer.dist.is_main
    metrics = MetricsLogger(trainer.run.path, enabled=main, resume_step=trainer.start_step if resumed else None)
    progress = tqdm(total=trainer.total_steps, initial=trainer.start_step, dynamic_ncols=True,
                    desc=f"train {cfg.model.geometry}/{cfg.model.logit}", disable=not (cfg.progress and main))
    step_log = StepLog(trainer, metrics, progress, nonfinite_seen=counters.to_host()["nonfinite_steps"])
    step_log.last_saved = trainer.start_step if resumed else None
    validator = Validator(trainer, metrics)
    batches, step, data_wait = iter(trainer.data.loader), trainer.start_step, 0.0
    trained, skipped_before = 0, counters.skipped_samples  # steps of this invocation with a readable sample
    start = time.perf_counter()
    try:
        with _Preemption() as preemption:
            while step < trainer.total_steps:
                wait = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.accum_freq)]
                data_wait += time.perf_counter() - wait
                micro, agreed = agree_on_batches(micro, preemption.requested, trainer.dist)
                result = _step(trainer, micro, agreed, step, counters)
                trained += result is not None
                if not trained and step + 1 == trainer.total_steps:
                    # Not a "final" checkpoint of an untrained model, written as if the run had succeeded.
                    raise NoReadableDataError(nothing_readable(
                        cfg.train_data or cfg.dataset_type, counters.skipped_samples - skipped_before,
                        f"by the {step + 1 - trainer.start_step} step(s) of this run"))
                step += 1
                trainer.scheduler.step()
                progress.update(1)
                _after_step(trainer, step, result, counters, step_log, validator)
                if step % cfg.save_every_steps == 0 or step == trainer.total_steps or agreed["preempt"]:
                    save(trainer, step, counters)
                    step_log.last_saved = step
                if agreed["preempt"]:
                    log.warning("SIGTERM: checkpoint written at step %d; exiting", step)
                    raise SystemExit(143)
    finally:
        progress.close()
        metrics.close()
    return _summary(trainer, step, counters, time.perf_counter() - start, data_wait)


def _step(trainer: Trainer, micro: list, agreed: dict, step: int, counters: Counters) -> StepResult | None:
    """Train on ``micro``; ``None`` for a step whose micro-batch had no readable sample."""
    counters.skipped_samples += agreed["skipped"]
    counters.dropped_samples += agreed["dropped"]
    if any(len(b) == 0 for b in micro):  # the same on every process: lengths were agreed on
        # Every sample of a micro-batch was unreadable. The step still counts (and the scheduler moves on), so
        # that step numbers keep mapping to data positions on resume.
        counters.empty_steps += 1
        log.warning("step %d: a micro-batch has no readable sample; step skipped", step + 1)
        return None
    micro = [b.to(trainer.device, non_blocking=True) for b in micro]
    cfg = trainer.cfg
    result = train_step(trainer, micro, cfg.entailment_weight_at(step), cfg.min_radius_at(step, trainer.total_steps))
    counters.record_step(result.finite, result.loss, sum(len(b) for b in micro) * trainer.dist.world_size)
    return result


def _after_step(trainer: Trainer, step: int, result: StepResult | None, counters: Counters, step_log: StepLog,
                validator: Validator) -> None:
    """Logging and validation after optimizer step ``step`` (1-based)."""
    cfg = trainer.cfg
    last = step == trainer.total_steps
    if result is not None:
        step_log.count_samples(len(result.image) * trainer.dist.world_size)
        if step % cfg.log_every_steps == 0 or last:
            extra = {"min_radius": cfg.min_radius_at(step - 1, trainer.total_steps),
                     "entailment_weight": cfg.entailment_weight_at(step - 1)}
            step_log(step, result, counters, extra)
    if validator.due(step):
        validator(step)


def _summary(trainer: Trainer, step: int, counters: Counters, wall: float, data_wait: float) -> dict:
    host = counters.to_host()
    summary = {"steps": step, "final_loss": host["last_finite_loss"], "train_seconds": wall,
               "samples_per_s": (step - trainer.start_step) * trainer.global_batch / wall,
               "data_wait_seconds": data_wait, "world_size": trainer.dist.world_size,
               "global_batch_size": trainer.global_batch,
               **{k: int(host[k]) for k in ("skipped_samples", "dropped_samples", "empty_steps", "nonfinite_steps",
                                            "samples_seen")},
               **trainer.model.scalars(), "run_dir": str(trainer.run.path)}
    if trainer.device.type == "cuda":
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
    if trainer.dist.is_main:
        write_json(summary, trainer.run.summary)
        if summary["skipped_samples"]:
            log.warning("skipped %d unreadable samples", summary["skipped_samples"])
    return summary
