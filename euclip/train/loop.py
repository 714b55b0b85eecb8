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
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from euclip.data.batch import NoReadableDataError, nothing_readable
from euclip.runs import write_json
from euclip.signals import STOP_SIGNALS, exit_code, stop_signals_blocked
from euclip.train.config import TrainConfig
from euclip.train.distributed import env_world_size, init_distributed, is_main_process
from euclip.train.folder import RunFolder
from euclip.train.log import NonFiniteLossError, StepLog
from euclip.train.metrics import MetricsLogger
from euclip.train.setup import Trainer, build_trainer, prepare_process
from euclip.train.state import Counters, read_checkpoint, restore, save, write_run_metadata
from euclip.train.step import StepResult, agree_on_batches, train_step
from euclip.train.validation import Validator

__all__ = ["NonFiniteLossError", "train"]

log = logging.getLogger("euclip.train")


class _Preemption:
    """Turns a stop signal (:data:`euclip.signals.STOP_SIGNALS`: preemption, ``timeout``, SLURM's warning, Ctrl-C)
    into a flag the loop checks after each step; the DataLoader workers ignore these signals.

    Under torchrun the processes get the signal at slightly different times; the loop agrees on the
    flag across processes before acting on it, so that all of them save the same step and stop. A second
    Ctrl-C interrupts at once (without a checkpoint), for a user who does not want to wait for the step.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            # A worker may still die of a signal sent to the whole group (a thread of PyTorch's own in it can receive
            # it, see euclip.signals); PyTorch's SIGCHLD handler would then raise wherever this process is, mid-step.
            # From here on only the data fetch needs the workers, and it notices a dead one by itself.
            self._previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))

    def name(self) -> str:
        """The signal received (SIGTERM when another process of the run received it)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    def exit_code(self) -> int:
        return exit_code(self.signum or signal.SIGTERM)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def train(cfg: TrainConfig) -> dict:
    """Train a GeometricCLIP as ``cfg`` says; returns a summary (final loss, steps, samples/s, ...).

    Writes into ``cfg.output`` (see :class:`euclip.runs.RunDir`): ``config.json``, ``command.txt``,
    ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/`` and ``summary.json`` (the main process only). Under
    ``torchrun`` every process calls this; the process group is created here unless the caller already made one.

    Raises:
        ValueError, FileNotFoundError: bad options or data, before any work; a used or locked ``cfg.output``
            (:class:`~euclip.train.folder.RunFolder`); a resume that changes the model or geometry.
        NoReadableDataError: (a ValueError) the data is unreadable as a whole: a worker's shards yield nothing, an
            epoch of unreadable samples, or a run whose every step was empty (raised before its last checkpoint).
        NonFiniteLossError: more non-finite steps than ``cfg.nonfinite_limit`` (checked at logging steps).
        SystemExit: after a stop signal (:mod:`euclip.signals`), once a checkpoint of the last finished step is
            written: code 143 after SIGTERM, 130 after SIGINT, 138 after SIGUSR1.
    """
    checkpoint = read_checkpoint(cfg)
    cfg.validate(env_world_size())
    folder = RunFolder(cfg) if is_main_process() else None  # under torchrun: the main process's job
    if folder is not None:
        folder.check()
    owns_group = env_world_size() > 1 and not (dist.is_available() and dist.is_initialized())
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        dist_info, device = init_distributed(cfg.device)
        prepare_process(cfg, device)
        trainer = build_trainer(cfg, dist_info, device, checkpoint["step"] if checkpoint else 0)
        if folder is not None:
            folder.take()
        counters = restore(trainer, checkpoint) if checkpoint else Counters()
        write_run_metadata(trainer)
        return _run(trainer, counters.on_device(device), resumed=checkpoint is not None)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)  # global state: leave it as we found it
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
        if folder is not None:
            folder.release()


def _run(trainer: Trainer, counters: Counters, resumed: bool) -> dict:
    cfg, main = trainer.cfg, trainer.dist.is_main
    metrics = MetricsLogger(trainer.run.path, enabled=main, resume_step=trainer.start_step if resumed else None)
    progress = tqdm(total=trainer.total_steps, initial=trainer.start_step, dynamic_ncols=True,
                    desc=f"train {cfg.model.geometry}/{cfg.model.logit}", disable=not (cfg.progress and main))
    step_log = StepLog(trainer, metrics, progress, nonfinite_seen=counters.to_host()["nonfinite_steps"])
    if resumed:
        step_log.saved(trainer.start_step, counters.to_host()["samples_seen"] > 0)
    validator = Validator(trainer, metrics)
    step, data_wait, start, preemption = trainer.start_step, 0.0, time.perf_counter(), _Preemption()
    trained, skipped_before = 0, counters.skipped_samples  # steps of this invocation with a readable sample
    try:
        with preemption:
            batches = _batches(trainer.data.loader)
            while step < trainer.total_steps:
                wait = time.perf_counter()
                micro = _fetch(batches, cfg.accum_freq, preemption)
                if micro is None:  # the workers died of the stop signal: the state is still that of `step`
                    if step != step_log.last_saved:
                        step_log.saved(step, save(trainer, step, counters))
                    log.warning("%s: checkpoint written at step %d; exiting", preemption.name(), step)
                    raise SystemExit(preemption.exit_code())
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
                    step_log.saved(step, save(trainer, step, counters))
                if agreed["preempt"]:
                    log.warning("%s: checkpoint written at step %d; exiting", preemption.name(), step)
                    raise SystemExit(preemption.exit_code())
    except RuntimeError as e:
        _exit_if_workers_died_of_the_signal(e, preemption, step_log.last_saved)
        raise
    finally:
        progress.close()
        metrics.close()
    return _summary(trainer, step, counters, time.perf_counter() - start, data_wait)


def _batches(loader: Iterable) -> Iterator:
    """The stream's micro-batches. The first one starts the DataLoader workers: with the stop signals blocked, so
    that the workers leave them to this process (see :mod:`euclip.signals`); any that arrive meanwhile are
    handled right after."""
    with stop_signals_blocked():
        batches = iter(loader)  # a DataLoader's persistent workers start here, a generator's at its first item
        first = next(batches, None)
    if first is not None:
        yield first
    yield from batches


def _fetch(batches: Iterator, n: int, preemption: _Preemption) -> list | None:
    """The next ``n`` micro-batches; ``None`` when DataLoader workers died of a stop signal (one process only: under
    torchrun the others would wait for this one in the next collective, so it exits as below, unsaved)."""
    try:
        return [next(batches) for _ in range(n)]
    except RuntimeError as e:
        if not preemption.requested or "DataLoader worker" not in str(e) or env_world_size() > 1:
            raise
        log.warning("%s: a data-loading worker died of it too", preemption.name())
        log.debug("%s", e)
        return None


def _exit_if_workers_died_of_the_signal(error: RuntimeError, preemption: _Preemption,
                                       last_saved: int | None) -> None:
    """Exit with the signal's code, not a traceback, when DataLoader workers died of the stop signal.

    Workers ignore stop signals from their start, but one that receives the signal while it is still starting up
    dies of it, and PyTorch then raises wherever the main process is (mid-step: its state cannot be saved).
    """
    if not (preemption.requested and "DataLoader worker" in str(error)):
        return
    where = f"the last checkpoint is of step {last_saved}" if last_saved is not None else "no checkpoint was written"
    log.warning("%s: a data-loading worker died of it before the step ended; %s; exiting", preemption.name(), where)
    log.debug("%s", error)
    raise SystemExit(preemption.exit_code()) from error


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
