"""GeometricCLIP: OpenCLIP's image and text towers plus a geometry head.

The towers come from OpenCLIP (``open_clip.CLIP`` built from any OpenCLIP model config, or from
one of euclip's small CPU configs in :mod:`euclip.configs`). The head maps each tower's output onto
the chosen manifold with :func:`euclip.geometry.project` and holds the learnable scalars:

* ``log_logit_scale``: ``t = exp(log_t)``, clamped to ``[0, ln max_logit_scale]`` after each step;
* hyperbolic only: ``log_curvature`` (``c``, clamped to ``[0.1, 10]``) and per-tower ``log_alpha``
  scales (``α``, initialised at ``1/sqrt(D)``, kept ``<= 1`` like MERU).

The towers' final LayerNorm (vision ``ln_post``, text ``ln_final``) can be removed, the paper's
"no final LayerNorm" switch: a LayerNorm fixes the norm of what the projection sees, which the
Euclidean and hyperbolic geometries would otherwise use to carry information.

Models converted from other code (:mod:`euclip.interop`) may carry two more things in their config:
other towers (``towers="meru"``: MERU's timm ViT and text transformer, architecture in
``tower_config``) and the image normalisation their towers were trained with (``image_mean``,
``image_std``). Every euclip data pipeline feeds images normalised with :data:`PIPELINE_MEAN` /
:data:`PIPELINE_STD`; such a model converts them to its own normalisation at the image tower's input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from euclip import geometry as geom
from euclip.configs import build_towers, default_tokenizer
from euclip.losses.base import HeadScalars
from euclip.options import option
from euclip.runs import CheckpointError, RunDir, checkpoint_path, load_checkpoint_file, newest_intact_checkpoint

CURVATURE_RANGE = (0.1, 10.0)
TOWERS: tuple[str, ...] = ("openclip", "meru")
# What euclip's image transforms produce (euclip.data.transforms.image_transform's defaults): the input
# convention of every GeometricCLIP.
PIPELINE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
PIPELINE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _geometry_names() -> list[str]:
    return list(dict.fromkeys(list(geom.GEOMETRIES) + list(geom.ALIASES)))


@dataclass
class ModelConfig:
    """What defines a GeometricCLIP (saved in checkpoints and in a run's config.json)."""

    model: str = option("tiny", group="model", metavar="NAME",
                        help="towers: a euclip config (tiny, small) or any OpenCLIP model name (ViT-B-16, ...; "
                             "random weights, nothing is downloaded; `euclip models` lists them)")
    geometry: str = option("euclidean", group="geometry", metavar="NAME",
                           help=f"embedding geometry, or a paper-code alias that also sets the logit "
                                f"({', '.join(_geometry_names())})")
    logit: str = option("squared", group="geometry", choices=geom.LOGITS,
                        help="softmax logit: inner product, negative distance or negative squared distance",
                        default_text="squared, or the geometry alias's")
    final_ln: bool = option(False, group="geometry",
                            help="keep the towers' final LayerNorm (vision ln_post, text ln_final)")
    init_logit_scale: float = option(0.0, group="geometry", metavar="LOG_T",
                                     help="initial log t",
                                     default_text="ln(1/0.07) for inner/distance logits, 0 for squared (−1 with the "
                                                  "entailment loss), log 10 with --siglip")
    max_logit_scale: float = option(100.0, group="geometry", help="t is clamped to [1, this]")
    curvature: float = option(1.0, group="geometry", help="initial c of the hyperbolic geometry (curvature −c)")
    learn_curvature: bool = option(True, group="geometry", help="learn c (clamped to [0.1, 10])")
    image_size: int | None = option(None, group="model", help="override the model's image size",
                                    default_text="the model's")
    embed_dim: int | None = option(None, group="model", help="override the model's embedding dimension D",
                                   default_text="the model's (tiny: 128, small: 256)")
    init_logit_bias: float | None = option(None, group="geometry", metavar="B",
                                           help="a learnable logit bias b, initialised here (the sigmoid loss's)",
                                           default_text="none; −10 with --siglip")
    tokenizer: str | None = option(None, group="model", metavar="NAME",
                                   help="the OpenCLIP model name whose tokenizer the text tower reads",
                                   default_text="the model's own (CLIP's BPE for tiny and small)")
    # Other code's towers and image normalisation (euclip.interop); the defaults are euclip's own models.
    towers: str = option("openclip", cli=False, help="'openclip' (OpenCLIP or euclip configs, by `model`) or 'meru'")
    tower_config: dict | None = option(None, cli=False, help="the architecture of non-OpenCLIP towers (MeruArch)")
    image_mean: tuple[float, ...] | None = option(None, cli=False, help="normalisation the towers expect",
                                                  default_text="PIPELINE_MEAN")
    image_std: tuple[float, ...] | None = option(None, cli=False, help="normalisation the towers expect",
                                                 default_text="PIPELINE_STD")

    def __post_init__(self):
        if self.towers not in TOWERS:
            raise ValueError(f"unknown towers {self.towers!r}; valid: {', '.join(TOWERS)}")
        if self.towers != "openclip" and not self.tower_config:
            raise ValueError(f"towers={self.towers!r} needs a tower_config (its architecture)")
        if self.tokenizer is None:
            # Resolved here, so that config.json and checkpoints record the tokenizer the run was trained with.
            self.tokenizer = default_tokenizer(self.model) if self.towers == "openclip" else "ViT-B-32"
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("give image_mean and image_std together (or neither)")
        if self.image_mean is not None:
            # JSON round trips give lists; tuples keep configs comparable with ==.
            self.image_mean, self.image_std = tuple(map(float, self.image_mean)), tuple(map(float, self.image_std))
            if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
                raise ValueError(f"image_mean and image_std need 3 values (std > 0), got {self.image_mean}, "
                                 f"{self.image_std}")
        geom.check_geometry(self.geometry)
        geom.check_logit(self.logit)
        if self.max_logit_scale < 1:
            raise ValueError(f"max_logit_scale must be >= 1, got {self.max_logit_scale}")
        lo, hi = CURVATURE_RANGE
        if not lo <= self.curvature <= hi:
            raise ValueError(f"curvature must lie in [{lo}, {hi}], got {self.curvature}")


class GeometricCLIP(nn.Module):
    """Two OpenCLIP towers and a geometry head.

    ``forward(images, tokens)`` returns ``(image_embeddings, text_embeddings)``, each ``(B, D)``, on
    the manifold (hyperbolic: space components).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.towers == "meru":
            from euclip.interop.meru_towers import build_meru_towers

            if not config.final_ln:
                raise ValueError("MERU's towers keep their final LayerNorms: use final_ln=True with towers='meru'")
            self.towers, self.embed_dim, self.image_size, self.context_length = build_meru_towers(config.tower_config)
        else:
            self.towers, self.embed_dim, self.image_size, self.context_length = build_towers(
                config.model, config.image_size, config.embed_dim)
        # OpenCLIP's own logit scale/bias are replaced by the head's; an unused parameter would also
        # break DistributedDataParallel.
        for name in ("logit_scale", "logit_bias"):
            if hasattr(self.towers, name):
                delattr(self.towers, name)
        if not config.final_ln and config.towers == "openclip":
            remove_final_layernorms(self.towers, config.model)
        self._normalization_hook = None
        if config.image_mean is not None:
            self.set_image_normalization(config.image_mean, config.image_std)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if config.geometry == "hyperbolic":
            self.log_curvature = nn.Parameter(torch.tensor(math.log(config.curvature)),
                                              requires_grad=config.learn_curvature)
            init_alpha = math.log(1 / math.sqrt(self.embed_dim))
            self.log_alpha_image = nn.Parameter(torch.tensor(init_alpha))
            self.log_alpha_text = nn.Parameter(torch.tensor(init_alpha))
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self._tokenizer = None

    @property
    def geometry(self) -> str:
        return self.config.geometry

    def set_image_normalization(self, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> None:
        """Make the image tower see ``(pixel − mean) / std`` (``None``: :data:`PIPELINE_MEAN`/``STD``, as built).

        The model's inputs stay euclip-normalised (:data:`PIPELINE_MEAN`, :data:`PIPELINE_STD`); a forward
        pre-hook on the image tower maps them, per channel, to what the towers were trained with. Recorded
        in ``config.image_mean``/``image_std``, so checkpoints carry it.
        """
        if self._normalization_hook is not None:
            self._normalization_hook.remove()
            self._normalization_hook = None
        self.config.image_mean = None if mean is None else tuple(map(float, mean))
        self.config.image_std = None if std is None else tuple(map(float, std))
        if mean is not None and (self.config.image_mean, self.config.image_std) != (PIPELINE_MEAN, PIPELINE_STD):
            self._normalization_hook = self.towers.visual.register_forward_pre_hook(
                InputRenormalization(self.config.image_mean, self.config.image_std))

    @property
    def logit(self) -> str:
        return self.config.logit

    @property
    def logit_scale(self) -> torch.Tensor:
        """``t = exp(log_t)``, the multiplier of the logits."""
        return self.log_logit_scale.exp()

    @property
    def curvature(self) -> torch.Tensor | float:
        """``c`` (a 0-d tensor with gradient) for the hyperbolic geometry, else 1.0 (unused)."""
        return self.log_curvature.exp() if self.geometry == "hyperbolic" else 1.0

    def head_scalars(self) -> HeadScalars:
        """The learnable scalars a loss reads (with gradient): logit scale, curvature, logit bias."""
        return HeadScalars(self.logit_scale, self.curvature, getattr(self, "logit_bias", None))

    def to_manifold(self, features: torch.Tensor, tower: str) -> torch.Tensor:
        """Map a tower's ``(B, D)`` outputs onto the manifold (MERU's α scaling first for hyperbolic)."""
        return geom.project(self.tangent_features(features, tower), self.geometry, self.curvature)

    def tangent_features(self, features: torch.Tensor, tower: str) -> torch.Tensor:
        """The scaled tower outputs ``α f`` before the exponential map (hyperbolic), else the plain outputs.

        Zero-shot prototypes average these (MERU's convention) before mapping to the manifold.
        """
        if self.geometry == "hyperbolic":
            log_alpha = self.log_alpha_image if tower == "image" else self.log_alpha_text
            return features.float() * log_alpha.exp()
        return features

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_manifold(self.towers.encode_image(images), "image")

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.to_manifold(self.towers.encode_text(tokens), "text")

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens)

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Keep the learnable scalars in range; call after every optimizer step."""
        self.log_logit_scale.clamp_(0, math.log(self.config.max_logit_scale))
        if self.geometry == "hyperbolic":
            self.log_curvature.clamp_(math.log(CURVATURE_RANGE[0]), math.log(CURVATURE_RANGE[1]))
            self.log_alpha_image.clamp_(max=0)
            self.log_alpha_text.clamp_(max=0)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters excluded from weight decay: gains, biases and the head's scalars.

        Explicit by shape (every parameter with fewer than 2 dimensions), not by name matching: that
        covers LayerNorm/GroupNorm gains and biases, linear biases, class embeddings, the logit scale,
        the curvature and the α scales. (MERU's config meant to exclude the last three but its code
        decays them.)
        """
        return {name for name, p in self.named_parameters() if p.ndim < 2}

    def scalars(self) -> dict[str, float]:
        """The head's learnable scalars, for logging."""
        out = {"logit_scale": self.logit_scale.item()}
        if hasattr(self, "logit_bias"):
            out["logit_bias"] = self.logit_bias.item()
        if self.geometry == "hyperbolic":
            out.update(curvature=self.log_curvature.exp().item(), alpha_image=self.log_alpha_image.exp().item(),
                       alpha_text=self.log_alpha_text.exp().item())
        return out

    def tokenizer(self):
        """The tokenizer OpenCLIP names for the model (``config.tokenizer``), at the text tower's context length.

        Built once per model. OpenCLIP's BPE tokenizer works offline; models whose OpenCLIP config names a
        Hugging Face tokenizer need it in the local Hugging Face cache.
        """
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.config.tokenizer, context_length=self.context_length)
        return self._tokenizer

    def config_dict(self) -> dict:
        return asdict(self.config)


