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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import open_clip
import torch
from torch import nn

from euclip import geometry as geom
from euclip.configs import build_towers

CURVATURE_RANGE = (0.1, 10.0)


@dataclass
class ModelConfig:
    """What defines a GeometricCLIP (saved in checkpoints; see ``euclip train --help`` for each field)."""

    model: str = "tiny"
    geometry: str = "euclidean"
    logit: str = "squared"
    final_ln: bool = False
    init_logit_scale: float = 0.0  # log t at initialisation
    max_logit_scale: float = 100.0  # t is clamped to [1, max_logit_scale]
    curvature: float = 1.0  # initial c of the hyperbolic geometry
    learn_curvature: bool = True
    image_size: int | None = None  # None: the model config's own

    def __post_init__(self):
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
        self.towers, self.embed_dim, self.image_size, self.context_length = build_towers(config.model,
                                                                                         config.image_size)
        # OpenCLIP's own logit scale/bias are replaced by the head's; an unused parameter would also
        # break DistributedDataParallel.
        for name in ("logit_scale", "logit_bias"):
            if hasattr(self.towers, name):
                delattr(self.towers, name)
        if not config.final_ln:
            remove_final_layernorms(self.towers, config.model)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if config.geometry == "hyperbolic":
            self.log_curvature = nn.Parameter(torch.tensor(math.log(config.curvature)),
                                              requires_grad=config.learn_curvature)
            init_alpha = math.log(1 / math.sqrt(self.embed_dim))
            self.log_alpha_image = nn.Parameter(torch.tensor(init_alpha))
            self.log_alpha_text = nn.Parameter(torch.tensor(init_alpha))

    @property
    def geometry(self) -> str:
        return self.config.geometry

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
        if self.geometry == "hyperbolic":
            out.update(curvature=self.log_curvature.exp().item(), alpha_image=self.log_alpha_image.exp().item(),
                       alpha_text=self.log_alpha_text.exp().item())
        return out

    def tokenizer(self):
        """OpenCLIP's BPE tokenizer at this model's context length (works offline)."""
        return open_clip.get_tokenizer("ViT-B-32", context_length=self.context_length)

    def config_dict(self) -> dict:
        return asdict(self.config)


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


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; any other name as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str, device: str | torch.device = "cpu") -> GeometricCLIP:
    """Load a trained GeometricCLIP from a checkpoint file or a run directory (its latest checkpoint)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "latest.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}")
    checkpoint = torch.load(p, map_location=device, weights_only=False)
    config = ModelConfig(**checkpoint["config"]["model"])
    model = GeometricCLIP(config).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval()
