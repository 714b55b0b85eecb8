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
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import euclip
from euclip import geometry as geom
from euclip.losses import contrastive_loss
from euclip.model import GeometricCLIP
from euclip.data.batch import Batch
from euclip.train.checkpoint import (find_checkpoint, load_checkpoint, remove_stale_temporaries, rng_state,
                                     save_checkpoint, set_rng_state)
from euclip.train.config import TrainConfig
from euclip.train.data import build_train_data
from euclip.train.distributed import DistInfo, all_gather_rows, barrier, env_world_size, init_distributed
from euclip.train.metrics import MetricsLogger
from euclip.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("euclip.train")


class NonFiniteLossError(RuntimeError):
    """Raised when more non-finite steps (in all, not only in a row) occurred than ``--nonfinite-limit`` allows."""


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


def autocast_context(precision: str, device: torch.device):
    """Mixed precision for the towers; the geometry and the loss turn autocast off and compute in float32."""
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
    ``tensorboard/`` and ``summary.json`` (the main process only). Under ``torchrun`` every process
    calls this; the process group is created here unless the caller already made one.

    Raises:
        ValueError, FileNotFoundError: bad options or data, before any work.
        NonFiniteLossError: more non-finite steps than ``cfg.nonfinite_limit``.
        SystemExit: code 143 after SIGTERM, once a checkpoint of the last finished step is written.
    """
    checkpoint = None
    if cfg.resume:
        path = find_checkpoint(cfg.resume, cfg.output)
        checkpoint = load_checkpoint(path)
        saved = TrainConfig.from_dict(checkpoint["config"])
        if saved.model != cfg.model:
            log.warning("resuming with the checkpoint's model config %s (ignoring %s)", saved.model, cfg.model)
            cfg.model = saved.model
        log.info("resuming from %s at step %d", path, checkpoint["step"])
    cfg.validate(env_world_size())
    owns_group = env_world_size() > 1 and not (dist.is_available() and dist.is_initialized())
    dist_info, device = init_distributed(cfg.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, dist_info, device, checkpoint)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)  # global state: leave it as we found it
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, dist_info: DistInfo, device: torch.device, checkpoint: dict | None) -> dict:
    run_dir = Path(cfg.output)
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the summary's peak_memory_gb is this run's
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = GeometricCLIP(cfg.model).to(device)
    if cfg.precision == "pure_bf16":
        model = model.to(torch.bfloat16)
    if cfg.grad_checkpointing:
        model.towers.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, cfg, device)
    # float16 autocast needs loss scaling, or small gradients flush to zero; bfloat16 has float32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "amp")
    start_step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        if scaler.is_enabled() and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_step = checkpoint["step"]
    torch.manual_seed(cfg.seed + dist_info.rank)  # per-process randomness from here on

    tokenizer = model.tokenizer()
    data = build_train_data(cfg, tokenizer, model.image_size, dist_info, start_step,
                            pin_memory=device.type == "cuda")
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * data.steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    global_batch = cfg.batch_size * cfg.accum_freq * dist_info.world_size
    data_info = {"dataset_type": cfg.dataset_type, "steps_per_epoch": data.steps_per_epoch, "exact": data.exact_resume,
                 "global_batch": global_batch, "world_size": dist_info.world_size, "accum_freq": cfg.accum_freq,
                 "workers": cfg.workers}
    if checkpoint is not None:
        # After building the scheduler: its constructor resets the learning rates, and the optimizer's
        # state holds the ones in force at the checkpoint (scheduler.load_state_dict does not restore them).
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _restore_rng(checkpoint["rng"], dist_info)
        _check_resume_data(checkpoint.get("data", {}), data_info)
    if dist_info.is_main:
        _write_run_metadata(cfg, run_dir)
        for stale in remove_stale_temporaries(run_dir / "checkpoints"):
            log.warning("removed %s, left by a checkpoint write that was interrupted", stale)

    ddp = None
    train_model = model
    if dist_info.distributed:
        ddp = train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.torchcompile:
        train_model = torch.compile(train_model)

    counters = {"skipped_samples": 0, "dropped_samples": 0, "empty_steps": 0, "nonfinite_steps": 0,
                "last_finite_loss": None, "samples_seen": 0}
    counters.update(checkpoint["counters"] if checkpoint else {})
    logger = MetricsLogger(run_dir, enabled=dist_info.is_main, resume_step=start_step if checkpoint else None)
    progress = tqdm(total=total_steps, initial=start_step, desc=f"train {cfg.model.geometry}/{cfg.model.logit}",
                    disable=not (cfg.progress and dist_info.is_main), dynamic_ncols=True)
    last_saved = {"step": start_step if checkpoint else None}

    def state(step: int) -> dict:
        rngs = [rng_state()]
        if dist_info.distributed:
            gathered = [None] * dist_info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "step": step,
                "config": cfg.to_dict(), "rng": rngs, "counters": dict(counters), "data": data_info}

    def save(step: int) -> None:
        s = state(step)  # every process takes part in gathering the RNG states
        if dist_info.is_main:
            save_checkpoint(run_dir / "checkpoints", step, s, keep=cfg.keep_checkpoints)
        last_saved["step"] = step
        barrier()

    batches = iter(data.loader)
    step = start_step
    window_start, window_samples = time.perf_counter(), 0
    train_start = time.perf_counter()
    data_wait = 0.0
    try:
        with _Preemption() as preemption:
            while step < total_steps:
                wait_start = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.accum_freq)]
                data_wait += time.perf_counter() - wait_start
                micro, agreed = _agree_on_batches(micro, preemption.requested, dist_info, device)
                counters["skipped_samples"] += agreed["skipped"]
                counters["dropped_samples"] += agreed["dropped"]
                min_radius = cfg.min_radius_at(step, total_steps)
                entailment_weight = cfg.entailment_weight_at(step)
                trained = False
                if any(len(b) == 0 for b in micro):  # the same on every process: lengths were agreed on
                    # Every sample of a micro-batch was unreadable. The step still counts (and the
                    # scheduler moves on), so that step numbers keep mapping to data positions on resume.
                    counters["empty_steps"] += 1
                    log.warning("step %d: a micro-batch has no readable sample; step skipped", step + 1)
                else:
                    micro = [b.to(device, non_blocking=True) for b in micro]
                    loss_out, image, text = _train_step(train_model, ddp, model, micro, cfg, min_radius,
                                                        entailment_weight, device, scaler)
                    if scaler.is_enabled():
                        scaler.unscale_(optimizer)  # true gradients for the clipping and the norm below
                    values = _step_values(loss_out, model, cfg, dist_info, check_grads=not scaler.is_enabled())
                    loss_value = values["loss"]
                    if not values["finite"]:
                        optimizer.zero_grad(set_to_none=True)
                        if scaler.is_enabled():
                            scaler.update()
                        counters["nonfinite_steps"] += 1
                        what = "loss" if not math.isfinite(loss_value) else "gradient"
                        log.warning("step %d: non-finite %s (loss %s); step skipped (%d of at most %d)", step + 1,
                                    what, loss_value, counters["nonfinite_steps"], cfg.nonfinite_limit)
                        if counters["nonfinite_steps"] > cfg.nonfinite_limit:
                            raise NonFiniteLossError(_nonfinite_message(step + 1, what, loss_value, counters, cfg,
                                                                        run_dir, last_saved["step"]))
                    else:
                        if scaler.is_enabled():
                            scaler.step(optimizer)  # skips the update if the float16 gradients overflowed
                            scaler.update()
                        else:
                            optimizer.step()
                        model.clamp_parameters()
                        trained = True
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                scheduler.step()
                progress.update(1)
                if trained:
                    n_samples = sum(len(b) for b in micro) * dist_info.world_size
                    counters["samples_seen"] += n_samples
                    counters["last_finite_loss"] = loss_value
                    window_samples += n_samples
                    if step % cfg.log_every_steps == 0 or step == total_steps:
                        elapsed = time.perf_counter() - window_start
                        stats = {"step": step, "epoch": (step - 1) // data.steps_per_epoch, "loss": loss_value,
                                 "contrastive": values["contrastive"], "entailment": values["entailment"],
                                 "grad_norm": values["grad_norm"],
                                 "lr": scheduler.get_last_lr()[0], "min_radius": min_radius,
                                 "entailment_weight": entailment_weight,
                                 "samples_per_s": window_samples / max(elapsed, 1e-9), **model.scalars(),
                                 **_embedding_stats(image, text, model), **{k: v.item() for k, v in loss_out.stats.items()},
                                 **{k: counters[k] for k in ("skipped_samples", "dropped_samples", "empty_steps",
                                                             "nonfinite_steps")}}
                        logger.log(stats)
                        progress.set_postfix(loss=f"{loss_value:.3f}", sps=f"{stats['samples_per_s']:.0f}",
                                             t=f"{stats['logit_scale']:.1f}")
                        window_start, window_samples = time.perf_counter(), 0
                preempt = agreed["preempt"] if dist_info.distributed else preemption.requested
                if step % cfg.save_every_steps == 0 or step == total_steps or preempt:
                    save(step)
                if preempt:
                    log.warning("SIGTERM: checkpoint written at step %d; exiting", step)
                    raise SystemExit(143)
    finally:
        progress.close()
        logger.close()
    wall = time.perf_counter() - train_start
    summary = {"steps": step, "final_loss": counters["last_finite_loss"], "train_seconds": wall,
               "samples_per_s": (step - start_step) * global_batch / wall,
               "data_wait_seconds": data_wait, "world_size": dist_info.world_size, "global_batch_size": global_batch,
               **{k: int(counters[k]) for k in ("skipped_samples", "dropped_samples", "empty_steps",
                                                "nonfinite_steps", "samples_seen")},
               **model.scalars(), "run_dir": str(run_dir)}
    if device.type == "cuda":
        summary["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if dist_info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if summary["skipped_samples"]:
            log.warning("skipped %d unreadable samples", summary["skipped_samples"])
    return summary


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


def _take(batch: Batch, n: int) -> Batch:
    if n == len(batch):
        return batch
    return Batch(batch.images[:n], batch.tokens[:n], batch.caption_ids[:n], batch.captions[:n], batch.skipped)


def _agree_on_batches(micro: list[Batch], preempt: bool, dist_info: DistInfo,
                      device: torch.device) -> tuple[list[Batch], dict]:
    """Make the processes agree on micro-batch sizes, skipped-sample counts and preemption, in one all-gather.

    Unreadable samples shrink a process's micro-batch; the feature all-gather needs equal sizes, so
    every process keeps the smallest size (the samples cut off are counted as ``dropped``). Counts are
    summed over processes, so the counters are global and identical everywhere.
    """
    skipped = sum(b.skipped for b in micro)
    if not dist_info.distributed:
        return micro, {"skipped": skipped, "dropped": 0, "preempt": preempt}
    mine = torch.tensor([len(b) for b in micro] + [skipped, int(preempt)], dtype=torch.long, device=device)
    rows = all_gather_rows(mine).cpu()
    a = len(micro)
    sizes = rows[:, :a].min(dim=0).values.tolist()
    agreed = {"skipped": int(rows[:, a].sum()), "dropped": int((rows[:, :a] - rows[:, :a].min(dim=0).values).sum()),
              "preempt": bool(rows[:, a + 1].any())}
    return [_take(b, n) for b, n in zip(micro, sizes)], agreed


def _grad_norm(parameters: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused per-device kernels
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def _step_values(loss_out, model: GeometricCLIP, cfg: TrainConfig, dist_info: DistInfo,
                 check_grads: bool) -> dict:
    """Loss parts averaged over processes, the gradient norm and finiteness, with one collective and one sync.

    With ``--local-loss`` or the entailment loss each process's loss covers its own rows; the average
    over processes is the loss of the global batch, what one process on the whole batch would log.
    Gradients are already averaged by DDP, so their norm is the same on every process (and averaging
    it changes nothing). ``--grad-clip-norm`` clips here; the norm is the one before clipping.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if cfg.grad_clip_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
    else:
        norm = _grad_norm(params)
    total = loss_out.total.detach()
    values = torch.stack([total.double(), loss_out.contrastive.detach().double().to(total.device),
                          loss_out.entailment.detach().double().to(total.device),
                          norm.detach().double().to(total.device)])
    if dist_info.distributed:
        dist.all_reduce(values)
        values = values / dist_info.world_size
    total, contrastive, entailment, grad_norm = values.tolist()
    return {"loss": total, "contrastive": contrastive, "entailment": entailment, "grad_norm": grad_norm,
            "finite": math.isfinite(total) and (math.isfinite(grad_norm) or not check_grads)}