class InputRenormalization:
    """Forward pre-hook: images normalised with ``PIPELINE_MEAN``/``STD`` → normalised with ``mean``/``std``.

    ``(p − m) / s = x · (S / s) + (M − m) / s`` for ``x = (p − M) / S``: one affine map per channel on the
    ``(B, 3, H, W)`` input. A class (not a closure) so models with the hook still pickle and deep-copy.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.scale = tuple(ps / s for ps, s in zip(PIPELINE_STD, std))
        self.shift = tuple((pm - m) / s for pm, m, s in zip(PIPELINE_MEAN, mean, std))

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        scale = torch.tensor(self.scale, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        shift = torch.tensor(self.shift, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (torch.addcmul(shift, x, scale), *rest)


def remove_final_layernorms(towers: nn.Module, model_name: str) -> None:
    """Replace the vision ``ln_post`` and text ``ln_final`` LayerNorms by identities."""
    visual = towers.visual
    text = getattr(towers, "text", towers)  # CustomTextCLIP keeps its text tower in .text
    missing = [where for where, owner, attr in (("vision ln_post", visual, "ln_post"), ("text ln_final", text, "ln_final"))
               if not isinstance(getattr(owner, attr, None), nn.LayerNorm)]
    if missing:
        raise ValueError(f"model {model_name!r} has no final LayerNorm to remove ({', '.join(missing)}); "
                         "use --final-ln, or a ViT-based model")
    visual.ln_post = nn.Identity()
    text.ln_final = nn.Identity()


def check_device(name: str, flag: str = "--device") -> str:
    """``name`` if it is ``auto`` or a device this machine has; else a ValueError naming ``flag`` (before any work:
    torch would fail later, deep inside, with a traceback)."""
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA GPU is available here (torch {torch.__version__}"
                             f"{'' if torch.version.cuda else ', built without CUDA'}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: MPS is not available here; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {name}: euclip runs on cpu, cuda and mps devices, not {device.type!r}")
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; any other name as ``torch.device`` reads it (checked:
    :func:`check_device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(name))


def _load_native_or_foreign(path: Path, device: str | torch.device) -> object:
    """The loaded checkpoint ``path`` names; a damaged one is named, with the run's newest intact one if any.

    A run folder's damaged latest checkpoint is not silently replaced by an older one: results would be recorded
    under a checkpoint that was not evaluated. The error says which one to name instead.
    """
    file = checkpoint_path(path)
    try:
        return load_checkpoint_file(file, map_location=device)
    except CheckpointError as e:
        intact = newest_intact_checkpoint(RunDir.of(file), exclude=file)
        if intact is None:
            raise
        raise CheckpointError(f"{e}; the newest intact checkpoint is {intact}: name it instead") from e


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GeometricCLIP:
    """Load a GeometricCLIP, in eval mode, from a run directory (its latest checkpoint) or a checkpoint file.

    This is the one model-loading path of every command. Native euclip checkpoints hold ``{"model": state_dict,
    "config": {"model": ModelConfig fields, ...}}``; any other file (or a run directory of another code: the
    paper's OpenCLIP fork, MERU) is detected and converted by :func:`euclip.interop.load_checkpoint`.
    """
    p = Path(path)
    if p.is_dir() and not RunDir(p).has_checkpoint():
        from euclip.interop import load_checkpoint  # the run directory of another code (OpenCLIP's, MERU's)

        return load_checkpoint(p).to(device).eval()
    checkpoint = _load_native_or_foreign(p, device)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict)
            and "model" in checkpoint["config"]):
        from euclip.interop import load_checkpoint  # another code's checkpoint: detect and convert it

        return load_checkpoint(p, loaded=checkpoint).to(device).eval()
    model = GeometricCLIP(ModelConfig(**checkpoint["config"]["model"])).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval()
