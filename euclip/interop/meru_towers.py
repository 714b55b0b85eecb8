"""MERU's towers (facebookresearch/meru, also HyCoCLIP's), with MERU's parameter names.

* Image: a timm Vision Transformer (``timm.create_model(arch, num_classes=0, global_pool="token",
  class_token=True, norm_layer=nn.LayerNorm)``: LayerNorm eps 1e-5, no pre-LayerNorm, a biased patch
  embedding, a fixed 2-D sin-cos ``pos_embed`` (MoCo v3's), the final ``norm``), then ``visual_proj``.
  MERU's ``vit_small_mocov3_patch16_224`` is timm's ViT-S/16 with 12 heads instead of 6.
* Text: MERU's ``TransformerTextEncoder`` (``token_embed``, ``posit_embed``, pre-LN ``resblocks`` made of
  ``nn.MultiheadAttention`` + a GELU MLP, causal mask, ``ln_final``); the feature at the ``[EOS]`` token (the
  largest token id) goes through ``textual_proj``. The blocks are OpenCLIP's ``ResidualAttentionBlock``,
  whose parameter names and maths are those of MERU's (both come from OpenAI's CLIP).

``MeruTowers.state_dict()`` has MERU's key names (``visual.*``, ``textual.*``, ``visual_proj.weight``,
``textual_proj.weight``), so a MERU checkpoint loads by prefixing ``towers.``. MERU's own input
normalisation (its ``pixel_mean``/``pixel_std`` buffers, applied to ``[0, 1]`` pixels) is the
GeometricCLIP's ``image_mean``/``image_std``, not part of these towers.

MERU's tokenizer (``meru/tokenizer.py``) is OpenCLIP's: the same BPE vocabulary file, merges, text cleaning and
token pattern, with ``[SOS]``/``[EOS]`` and the same truncation (keep ``context_length`` tokens, the last one
``[EOS]``). MERU pads a batch of token sequences with zeros to its longest one, euclip's tokenizer to the context
length; with the causal mask the ``[EOS]`` feature never sees the padding, so both give the same features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

__all__ = ["MERU_VIT_ARCHS", "MeruArch", "MeruTextEncoder", "MeruTowers", "build_meru_towers", "build_timm_vit",
           "sincos_pos_embed"]

# MERU's configs train these three image towers: name -> (timm model, overrides). timm knows the last two;
# MERU registers the first with timm itself (ViT-S/16 with 12 heads, as in MoCo v3).
MERU_VIT_ARCHS: dict[str, tuple[str, dict]] = {
    "vit_small_mocov3_patch16_224": ("vit_small_patch16_224", {"num_heads": 12}),
    "vit_base_patch16_224": ("vit_base_patch16_224", {}),
    "vit_large_patch16_224": ("vit_large_patch16_224", {}),
}


@dataclass
class MeruArch:
    """The architecture of MERU's towers (what MERU's config says, or what the tensor shapes say).

    Attributes:
        visual_arch: MERU's ``model.visual.arch`` (a timm ViT name, or ``vit_small_mocov3_patch16_224``).
        visual_kwargs: timm ``VisionTransformer`` overrides (``embed_dim``, ``depth``, ``num_heads``,
            ``patch_size``, ``img_size``, ``mlp_ratio``) for towers that are not one of the named ones.
        global_pool: ``"token"`` (the [CLS] token, MERU's configs) or ``"avg"`` (no class token).
        use_sincos2d_pos: MERU's fixed position embedding; it stays frozen when fine-tuning.
        text_layers, text_width, text_heads: MERU's ``L{layers}_W{width}[_A{heads}]`` text arch.
        vocab_size, context_length: of the text encoder.
        embed_dim: the common embedding size (both projections' output).
    """

    visual_arch: str = "vit_large_patch16_224"
    visual_kwargs: dict = field(default_factory=dict)
    global_pool: str = "token"
    use_sincos2d_pos: bool = True
    text_layers: int = 12
    text_width: int = 512
    text_heads: int = 8
    vocab_size: int = 49408
    context_length: int = 77
    embed_dim: int = 512

    def __post_init__(self):
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"MERU arch: global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.text_width % self.text_heads:
            raise ValueError(f"MERU arch: text width {self.text_width} is not divisible by {self.text_heads} heads")

    @classmethod
    def from_dict(cls, data: dict) -> "MeruArch":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"MERU arch: unknown fields {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def text_arch(self) -> str:
        """MERU's text-encoder arch string, e.g. ``L12_W512`` (``_A{heads}`` when not ``width // 64``)."""
        suffix = "" if self.text_heads == self.text_width // 64 else f"_A{self.text_heads}"
        return f"L{self.text_layers}_W{self.text_width}{suffix}"


def sincos_pos_embed(grid: tuple[int, int], dim: int, class_token: bool) -> torch.Tensor:
    """MoCo v3's fixed 2-D sin-cos position embedding as MERU builds it, ``(1, [1 +] h·w, dim)``.

    The grid is enumerated like ``torch.meshgrid(arange(w), arange(h))`` (MERU's call, "ij" indexing), so
    the first coordinate varies slowest; each quarter of the channels is sin/cos of the w or h coordinate
    at frequencies ``1 / 10000^(k / (dim/4))``. The class token's row is zero.
    """
    h, w = grid
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    pos = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]
    if class_token:
        pos = torch.cat([torch.zeros(1, 1, dim), pos], dim=1)
    return pos


def build_timm_vit(arch: MeruArch) -> nn.Module:
    """MERU's image encoder: a timm ViT without classifier head, pooled by its [CLS] token (or averaged)."""
    import timm

    name, overrides = MERU_VIT_ARCHS.get(arch.visual_arch, (arch.visual_arch, {}))
    if not name.startswith("vit_"):
        raise ValueError(f"MERU arch: visual_arch must be a timm ViT (vit_*), got {arch.visual_arch!r}")
    kwargs = {**overrides, **arch.visual_kwargs}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool=arch.global_pool,
                                  class_token=arch.global_pool == "token", norm_layer=nn.LayerNorm, **kwargs)
    except RuntimeError as e:  # timm's "Unknown model"
        raise ValueError(f"MERU arch: timm cannot build {name!r} ({e})") from None
    if arch.use_sincos2d_pos:
        pos = sincos_pos_embed(tuple(model.patch_embed.grid_size), model.embed_dim, arch.global_pool == "token")
        model.pos_embed.data.copy_(pos)
        model.pos_embed.requires_grad_(False)  # fixed in MERU: fine-tuning keeps it so
    return model


