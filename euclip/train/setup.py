"""Building what a training run needs, once: the model, its wrappers, the loss, the optimizer, the data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from euclip.data.sources import StreamPosition, TrainStream, get_source
from euclip.losses import Loss, build_loss
from euclip.model import GeometricCLIP
from euclip.runs import RunDir
from euclip.train.config import TrainConfig
from euclip.train.distributed import DistInfo
from euclip.train.optim import build_optimizer, build_scheduler
from euclip.train.precision import needs_loss_scaling, parameter_dtype

log = logging.getLogger("euclip.train")


@dataclass
class Trainer:
    """The parts of one run. ``model`` is the plain module (state, scalars); ``train_model`` what is called
    in the step (DDP and/or ``torch.compile`` around ``model``); ``ddp`` the DDP wrapper, if any."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    run: RunDir
    model: GeometricCLIP
    train_model: torch.nn.Module
    ddp: DistributedDataParallel | None
    loss: Loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    data: TrainStream
    total_steps: int
    start_step: int

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.accum_freq * self.dist.world_size

    def data_info(self) -> dict:
        """What the sample order depends on, saved in checkpoints to warn when a resume changes it."""
        return {"dataset_type": self.cfg.dataset_type, "steps_per_epoch": self.data.steps_per_epoch, "exact": True,
                "global_batch": self.global_batch, "world_size": self.dist.world_size,
                "accum_freq": self.cfg.accum_freq, "workers": self.cfg.workers}


def prepare_process(cfg: TrainConfig, device: torch.device) -> None:
    """Process-wide settings of a run: deterministic algorithms, the peak-memory counter."""
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the summary's peak_memory_gb is this run's


def build_model(cfg: TrainConfig, device: torch.device, pretrained: bool = True) -> GeometricCLIP:
    """The model with ``cfg.seed``'s initial weights (identical on every process and in every paired run), or its
    towers from ``--pretrained`` (OpenCLIP weights; ``pretrained=False`` when a checkpoint will replace them)."""
    torch.manual_seed(cfg.seed)
    model = GeometricCLIP(cfg.model)
    if cfg.pretrained and pretrained:
        from euclip.interop import init_from_openclip

        report = init_from_openclip(model, cfg.pretrained)  # also sets the OpenCLIP image normalisation in cfg.model
        log.info("towers from %s: %d tensors (dropped: %s)", cfg.pretrained, report["loaded"],
                 ", ".join(report["dropped"]) or "none")
    model = model.to(device=device, dtype=parameter_dtype(cfg.precision))
    if cfg.grad_checkpointing:
        model.towers.set_grad_checkpointing(True)
    return model


def wrap_model(model: GeometricCLIP, cfg: TrainConfig, dist_info: DistInfo,
               device: torch.device) -> tuple[torch.nn.Module, DistributedDataParallel | None]:
    """DistributedDataParallel under torchrun, then ``torch.compile`` if asked."""
    ddp = None
    train_model: torch.nn.Module = model
    if dist_info.distributed:
        ddp = train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.torchcompile:
        train_model = torch.compile(train_model)
    return train_model, ddp


def build_trainer(cfg: TrainConfig, dist_info: DistInfo, device: torch.device, start_step: int) -> Trainer:
    """Every part of the run, its data positioned at ``start_step`` (raises on bad data before any training)."""
    model = build_model(cfg, device, pretrained=start_step == 0)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_loss_scaling(cfg.precision))
    torch.manual_seed(cfg.seed + dist_info.rank)  # per-process randomness from here on
    position = StreamPosition(dist_info.rank, dist_info.world_size, start_step, pin_memory=device.type == "cuda")
    data = get_source(cfg.dataset_type).train_stream(cfg.data_options(), model.tokenizer(), model.image_size, position)
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * data.steps_per_epoch
    train_model, ddp = wrap_model(model, cfg, dist_info, device)
    loss = build_loss(cfg.loss, model.geometry, model.logit, local_loss=cfg.local_loss,
                      gather_with_grad=cfg.gather_with_grad, multi_positive=cfg.multi_positive,
                      block_size=cfg.loss_block_rows())
    return Trainer(cfg, dist_info, device, RunDir(cfg.output), model, train_model, ddp, loss, optimizer,
                   build_scheduler(optimizer, cfg, total_steps), scaler, data, total_steps, start_step)