def _nonfinite_message(step: int, what: str, loss_value: float, counters: dict, cfg: TrainConfig, run_dir: Path,
                       last_saved: int | None) -> str:
    where = (f"the last good checkpoint is {run_dir / 'checkpoints' / 'latest.pt'} (step {last_saved}; resume with "
             "--resume latest and e.g. a lower --lr or --grad-clip-norm)" if last_saved is not None
             else "no checkpoint was written yet")
    return (f"step {step}: non-finite {what} (loss {loss_value}); {counters['nonfinite_steps']} non-finite steps "
            f"exceed --nonfinite-limit {cfg.nonfinite_limit}. Last finite loss: {counters['last_finite_loss']}; "
            f"{where}.")


def _model_inputs(batch: Batch, model: GeometricCLIP, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch.images
    if cfg.precision == "pure_bf16":
        images = images.to(torch.bfloat16)
    if images.shape[-1] != model.image_size or images.shape[-2] != model.image_size:
        # Synthetic images rendered small (synthetic_render_size): upsampling on the device is far cheaper
        # than rendering, or moving, full-size images.
        images = F.interpolate(images, size=(model.image_size, model.image_size), mode="bilinear",
                               align_corners=False)
    return images, batch.tokens


def _features(train_model, batch: Batch, model: GeometricCLIP, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return train_model(*_model_inputs(batch, model, cfg))


def _train_step(train_model, ddp: DistributedDataParallel | None, model: GeometricCLIP, micro: list[Batch],
                cfg: TrainConfig, min_radius: float, entailment_weight: float, device: torch.device,
                scaler: torch.amp.GradScaler):
    """Forward and backward over the micro-batches of one optimizer step.

    With ``accum_freq > 1`` the loss is that of the whole accumulated batch (OpenCLIP's scheme):
    the features of every micro-batch are first computed without gradient, then each micro-batch is
    recomputed with gradient and its loss taken against all the cached features, so the negatives
    of the full batch are used and the summed gradients equal those of one big batch. The logit
    scale and the curvature also enter the loss directly, not only through a micro-batch's
    features; that path is differentiated in the last micro-batch only, or their gradients would be
    ``accum_freq`` times too large.
    """
    amp = autocast_context(cfg.precision, device)
    caption_ids = torch.cat([b.caption_ids for b in micro]) if cfg.multi_positive else None

    def loss_fn(image, text, direct_grad: bool = True):
        scale, curvature = model.logit_scale, model.curvature
        if not direct_grad:
            scale = scale.detach()
            curvature = curvature.detach() if isinstance(curvature, torch.Tensor) else curvature
        return contrastive_loss(image, text, model.geometry, model.logit, scale, curvature,
                                entailment_weight=entailment_weight, min_radius=min_radius,
                                caption_ids=caption_ids, local_loss=cfg.local_loss,
                                gather_with_grad=cfg.gather_with_grad)

    if len(micro) == 1:
        with amp:
            image, text = _features(train_model, micro[0], model, cfg)
        out = loss_fn(image, text)
        scaler.scale(out.total).backward()
        return out, image.detach(), text.detach()

    with torch.no_grad(), amp:
        cached = [_features(train_model, b, model, cfg) for b in micro]
    images = [c[0] for c in cached]
    texts = [c[1] for c in cached]
    out = None
    for j, b in enumerate(micro):
        last = j == len(micro) - 1
        # Gradients accumulate locally; DDP all-reduces them once, in the last micro-batch's backward.
        with ddp.no_sync() if ddp is not None and not last else nullcontext():
            with amp:
                image_j, text_j = _features(train_model, b, model, cfg)
            image = torch.cat(images[:j] + [image_j] + images[j + 1:])
            text = torch.cat(texts[:j] + [text_j] + texts[j + 1:])
            out = loss_fn(image, text, direct_grad=last)
            scaler.scale(out.total).backward()
    return out, torch.cat(images), torch.cat(texts)
