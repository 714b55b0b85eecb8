"""The training loop: one function, ``train(config)``, for one process or many under ``torchrun``."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import euclip
from euclip import geometry as geom
from euclip.losses import contrastive_loss
from euclip.model import GeometricCLIP
from euclip.train.checkpoint import find_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from euclip.train.config import TrainConfig
from euclip.train.data import build_train_data
from euclip.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from euclip.train.metrics import MetricsLogger
from euclip.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("euclip.train")


class NonFiniteLossError(RuntimeError):
    """Raised when more consecutive-or-not non-finite steps occurred than ``--nonfinite-limit`` allows."""


class _Preemption:
    """Turns SIGTERM (preemption, ``kill``) into a flag the loop checks after each step."""

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


def autocast_context(precision: str, device: torch.device):
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def _embedding_stats(image: torch.Tensor, text: torch.Tensor, model: GeometricCLIP) -> dict[str, float]:
    with torch.no_grad():
        ni = geom.norm_from_origin(image.float(), model.geometry, model.curvature)
        nt = geom.norm_from_origin(text.float(), model.geometry, model.curvature)
    return {"norm_image": ni.mean().item(), "norm_text": nt.mean().item()}


def _write_run_metadata(cfg: TrainConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    (run_dir / "command.txt").write_text(" ".join(sys.argv) + "\n")
    (run_dir / "version.txt").write_text(f"euclip {euclip.__version__}\ntorch {torch.__version__}\n")


def train(cfg: TrainConfig) -> dict:
    """Train a GeometricCLIP as ``cfg`` says; returns a summary (final loss, steps, samples/s, ...).

    Writes into ``cfg.output``: ``config.json``, ``command.txt``, ``checkpoints/``, ``metrics.jsonl``,
    ``tensorboard/`` and ``summary.json``.
    """
    dist_info, device = init_distributed(cfg.device)
    run_dir = Path(cfg.output)
    checkpoint = None
    if cfg.resume:
        path = find_checkpoint(cfg.resume, cfg.output)
        checkpoint = load_checkpoint(path)
        saved = TrainConfig.from_dict(checkpoint["config"])
        if saved.model != cfg.model:
            log.warning("resuming with the checkpoint's model config %s (ignoring %s)", saved.model, cfg.model)
            cfg.model = saved.model
        log.info("resuming from %s at step %d", path, checkpoint["step"])
    cfg.validate()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = GeometricCLIP(cfg.model).to(device)
    if cfg.precision == "pure_bf16":
        model = model.to(torch.bfloat16)
    if cfg.grad_checkpointing:
        model.towers.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, cfg, device)
    start_step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_step = checkpoint["step"]
    torch.manual_seed(cfg.seed + dist_info.rank)  # per-process randomness from here on

    tokenizer = model.tokenizer()
    data = build_train_data(cfg, tokenizer, model.image_size, dist_info, start_step,
                            pin_memory=device.type == "cuda")
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * data.steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if checkpoint is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"][dist_info.rank] if isinstance(checkpoint["rng"], list) else checkpoint["rng"])
    if dist_info.is_main:
        _write_run_metadata(cfg, run_dir)

    train_model = model
    if dist_info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.torchcompile:
        train_model = torch.compile(train_model)

    counters = dict(checkpoint["counters"]) if checkpoint else {"skipped_samples": 0, "nonfinite_steps": 0,
                                                                 "last_finite_loss": None, "samples_seen": 0}
    logger = MetricsLogger(run_dir, enabled=dist_info.is_main)
    progress = tqdm(total=total_steps, initial=start_step, desc=f"train {cfg.model.geometry}/{cfg.model.logit}",
                    disable=not (cfg.progress and dist_info.is_main), dynamic_ncols=True)

    def state(step: int) -> dict:
        rngs = [rng_state()]
        if dist_info.distributed:
            gathered = [None] * dist_info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "config": cfg.to_dict(), "rng": rngs, "counters": counters,
                "data": {"dataset_type": cfg.dataset_type, "steps_per_epoch": data.steps_per_epoch,
                         "exact": data.exact_resume}}

    def save(step: int) -> None:
        s = state(step)  # every process takes part in gathering the RNG states
        if dist_info.is_main:
            save_checkpoint(run_dir / "checkpoints", step, s, keep=cfg.keep_checkpoints)
        barrier()

    batches = iter(data.loader)
    step = start_step
    window_start, window_samples = time.perf_counter(), 0
    train_start = time.perf_counter()
    stats: dict[str, float] = {}
    with _Preemption() as preemption:
        while step < total_steps:
            micro = [next(batches) for _ in range(cfg.accum_freq)]
            skipped = sum(b.skipped for b in micro)
            micro = [b.to(device, non_blocking=True) for b in micro]
            if any(len(b) == 0 for b in micro):
                counters["skipped_samples"] += skipped
                continue
            min_radius = cfg.min_radius_at(step, total_steps)
            loss_out, image, text = _train_step(train_model, model, micro, cfg, min_radius, device)
            loss_value = loss_out.total.item()
            grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            if not (math.isfinite(loss_value) and grads_finite):
                optimizer.zero_grad(set_to_none=True)
                counters["nonfinite_steps"] += 1
                what = "loss" if not math.isfinite(loss_value) else "gradient"
                log.warning("step %d: non-finite %s (%s); step skipped (%d of at most %d)", step, what, loss_value,
                            counters["nonfinite_steps"], cfg.nonfinite_limit)
                if counters["nonfinite_steps"] > cfg.nonfinite_limit:
                    progress.close()
                    raise NonFiniteLossError(
                        f"step {step}: non-finite {what} ({loss_value}); {counters['nonfinite_steps']} non-finite steps "
                        f"exceed --nonfinite-limit {cfg.nonfinite_limit}. Last finite loss: "
                        f"{counters['last_finite_loss']}. The last good checkpoint is in {run_dir / 'checkpoints'}.")
                step += 1
                scheduler.step()
                continue
            if cfg.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.clamp_parameters()
            scheduler.step()
            step += 1
            n_samples = sum(len(b) for b in micro) * dist_info.world_size
            counters["skipped_samples"] += skipped
            counters["samples_seen"] += n_samples
            counters["last_finite_loss"] = loss_value
            window_samples += n_samples
            progress.update(1)
            if step % cfg.log_every_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                stats = {"step": step, "epoch": (step - 1) // data.steps_per_epoch, "loss": loss_value,
                         "contrastive": loss_out.contrastive.item(), "entailment": loss_out.entailment.item(),
                         "lr": scheduler.get_last_lr()[0], "min_radius": min_radius,
                         "samples_per_s": window_samples / max(elapsed, 1e-9), **model.scalars(),
                         **_embedding_stats(image, text, model), **loss_out.stats,
                         "skipped_samples": all_reduce_sum(counters["skipped_samples"], device),
                         "nonfinite_steps": counters["nonfinite_steps"]}
                logger.log(stats)
                progress.set_postfix(loss=f"{loss_value:.3f}", sps=f"{stats['samples_per_s']:.0f}",
                                     t=f"{stats['logit_scale']:.1f}")
                window_start, window_samples = time.perf_counter(), 0
            if step % cfg.save_every_steps == 0 or step == total_steps or preemption.requested:
                save(step)
            if preemption.requested:
                progress.close()
                log.warning("SIGTERM: checkpoint written at step %d; exiting", step)
                logger.close()
                raise SystemExit(143)
    progress.close()
    wall = time.perf_counter() - train_start
    summary = {"steps": step, "final_loss": counters["last_finite_loss"], "train_seconds": wall,
               "samples_per_s": (step - start_step) * cfg.batch_size * cfg.accum_freq * dist_info.world_size / wall,
               "skipped_samples": int(all_reduce_sum(counters["skipped_samples"], device)),
               "nonfinite_steps": counters["nonfinite_steps"], **model.scalars(),
               "run_dir": str(run_dir)}
    if dist_info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if summary["skipped_samples"]:
            log.warning("skipped %d unreadable samples", summary["skipped_samples"])
    logger.close()
    return summary


def _features(train_model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    return train_model(batch.images, batch.tokens)


def _train_step(train_model, model: GeometricCLIP, micro: list, cfg: TrainConfig, min_radius: float,
                device: torch.device):
    """Forward and backward over the micro-batches of one optimizer step.

    With ``accum_freq > 1`` the loss is that of the whole accumulated batch (OpenCLIP's scheme):
    the features of every micro-batch are first computed without gradient, then each micro-batch is
    recomputed with gradient and its loss taken against all the cached features, so the negatives
    of the full batch are used and the summed gradients equal those of one big batch.
    """
    amp = autocast_context(cfg.precision, device)
    caption_ids = torch.cat([b.caption_ids for b in micro]) if cfg.multi_positive else None

    def loss_fn(image, text):
        return contrastive_loss(image, text, model.geometry, model.logit, model.logit_scale, model.curvature,
                                entailment_weight=cfg.entailment_weight, min_radius=min_radius,
                                caption_ids=caption_ids, local_loss=cfg.local_loss,
                                gather_with_grad=cfg.gather_with_grad)

    if len(micro) == 1:
        with amp:
            image, text = _features(train_model, micro[0])
        out = loss_fn(image, text)
        out.total.backward()
        return out, image.detach(), text.detach()

    with torch.no_grad(), amp:
        cached = [_features(train_model, b) for b in micro]
    images = [c[0] for c in cached]
    texts = [c[1] for c in cached]
    out = None
    for j, b in enumerate(micro):
        sync = train_model.no_sync() if isinstance(train_model, DistributedDataParallel) and j < len(micro) - 1 \
            else nullcontext()
        with sync:
            with amp:
                image_j, text_j = _features(train_model, b)
            image = torch.cat(images[:j] + [image_j] + images[j + 1:])
            text = torch.cat(texts[:j] + [text_j] + texts[j + 1:])
            out = loss_fn(image, text)
            out.total.backward()
    return out, torch.cat(images), torch.cat(texts)