class MeruTextEncoder(nn.Module):
    """MERU's ``TransformerTextEncoder``: ``(B, L)`` tokens -> ``(B, L, width)`` features (after ``ln_final``)."""

    def __init__(self, width: int, layers: int, heads: int, vocab_size: int, context_length: int):
        super().__init__()
        self.width, self.context_length, self.grad_checkpointing = width, context_length, False
        self.token_embed = nn.Embedding(vocab_size, width)
        self.posit_embed = nn.Parameter(torch.empty(context_length, width))
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, norm_layer=nn.LayerNorm, batch_first=True)
                                        for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        # Persistent, as in MERU (its checkpoints hold `textual.attn_mask`): True above the diagonal = masked.
        self.register_buffer("attn_mask", torch.ones(context_length, context_length, dtype=torch.bool).triu(1))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.posit_embed, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[-1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens for a context length of {self.context_length}")
        x = self.token_embed(tokens) + self.posit_embed[:length]
        # OpenCLIP's block casts the mask to the activations' dtype, so it gets an additive (−inf) mask.
        mask = torch.zeros(length, length, dtype=x.dtype, device=x.device)
        mask.masked_fill_(self.attn_mask[:length, :length], float("-inf"))
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, None, None, mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=mask)
        return self.ln_final(x)


class MeruTowers(nn.Module):
    """MERU's image and text encoders with their projections; ``encode_*`` give the unnormalised features."""

    def __init__(self, arch: MeruArch):
        super().__init__()
        self.arch = arch
        self.visual = build_timm_vit(arch)
        self.textual = MeruTextEncoder(arch.text_width, arch.text_layers, arch.text_heads, arch.vocab_size,
                                       arch.context_length)
        self.visual_proj = nn.Linear(self.visual.embed_dim, arch.embed_dim, bias=False)
        self.textual_proj = nn.Linear(arch.text_width, arch.embed_dim, bias=False)
        nn.init.normal_(self.visual_proj.weight, std=self.visual.embed_dim ** -0.5)
        nn.init.normal_(self.textual_proj.weight, std=arch.text_width ** -0.5)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images, normalised as the towers expect -> ``(B, embed_dim)``."""
        return self.visual_proj(self.visual(images))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids (zero-padded after ``[EOS]``) -> ``(B, embed_dim)``, the ``[EOS]`` feature."""
        features = self.textual(tokens)
        eos = tokens.argmax(dim=-1)  # [EOS] has the largest id in CLIP's vocabulary
        return self.textual_proj(features[torch.arange(features.shape[0], device=features.device), eos])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.textual.grad_checkpointing = enable


def build_meru_towers(tower_config: dict) -> tuple[MeruTowers, int, int, int]:
    """``(towers, embed_dim, image_size, context_length)`` from a :class:`MeruArch` dict (random weights)."""
    arch = MeruArch.from_dict(tower_config)
    towers = MeruTowers(arch)
    size = towers.visual.patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return towers, arch.embed_dim, int(size), arch.context_length
