"""The trainer's typed configuration: flags are parsed into this once, at the edge (the CLI).

Every option is declared once, with its help, group and default (:func:`euclip.options.option`);
``euclip train --help`` is generated from these declarations and :class:`~euclip.model.ModelConfig`'s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from euclip import geometry as geom
from euclip.configs import check_model
from euclip.data.sources import SYNTHETIC_EPOCH, TrainDataOptions, get_source, source_names
from euclip.losses import LOSSES, check_loss
from euclip.model import ModelConfig, check_device
from euclip.options import option
from euclip.presets import PRESETS, check_preset, default_init_logit_scale
from euclip.train.distributed import env_world_size
from euclip.train.precision import PRECISIONS, check_precision

__all__ = ["TrainConfig", "resolve_config", "SYNTHETIC_EPOCH", "SIGLIP_INIT", "FIXED_ON_RESUME"]

# OpenCLIP's --siglip initialisation: t = 10, b = −10 (SigLIP's paper).
SIGLIP_INIT = {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}

FLOAT32_MAX = 3.4028234663852886e38


def _train_sources() -> list[str]:
    return source_names(training=True)


def _eval_sources() -> list[str]:
    return [n for n in source_names() if n != "folder"]


@dataclass
class TrainConfig:
    # Geometry and losses (beside ModelConfig's geometry fields)
    preset: str | None = option(None, group="geometry", choices=tuple(PRESETS),
                                help="the paper's headline models in one word: clip (elliptic, cosine, final LN), "
                                     "euclip (euclidean, negative squared distance, no final LN), meru (hyperbolic, "
                                     "negative distance, final LN, entailment 0.2); explicit flags override it",
                                default_text="none: the geometry flags' defaults, which are EuCLIP's")
    model: ModelConfig = field(default_factory=ModelConfig)  # its geometry flags come right after --preset
    loss: str = option("contrastive", group="geometry", choices=lambda: tuple(LOSSES),
                       help="image-text loss: contrastive (CLIP's InfoNCE) or sigmoid (SigLIP's; see --siglip)")
    entailment_weight: float = option(0.0, group="geometry", help="weight of the entailment-cone loss (MERU: 0.2)",
                                      default_text="0, off; the meru preset's 0.2")
    entailment_warmup: int = option(0, group="geometry", metavar="STEPS",
                                    help="ramp the entailment weight linearly from 0 over this many steps (0: full "
                                         "weight from the first step, MERU's recipe; short small-batch runs can "
                                         "collapse every caption onto the origin, where each cone is a half-space)")
    min_radius: float = option(0.1, group="geometry", metavar="K",
                               help="K, the entailment cones' minimum radius (at the start of training)")
    min_radius_final: float | None = option(None, group="geometry", metavar="K",
                                            help="K at the end of training (a linear schedule, e.g. 0.3 → 0.1)",
                                            default_text="constant K")
    multi_positive: bool = option(True, group="geometry",
                                  help="identical captions in a batch are shared positives (off: plain InfoNCE "
                                       "treats them as negatives)")
    pretrained: str | None = option(None, group="model", metavar="FILE",
                                    help="initialise the towers from an OpenCLIP checkpoint file (of --model's config) "
                                         "and fine-tune them into this run's geometry; its final LayerNorms are "
                                         "dropped without --final-ln, and its logit scale is kept for cosine models "
                                         "only")
    # Run
    output: str = option("runs/run", group="run", flags=("--output", "--logs"), metavar="DIR",
                         help="run directory: config, checkpoints, metrics, TensorBoard, results",
                         default_text="runs/<preset or geometry>")
    seed: int = option(0, group="run", help="seeds the initial weights, the data order and the augmentations")
    device: str = option("auto", group="run", help="auto (CUDA if available: the local rank's GPU under torchrun), "
                                                   "cpu, cuda")
    resume: str | None = option(None, group="run", metavar="WHAT",
                                help="continue a run: 'latest' (in --output), a run directory or a checkpoint file; "
                                     "flags not given are the run's, optimisation and bookkeeping flags may change "
                                     "(logged), geometry and model flags may not")
    overwrite: bool = option(False, group="run",
                             help="start a new run in an --output folder that holds one, deleting its files first "
                                  "(without it, a used folder is refused)")
    progress: bool = option(True, group="run", help="a progress bar")
    # Data
    dataset_type: str = option("synthetic", group="data", choices=_train_sources,
                               help="synthetic (built in), csv (OpenCLIP's CsvDataset format) or webdataset shards")
    train_data: str | None = option(None, group="data", metavar="PATH",
                                    help="CSV/TSV file, or shard pattern(s) like 'data/{00000..00099}.tar' (several "
                                         "joined with ::)")
    csv_img_key: str = option("filepath", group="data", metavar="COLUMN", help="CSV column of image paths")
    csv_caption_key: str = option("caption", group="data", metavar="COLUMN", help="CSV column of captions")
    csv_separator: str = option("\t", group="data", metavar="SEP", help="CSV column separator")
    train_num_samples: int | None = option(None, group="data", metavar="N",
                                           help="samples per epoch (webdataset: required)",
                                           default_text=f"synthetic: {SYNTHETIC_EPOCH}; csv: the file's rows")
    synthetic_render_size: int | None = option(None, group="data", metavar="PX",
                                               help="synthetic: render images this many pixels wide and resize them "
                                                    "to the model's size on the device (a 224 px ViT on a GPU: 32-64; "
                                                    "the CPU workers cannot draw 224 px images fast enough)",
                                               default_text="the model's image size")
    synthetic_caption_levels: tuple[float, ...] | None = option(
        None, group="data", metavar="P0,P1,P2,P3,P4",
        help="synthetic: relative frequency of the caption levels 0 (\"a shape\"), 1 (family), 2 (shape), "
             "3 (colour + shape), 4 (every attribute)", default_text="0.05,0.1,0.7,0.1,0.05")
    synthetic_color_captions: tuple[float, ...] | None = option(
        None, group="data", metavar="F0[,F1,...]",
        help="synthetic: per epoch, the fraction of level-2 captions that name the colour (\"a red shape\") instead "
             "of the shape; the last value holds for later epochs (the sweep's recipe: 0,0.5 = shapes first)",
        default_text="0: level 2 names the shape")
    dataset_resampled: bool = option(False, group="data",
                                     help="webdataset: draw shards with replacement (an infinite stream)")
    workers: int = option(2, group="data", help="data-loading worker processes per training process")
    batch_size: int = option(128, group="data", help="batch size per process")
    # Validation during training
    val_data: str | None = option(None, group="validation", metavar="PATH",
                                  help="held-out pairs (a CSV/TSV file or shards) for validation during training: "
                                       "the loss and retrieval recall@1/5/10, logged as val/*",
                                  default_text="none, no validation")
    val_dataset_type: str | None = option(None, group="validation", choices=_eval_sources,
                                          help="format of --val-data; 'synthetic' validates on the synthetic test "
                                               "split and needs no --val-data",
                                          default_text="--dataset-type when that reads files, else csv")
    val_every_steps: int | None = option(None, group="validation", metavar="STEPS",
                                         help="validate every this many steps (and at the end)",
                                         default_text="once per epoch and at the end")
    val_num_samples: int | None = option(None, group="validation", metavar="N",
                                         help="validate on at most this many pairs",
                                         default_text="all; synthetic: 1000")
    # Schedule
    epochs: int | None = option(None, group="optimisation", help="training epochs (see --train-num-samples)",
                                default_text="1 unless --steps is given")
    steps: int | None = option(None, group="optimisation", help="total optimizer steps (overrides --epochs)")
    lr: float = option(5e-4, group="optimisation", help="peak learning rate (>= 0)")
    wd: float = option(0.2, group="optimisation", help="AdamW weight decay, >= 0 (never on gains, biases and scalars)")
    warmup: int = option(100, group="optimisation", metavar="STEPS", help="linear warm-up steps, then cosine decay")
    beta1: float = option(0.9, group="optimisation", help="AdamW β1")
    beta2: float = option(0.98, group="optimisation", help="AdamW β2")
    eps: float = option(1e-6, group="optimisation", help="AdamW ε")
    grad_clip_norm: float | None = option(None, group="optimisation", metavar="NORM",
                                          help="clip the global gradient norm", default_text="no clipping")
    accum_freq: int = option(1, group="optimisation", metavar="N",
                             help="micro-batches per optimizer step; the loss uses the whole accumulated batch")
    # Performance
    precision: str = option("fp32", group="performance", choices=PRECISIONS,
                            help="fp32 (use it on CPUs), amp_bf16 on GPUs, amp (float16 + loss scaling), pure_bf16; "
                                 "the geometry and the loss always compute in float32")
    torchcompile: bool = option(False, group="performance", help="torch.compile the model")
    grad_checkpointing: bool = option(False, group="performance",
                                      help="recompute the towers' activations in backward (less memory)")
    local_loss: bool = option(False, group="performance",
                              help="under torchrun: each process computes its own rows against all columns")
    gather_with_grad: bool = option(False, group="performance",
                                    help="differentiable all-gather of features (exact gradients with --local-loss)")
    loss_block_size: int | None = option(None, group="performance", metavar="ROWS",
                                         help="compute the loss in blocks of this many rows, holding one block of "
                                              "the (B, B) logits at a time (bounded memory at huge gathered "
                                              "batches); 0: never block",
                                         default_text="blocks of about 2^23 entries (CPU) / 2^26 (GPU) when "
                                                      "the matrix is larger")
    deterministic: bool = option(False, group="performance", help="torch deterministic algorithms")
    # Bookkeeping
    save_every_steps: int = option(500, group="bookkeeping", metavar="STEPS",
                                   help="checkpoint interval (also at the end, and on SIGTERM, SIGINT or SIGUSR1, "
                                        "to the trainer or its process group)")
    keep_checkpoints: int = option(2, group="bookkeeping", metavar="N", help="step checkpoints kept (the newest)")
    log_every_steps: int = option(10, group="bookkeeping", metavar="STEPS",
                                  help="metrics.jsonl/TensorBoard interval; statistics are read from the device "
                                       "only at these steps")
    zeroshot_samples: int = option(2000, group="bookkeeping", metavar="N",
                                   help="synthetic test samples of the zero-shot evaluation after training")
    nonfinite_limit: int = option(5, group="bookkeeping", metavar="N",
                                  help="non-finite steps skipped before the run stops with an error (0: stop at the "
                                       "first)")

    def validate(self, world_size: int | None = None) -> "TrainConfig":
        """Check every option before any work is done; errors name the option and the valid choices.

        Args:
            world_size: the number of processes the run will have; default: ``WORLD_SIZE`` (torchrun sets
                it). Some combinations (``--local-loss`` without ``--gather-with-grad``) are only wrong with several.
        """
        world_size = env_world_size() if world_size is None else world_size
        check_device(self.device)
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other: --resume continues the run in "
                             "--output, --overwrite deletes it")
        check_precision(self.precision)
        check_loss(self.loss)
        get_source(self.dataset_type).check(self.data_options(), world_size)
        self._check_ranges()
        if self.steps is None and self.epochs is None:
            raise ValueError("give --steps or --epochs")
        if self.steps is not None and self.steps < 1 or self.epochs is not None and self.epochs < 1:
            raise ValueError("--steps and --epochs must be >= 1")
        if world_size > 1 and self.local_loss and not self.gather_with_grad:
            # Each process's loss uses the other processes' features as negatives; without a differentiable
            # gather the gradients of those terms are lost (OpenCLIP allows it; the result is not the
            # gradient of the global loss). Non-local loss without the gather is made exact in the loss.
            raise ValueError("--local-loss needs --gather-with-grad with several processes: without it the "
                             "gradient misses the terms of the other processes' rows (use both, or neither)")
        if self.entailment_weight > 0 and self.model.geometry not in geom.CONE_GEOMETRIES:
            raise ValueError(f"the entailment loss needs a geometry with cones ({', '.join(geom.CONE_GEOMETRIES)}), "
                             f"not {self.model.geometry!r}")
        if LOSSES[self.loss].needs_logit_bias and self.model.init_logit_bias is None:
            raise ValueError(f"--loss {self.loss} needs a logit bias: give --init-logit-bias (or use --siglip)")
        self._check_validation()
        check_model(self.model.model)
        self._check_head()
        if self.pretrained is not None and not self.resume and not Path(self.pretrained).is_file():
            # (A resume loads its towers from the checkpoint, not from --pretrained.)
            raise FileNotFoundError(f"--pretrained: no such file: {self.pretrained}")
        return self

    def loss_block_rows(self) -> int | str | None:
        """``--loss-block-size`` as :class:`euclip.losses.Loss`'s ``block_size``: unset → ``"auto"``, 0 → never."""
        if self.loss_block_size is None:
            return "auto"
        return self.loss_block_size or None

    def _check_ranges(self) -> None:
        for name in ("batch_size", "accum_freq", "save_every_steps", "log_every_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "nonfinite_limit", "entailment_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.loss_block_size is not None and self.loss_block_size < 0:
            raise ValueError(f"--loss-block-size must be >= 0 (0: never block), got {self.loss_block_size}")
        for name in ("train_num_samples", "val_every_steps", "val_num_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.entailment_weight < 0:
            raise ValueError(f"--entailment-weight must be >= 0, got {self.entailment_weight}")
        if self.min_radius <= 0:
            raise ValueError(f"--min-radius must be positive, got {self.min_radius}")
        if self.min_radius_final is not None and self.min_radius_final <= 0:
            raise ValueError(f"--min-radius-final must be positive, got {self.min_radius_final}")
        for name in ("lr", "wd"):
            if not getattr(self, name) >= 0:  # NaN too
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")

    def _check_head(self) -> None:
        """The head's scalars: a logit scale that float32 holds, curvature flags only where there is a curvature."""
        m = self.model
        largest = math.log(FLOAT32_MAX)
        if not (math.isfinite(m.max_logit_scale) and math.log(m.max_logit_scale) < largest):
            raise ValueError(f"--max-logit-scale must be finite in float32 (< {FLOAT32_MAX:.3g}), got "
                             f"{m.max_logit_scale}")
        ceiling = math.log(m.max_logit_scale)
        if not (math.isfinite(m.init_logit_scale) and m.init_logit_scale <= ceiling):
            # exp(100) overflows float32: every logit is inf and no step can train. Above the ceiling, the first
            # step's clamp (to ln --max-logit-scale) would override the value given anyway.
            raise ValueError(f"--init-logit-scale is log t: it must be at most ln(--max-logit-scale "
                             f"{m.max_logit_scale:g}) = {ceiling:.4g} (t = {m.max_logit_scale:g}), got "
                             f"{m.init_logit_scale}")
        if m.geometry != "hyperbolic" and (m.curvature != _MODEL_DEFAULTS["curvature"]
                                           or m.learn_curvature != _MODEL_DEFAULTS["learn_curvature"]):
            raise ValueError(f"--curvature and --no-learn-curvature apply to the hyperbolic geometry only, not "
                             f"{m.geometry!r}")

    def _check_validation(self) -> None:
        if self.validation_spec_kwargs() is not None:
            from euclip.data.sources import DataSpec

            DataSpec(**self.validation_spec_kwargs())  # names a missing file or a bad type now, not mid-run
        elif self.val_every_steps is not None or self.val_num_samples is not None:
            raise ValueError("--val-every-steps / --val-num-samples need --val-data (or --val-dataset-type synthetic)")

    def data_options(self) -> TrainDataOptions:
        """The training-data settings, for :meth:`euclip.data.sources.DataSource.train_stream`."""
        return TrainDataOptions(**{f.name: getattr(self, f.name) for f in fields(TrainDataOptions)})

    def validation_spec_kwargs(self) -> dict | None:
        """The :class:`~euclip.data.sources.DataSpec` fields of the validation data, or ``None`` without validation."""
        kind = self.val_dataset_type or (self.dataset_type if self.dataset_type != "synthetic" else "csv")
        if self.val_data is None and kind != "synthetic":
            return None
        default_n = 1000 if kind == "synthetic" else None
        return dict(dataset_type=kind, data=self.val_data, num_samples=self.val_num_samples or default_n,
                    csv_img_key=self.csv_img_key, csv_caption_key=self.csv_caption_key,
                    csv_separator=self.csv_separator, batch_size=self.batch_size, seed=self.seed)

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

    def resume_changes(self, saved: "TrainConfig") -> list[tuple[str, str, str]]:
        """Check this config against ``saved``, the one a resumed checkpoint was trained with.

        The model and geometry settings (the ``geometry`` and ``model`` groups of ``--help``) define what the weights
        are: a resume cannot change them (half a preset would apply to weights trained under the other half). The
        settings the program fills in itself (image normalisation, towers) are taken from ``saved``; so is the
        preset, a label of settings that are the same. Every other setting takes effect when changed.

        Returns:
            ``(flag, saved value, new value)`` of each setting this resume changes.

        Raises:
            ValueError: model or geometry settings differ, all listed.
        """
        fixed = [(f"{_flag(f)} {_show(getattr(new, f.name))} (the run's: {_show(getattr(old, f.name))})")
                 for new, old, f in self._paired(saved) if f.name in FIXED_ON_RESUME
                 and getattr(new, f.name) != getattr(old, f.name)]
        if fixed:
            raise ValueError(f"--resume: a resumed run cannot change the model or geometry it was trained with: "
                             f"{', '.join(fixed)}. Resume without these flags, or start a new run (another "
                             f"--output, or --overwrite)")
        for f in fields(ModelConfig):
            if not f.metadata.get("cli", True):
                setattr(self.model, f.name, getattr(saved.model, f.name))
        self.preset = saved.preset
        return [(_flag(f), _show(getattr(old, f.name)), _show(getattr(new, f.name)))
                for new, old, f in self._paired(saved) if f.name not in _NOT_SETTINGS
                and getattr(new, f.name) != getattr(old, f.name)]

    def _paired(self, other: "TrainConfig") -> list[tuple[object, object, object]]:
        """``(this config's holder, other's holder, field)`` for every field, ModelConfig's included."""
        own = [(self, other, f) for f in fields(self) if f.name != "model"]
        return own + [(self.model, other.model, f) for f in fields(ModelConfig)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        model = ModelConfig(**data.pop("model", {}))
        known = {f.name for f in fields(cls)}
        for name in ("synthetic_caption_levels", "synthetic_color_captions"):
            if isinstance(data.get(name), list):  # JSON has no tuples
                data[name] = tuple(data[name])
        return cls(model=model, **{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def describe(self) -> str:
        """One line of the settings that define the run's geometry, as resolved (printed before training)."""
        m = self.model
        scale = f"log t {m.init_logit_scale:.3g} (t = {math.exp(m.init_logit_scale):.3g})"
        parts = [f"geometry {m.geometry}", f"logit {m.logit}", f"final LN {'on' if m.final_ln else 'off'}",
                 f"loss {self.loss}", f"entailment {self.entailment_weight:g}"
                 + (f" (K {self.min_radius:g}, warm-up {self.entailment_warmup})" if self.entailment_weight else ""),
                 scale]
        if m.init_logit_bias is not None:
            parts.append(f"bias {m.init_logit_bias:g}")
        if m.geometry == "hyperbolic":
            parts.append(f"c {m.curvature:g} ({'learned' if m.learn_curvature else 'fixed'})")
        return ", ".join(parts)


MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
_MODEL_DEFAULTS = {f.name: f.default for f in fields(ModelConfig)}

# What a resume may not change: the flags of the geometry and model groups (TrainConfig.resume_changes).
FIXED_ON_RESUME = frozenset(
    [f.name for f in fields(ModelConfig) if f.metadata.get("cli", True)]
    + [f.name for f in fields(TrainConfig) if f.metadata.get("group") in ("geometry", "model") and f.name != "preset"])
# Fields that are not settings of the run: where it resumes from, and how its folder is claimed.
_NOT_SETTINGS = frozenset({"resume", "overwrite", "preset"})


def _flag(f) -> str:
    """The command-line flag of config field ``f``."""
    return (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0]


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def resolve_config(explicit: dict, base: TrainConfig | None = None) -> TrainConfig:
    """Build a TrainConfig from explicitly given options (``None`` = not given), a preset and defaults.

    Precedence: explicit flags > ``siglip`` > the preset > per-logit defaults > the dataclass defaults. The
    geometry may be a paper-code alias (``euclidean-squared``; a plain ``euclidean`` is the paper code's
    negative-distance model); ``init_logit_scale`` defaults to the paper's value for the chosen logit.
    ``siglip=True`` is OpenCLIP's ``--siglip``: the sigmoid loss with its initial scale and bias.

    Args:
        base: on ``--resume``, the config the run was trained with: it takes the place of the defaults, so that
            only the options given change (and a change of model or geometry is then refused by the trainer).
    """
    given = {k: v for k, v in explicit.items() if v is not None}
    merged: dict = {}
    if base is not None:
        merged.update({k: v for k, v in base.to_dict().items() if k != "model"}, **base.to_dict()["model"],
                      resume=None, overwrite=False)
    if given.get("preset"):
        merged.update(PRESETS[check_preset(given["preset"])])
    if given.pop("siglip", False):
        merged.update(loss="sigmoid", **SIGLIP_INIT)
    merged.update(given)
    if "geometry" in merged:
        # An explicit --geometry (maybe an alias) brings its own logit unless --logit is given too.
        logit = given.get("logit") if "geometry" in given else merged.get("logit")
        merged["geometry"], merged["logit"] = geom.resolve(merged["geometry"], logit)
    if "init_logit_scale" not in merged:
        merged["init_logit_scale"] = default_init_logit_scale(merged.get("logit", ModelConfig.logit),
                                                              merged.get("entailment_weight", 0.0))
    _check_curvature_flags(given, merged.get("geometry", ModelConfig.geometry))
    model = ModelConfig(**{k: merged.pop(k) for k in list(merged) if k in MODEL_FIELDS})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(merged) - known
    if unknown:
        raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
    return TrainConfig(model=model, **merged).validate()


def _check_curvature_flags(given: dict, geometry: str) -> None:
    """Refuse curvature flags given for a geometry without a curvature (they would be recorded, and do nothing)."""
    flags = (["--curvature"] if "curvature" in given else []) + (
        [f"--{'' if given['learn_curvature'] else 'no-'}learn-curvature"] if "learn_curvature" in given else [])
    if flags and geometry != "hyperbolic":
        verb = "apply" if len(flags) > 1 else "applies"
        raise ValueError(f"{' and '.join(flags)} {verb} to the hyperbolic geometry only, not {geometry!r}")
