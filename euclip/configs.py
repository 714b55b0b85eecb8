"""Tower architectures: euclip's small CPU configs and every OpenCLIP model config.

euclip's configs pair a *hybrid* image tower (a small convolutional stem whose feature map becomes
the tokens of an OpenCLIP ``Transformer``, ending in the final LayerNorm ``ln_post`` and a
projection) with OpenCLIP's text transformer. At 32 px a convolutional stem learns shapes far
faster on a CPU than a pure ViT of the same cost (a probe: a tiny ViT stayed under 30 % shape
accuracy after 3 minutes, a conv tower reached 92 % in 80 s), and the transformer on top keeps the
final LayerNorm that the paper's ``--no-final-ln`` question is about.

Any other name is looked up in OpenCLIP (``ViT-B-16``, ``ViT-B-32``, ``RN50``, ...) and built with
random weights: nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import open_clip
import torch
from open_clip.transformer import LayerNorm, Transformer
from torch import nn


@dataclass(frozen=True)
class HybridVisionCfg:
    image_size: int = 32
    stem_widths: tuple[int, ...] = (32, 64, 96)  # one conv block (two 3×3 convs) each
    stem_strides: tuple[int, ...] = (1, 2, 2)  # the first conv of each block
    pool: str = "mean"  # "mean" of the output tokens, or the class token ("cls")
    width: int = 128  # transformer width
    layers: int = 2
    heads: int = 4


@dataclass(frozen=True)
class TowerConfig:
    embed_dim: int
    vision: HybridVisionCfg
    text: dict = field(default_factory=dict)  # open_clip.CLIPTextCfg fields
    tokenizer: str = "ViT-B-32"  # the OpenCLIP model whose tokenizer the text tower reads (CLIP's BPE)


MODEL_CONFIGS: dict[str, TowerConfig] = {
    # ~1.5 M parameters besides the 49k-token embedding table: the demo's model.
    "tiny": TowerConfig(
        embed_dim=128,
        vision=HybridVisionCfg(image_size=32, stem_widths=(16, 32, 64), stem_strides=(1, 2, 2), width=128, layers=2,
                               heads=4),
        text=dict(context_length=32, width=128, heads=4, layers=2),
    ),
    "small": TowerConfig(
        embed_dim=256,
        vision=HybridVisionCfg(image_size=64, stem_widths=(32, 64, 128, 192), stem_strides=(1, 2, 2, 2), width=256,
                               layers=4, heads=4),
        text=dict(context_length=32, width=256, heads=4, layers=4),
    ),
}


def available_models() -> list[str]:
    """euclip's own configs followed by OpenCLIP's model names."""
    return list(MODEL_CONFIGS) + open_clip.list_models()


def check_model(name: str) -> str:
    if name not in MODEL_CONFIGS and name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}; euclip configs: {', '.join(MODEL_CONFIGS)}; or an OpenCLIP "
                         f"model such as ViT-B-16, ViT-B-32, RN50 (all: {len(open_clip.list_models())}, "
                         "see `euclip models`)")
    return name


def default_tokenizer(name: str) -> str:
    """The OpenCLIP model name whose tokenizer model ``name`` reads (for :func:`open_clip.get_tokenizer`)."""
    return MODEL_CONFIGS[name].tokenizer if name in MODEL_CONFIGS else name


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int):
        # GroupNorm, not BatchNorm: per-sample statistics keep multi-process training identical to one
        # process on the global batch, and evaluation identical to training.
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(8, c_out), nn.GELU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.GELU())


class HybridVisionTower(nn.Module):
    """Conv stem → tokens (+ class token, positions) → OpenCLIP Transformer → ``ln_post`` → projection."""

    def __init__(self, cfg: HybridVisionCfg, output_dim: int):
        super().__init__()
        if len(cfg.stem_widths) != len(cfg.stem_strides):
            raise ValueError("stem_widths and stem_strides must have the same length")
        channels = (3, *cfg.stem_widths)
        self.stem = nn.Sequential(*[ConvBlock(a, b, stride=s)
                                    for a, b, s in zip(channels[:-1], channels[1:], cfg.stem_strides)])
        grid = cfg.image_size // math.prod(cfg.stem_strides)
        self.to_tokens = nn.Linear(cfg.stem_widths[-1], cfg.width)
        scale = cfg.width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, batch_first=True)
        self.ln_post = LayerNorm(cfg.width)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, output_dim))
        self.image_size = cfg.image_size
        if cfg.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {cfg.pool!r}")
        self.pool = cfg.pool

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)  # (B, C, g, g)
        x = self.to_tokens(x.flatten(2).transpose(1, 2))  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(x)
        # Mean pooling gives every conv feature a direct gradient path: on the synthetic shapes it
        # leaves the initial plateau far sooner than a class token.
        pooled = x[:, 1:].mean(1) if self.pool == "mean" else x[:, 0]
        return self.ln_post(pooled) @ self.proj


def build_towers(name: str, image_size: int | None = None,
                 embed_dim: int | None = None) -> tuple[nn.Module, int, int, int]:
    """Build the towers of model ``name`` with random weights.

    Returns:
        ``(towers, embed_dim, image_size, context_length)``; ``towers`` is an ``open_clip.CLIP`` (or
        ``CustomTextCLIP``) whose ``encode_image``/``encode_text`` give the unnormalised features.
    """
    check_model(name)
    if embed_dim is not None and embed_dim < 1:
        raise ValueError(f"--embed-dim must be >= 1, got {embed_dim}")
    if name in MODEL_CONFIGS:
        cfg = MODEL_CONFIGS[name]
        dim = embed_dim or cfg.embed_dim
        vision = cfg.vision if image_size is None else HybridVisionCfg(**{**cfg.vision.__dict__,
                                                                          "image_size": image_size})
        # The placeholder ViT that open_clip.CLIP builds is replaced at once by the hybrid tower.
        placeholder = open_clip.CLIPVisionCfg(layers=1, width=64, head_width=64, patch_size=vision.image_size,
                                              image_size=vision.image_size)
        towers = open_clip.CLIP(dim, placeholder, open_clip.CLIPTextCfg(**cfg.text))
        towers.visual = HybridVisionTower(vision, dim)
        return towers, dim, vision.image_size, towers.context_length
    kwargs = {"force_image_size": image_size} if image_size else {}
    if embed_dim is not None:
        kwargs["embed_dim"] = embed_dim  # OpenCLIP's model_kwargs override the config's
    towers = open_clip.create_model(name, pretrained=None, **kwargs)
    size = towers.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return towers, embed_dim or open_clip.get_model_config(name)["embed_dim"], int(size), towers.context_length
