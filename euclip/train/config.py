"""The trainer's typed configuration: flags are parsed into this once, at the edge (the CLI)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from euclip import geometry as geom
from euclip.configs import check_model
from euclip.model import ModelConfig
from euclip.presets import PRESETS, check_preset, default_init_logit_scale
from euclip.train.distributed import env_world_size

DATASET_TYPES = ("synthetic", "csv", "webdataset")
SYNTHETIC_EPOCH = 50_000  # synthetic samples per epoch without --train-num-samples
PRECISIONS = ("fp32", "amp_bf16", "amp", "pure_bf16")


@dataclass
class TrainConfig:
    # Run
    output: str = "runs/run"  # run directory: config, checkpoints, metrics, TensorBoard, results
    seed: int = 0
    device: str = "auto"  # auto: cuda if available (the local rank's GPU under torchrun), else cpu
    # Data
    dataset_type: str = "synthetic"
    train_data: str | None = None
    val_data: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "caption"
    csv_separator: str = "\t"
    train_num_samples: int | None = None  # webdataset: samples per epoch; synthetic: epoch length
    synthetic_render_size: int | None = None  # render synthetic images this big, resize on the device (GPU runs)
    synthetic_caption_levels: tuple[float, ...] | None = None  # frequency of caption levels 0..4; None: the default
    dataset_resampled: bool = False
    workers: int = 2
    batch_size: int = 128  # per process
    # Schedule
    epochs: int | None = None
    steps: int | None = None  # overrides epochs
    lr: float = 5e-4
    wd: float = 0.2
    warmup: int = 100
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float | None = None
    accum_freq: int = 1
    # Performance
    precision: str = "fp32"
    torchcompile: bool = False
    grad_checkpointing: bool = False
    local_loss: bool = False
    gather_with_grad: bool = False
    deterministic: bool = False
    # Geometry and losses
    preset: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    entailment_weight: float = 0.0
    entailment_warmup: int = 0  # steps over which the entailment weight ramps linearly from 0 (0: full from the start)
    min_radius: float = 0.1  # K at the start of training
    min_radius_final: float | None = None  # K at the end (linear schedule); None: constant
    multi_positive: bool = True  # identical captions in a batch are shared positives, not negatives
    # Bookkeeping
    save_every_steps: int = 500
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    eval_every_epochs: int = 1
    zeroshot_samples: int = 2000  # synthetic test-split size for the end-of-run zero-shot evaluation
    nonfinite_limit: int = 5  # non-finite steps skipped before the run stops
    resume: str | None = None
    progress: bool = True

    def validate(self, world_size: int | None = None) -> "TrainConfig":
        """Check every option before any work is done; errors name the option and the valid choices.

        Args:
            world_size: the number of processes the run will have; default: ``WORLD_SIZE`` (torchrun sets
                it). Some combinations (``--local-loss`` without ``--gather-with-grad``) are only wrong with several.
        """
        world_size = env_world_size() if world_size is None else world_size
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"unknown dataset type {self.dataset_type!r}; valid types: {', '.join(DATASET_TYPES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.dataset_type != "synthetic":
            if not self.train_data:
                raise ValueError(f"--train-data is required with --dataset-type {self.dataset_type}")
            if self.dataset_type == "csv" and not Path(self.train_data).is_file():
                raise FileNotFoundError(f"--train-data: no such file: {self.train_data}")
            if self.dataset_type == "webdataset":
                from euclip.data.wds import expand_shards

                expand_shards(self.train_data)  # names missing local shards (FileNotFoundError)
                if not self.train_num_samples:
                    raise ValueError("--train-num-samples is required with --dataset-type webdataset (it defines "
                                     "an epoch)")
        for name in ("batch_size", "accum_freq", "save_every_steps", "log_every_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "nonfinite_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.train_num_samples is not None and self.train_num_samples < 1:
            raise ValueError(f"--train-num-samples must be >= 1, got {self.train_num_samples}")
        if self.synthetic_render_size is not None and self.synthetic_render_size < 8:
            raise ValueError(f"--synthetic-render-size must be >= 8, got {self.synthetic_render_size}")
        if self.synthetic_caption_levels is not None:
            from euclip.data.synthetic import check_level_probs

            try:
                check_level_probs(self.synthetic_caption_levels)
            except ValueError as exn:
                raise ValueError(f"--synthetic-caption-levels: {exn}") from None
        if self.steps is None and self.epochs is None:
            raise ValueError("give --steps or --epochs")
        if self.steps is not None and self.steps < 1 or self.epochs is not None and self.epochs < 1:
            raise ValueError("--steps and --epochs must be >= 1")
        if self.dataset_type == "synthetic":
            size = self.train_num_samples or SYNTHETIC_EPOCH
            global_batch = self.batch_size * world_size * self.accum_freq
            if global_batch > size:
                raise ValueError(f"the global batch ({self.batch_size} per process × {world_size} process(es) × "
                                 f"{self.accum_freq} accumulated = {global_batch}) is larger than the synthetic "
                                 f"epoch (--train-num-samples {size})")
        if world_size > 1 and self.local_loss and not self.gather_with_grad:
            # Each process's loss uses the other processes' features as negatives; without a differentiable
            # gather the gradients of those terms are lost (OpenCLIP allows it; the result is not the
            # gradient of the global loss). Non-local loss without the gather is made exact in the loss.
            raise ValueError("--local-loss needs --gather-with-grad with several processes: without it the "
                             "gradient misses the terms of the other processes' rows (use both, or neither)")
        if self.entailment_warmup < 0:
            raise ValueError(f"--entailment-warmup must be >= 0, got {self.entailment_warmup}")
        if self.entailment_weight < 0:
            raise ValueError(f"--entailment-weight must be >= 0, got {self.entailment_weight}")
        if self.entailment_weight > 0 and self.model.geometry not in geom.CONE_GEOMETRIES:
            raise ValueError(f"the entailment loss needs a geometry with cones ({', '.join(geom.CONE_GEOMETRIES)}), "
                             f"not {self.model.geometry!r}")
        if self.min_radius <= 0 or (self.min_radius_final is not None and self.min_radius_final <= 0):
            raise ValueError("--min-radius must be positive")
        check_model(self.model.model)
        return self

    def entailment_weight_at(self, step: int) -> float:
        """The entailment weight of step ``step`` (0-based): a linear ramp over ``entailment_warmup`` steps."""
        if self.entailment_warmup <= 0:
            return self.entailment_weight
        return self.entailment_weight * min((step + 1) / self.entailment_warmup, 1.0)

    def min_radius_at(self, step: int, total_steps: int) -> float:
        """Linear schedule from ``min_radius`` to ``min_radius_final`` (a small K early was unstable)."""
        if self.min_radius_final is None or total_steps <= 1:
            return self.min_radius
        frac = min(step / (total_steps - 1), 1.0)
        return self.min_radius + frac * (self.min_radius_final - self.min_radius)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        model = ModelConfig(**data.pop("model", {}))
        known = {f.name for f in fields(cls)}
        return cls(model=model, **{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


MODEL_FIELDS = {f.name for f in fields(ModelConfig)}

def resolve_config(explicit: dict) -> TrainConfig:
    """Build a TrainConfig from explicitly given options (``None`` = not given), a preset and defaults.

    Precedence: explicit flags > the preset > per-logit defaults > the dataclass defaults. The
    geometry may be a paper-code alias (``euclidean-squared``); ``init_logit_scale`` defaults to the
    paper's value for the chosen logit.
    """
    given = {k: v for k, v in explicit.items() if v is not None}
    merged: dict = {}
    if given.get("preset"):
        merged.update(PRESETS[check_preset(given["preset"])])
    merged.update(given)
    if "geometry" in merged:
        # An explicit --geometry (maybe an alias) brings its own logit unless --logit is given too.
        logit = given.get("logit") if "geometry" in given else merged.get("logit")
        merged["geometry"], merged["logit"] = geom.resolve(merged["geometry"], logit)
    if "init_logit_scale" not in merged:
        merged["init_logit_scale"] = default_init_logit_scale(merged.get("logit", ModelConfig.logit),
                                                              merged.get("entailment_weight", 0.0))
    model = ModelConfig(**{k: merged.pop(k) for k in list(merged) if k in MODEL_FIELDS})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(merged) - known
    if unknown:
        raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
    return TrainConfig(model=model, **merged).validate()
