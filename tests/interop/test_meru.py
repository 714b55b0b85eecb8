"""MERU / HyCoCLIP checkpoints: converted models equal MERU's forward pass, written here from its maths.

The checkpoint is built at tiny size in MERU's layout (``meru/models.py``, ``meru/encoders/*.py``): the image
tower from timm's real ``VisionTransformer`` as MERU's ``build_timm_vit`` creates it, with MoCo v3's sin-cos
position embedding (computed here, independently); the text encoder's tensors by MERU's key names. The reference
forward pass is MERU's: ``[0, 1]`` pixels normalised by ``pixel_mean``/``pixel_std``, the ViT, ``visual_proj``; its
text transformer (written here with plain tensor maths: pre-LN blocks, causal attention, the ``[EOS]`` feature),
``textual_proj``; then ``exp(alpha)`` and ``lorentz.exp_map0``, and ``−lorentz.pairwise_dist`` scaled by
``exp(min(logit_scale, 4.6052))``, in float64. MERU's tokenizer is OpenAI's BPE with [SOS]/[EOS] and no padding
(its model pads a batch to the longest sequence): OpenCLIP's tokens cut after [EOS].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from euclip import geometry as geom
from euclip.data.transforms import image_transform
from euclip.interop import load_checkpoint, read_foreign
from euclip.interop.meru import arch_from_config, infer_arch, parse_meru_config
from euclip.interop.meru_towers import MeruArch, build_timm_vit

WIDTH, TEXT_WIDTH, EMBED, LAYERS, PATCH, SIZE, CONTEXT = 128, 128, 32, 2, 8, 32, 77
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def moco_sincos(grid: int, dim: int) -> torch.Tensor:
    """MoCo v3's 2-D sin-cos embedding, ``(1, 1 + grid², dim)``, written element by element."""
    quarter = dim // 4
    rows = [np.zeros(dim)]
    for i in range(grid):  # MERU: meshgrid(arange(w), arange(h)) flattened, i.e. w-coordinate slowest
        for j in range(grid):
            row = []
            for coordinate in (i, j):
                angles = [coordinate / 10000 ** (k / quarter) for k in range(quarter)]
                row += [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
            rows.append(np.array(row))
    return torch.tensor(np.stack(rows), dtype=torch.float32)[None]


def meru_vit(ih, seed: int) -> nn.Module:
    """MERU's ``build_timm_vit`` at tiny size: timm's ViT, no head, [CLS] pooling, eps-1e-5 LayerNorms."""
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="token",
                            class_token=True, norm_layer=nn.LayerNorm, embed_dim=WIDTH, depth=LAYERS, num_heads=2,
                            patch_size=PATCH, img_size=SIZE)
    ih.randomize_(vit, seed)
    with torch.no_grad():
        vit.pos_embed.copy_(moco_sincos(SIZE // PATCH, WIDTH))
    return vit.eval()


def meru_checkpoint(ih, vit: nn.Module, hyperbolic: bool, seed: int) -> dict:
    """``{"model": state_dict, ...}`` in MERU's layout (CheckpointManager's file)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, offset=0.0):
        return torch.randn(shape, generator=g) * scale + offset

    sd = {f"visual.{k}": v.clone() for k, v in vit.state_dict().items()}
    w = TEXT_WIDTH
    sd["textual.token_embed.weight"] = rnd(49408, w)
    sd["textual.posit_embed"] = rnd(CONTEXT, w, scale=0.1)
    for i in range(LAYERS):
        p = f"textual.resblocks.{i}."
        sd.update({p + "ln_1.weight": rnd(w, offset=1.0), p + "ln_1.bias": rnd(w),
                   p + "attn.in_proj_weight": rnd(3 * w, w, scale=w ** -0.5), p + "attn.in_proj_bias": rnd(3 * w),
                   p + "attn.out_proj.weight": rnd(w, w, scale=w ** -0.5), p + "attn.out_proj.bias": rnd(w),
                   p + "ln_2.weight": rnd(w, offset=1.0), p + "ln_2.bias": rnd(w),
                   p + "mlp.c_fc.weight": rnd(4 * w, w, scale=w ** -0.5), p + "mlp.c_fc.bias": rnd(4 * w),
                   p + "mlp.c_proj.weight": rnd(w, 4 * w, scale=(4 * w) ** -0.5), p + "mlp.c_proj.bias": rnd(w)})
    sd["textual.ln_final.weight"], sd["textual.ln_final.bias"] = rnd(w, offset=1.0), rnd(w)
    sd["textual.attn_mask"] = torch.ones(CONTEXT, CONTEXT, dtype=torch.bool).triu(1)
    sd["visual_proj.weight"] = rnd(EMBED, WIDTH, scale=WIDTH ** -0.5)
    sd["textual_proj.weight"] = rnd(EMBED, w, scale=w ** -0.5)
    sd["logit_scale"] = torch.tensor(4.7)  # above MERU's clamp (4.6052): its forward clamps before use
    sd["pixel_mean"] = torch.tensor(MEAN).view(-1, 1, 1)
    sd["pixel_std"] = torch.tensor(STD).view(-1, 1, 1)
    if hyperbolic:
        sd["curv"] = torch.tensor(math.log(1.3))
        sd["visual_alpha"] = torch.tensor(EMBED ** -0.5).log() + 0.2
        sd["textual_alpha"] = torch.tensor(EMBED ** -0.5).log() - 0.1
    return {"model": sd, "optimizer": torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).state_dict(),
            "scheduler": {"last_epoch": 120}, "scaler": {"scale": 1024.0}, "iteration": 120}


# ----------------------------------------------------------------------------------------------------------------
# MERU's forward pass, in float64
# ----------------------------------------------------------------------------------------------------------------


def meru_text_features(sd: dict, token_lists: list[torch.Tensor]) -> torch.Tensor:
    tokens = nn.utils.rnn.pad_sequence(token_lists, batch_first=True)
    s = {k: v.double() for k, v in sd.items() if k.startswith("textual.") and v.is_floating_point()}
    length, heads = tokens.shape[1], TEXT_WIDTH // 64
    x = s["textual.token_embed.weight"][tokens] + s["textual.posit_embed"][:length]
    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)

    def ln(t, name):
        return F.layer_norm(t, (TEXT_WIDTH,), s[name + ".weight"], s[name + ".bias"], eps=1e-5)

    for i in range(LAYERS):
        p = f"textual.resblocks.{i}."
        h = ln(x, p + "ln_1")
        q, k, v = (h @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        split = [t.view(t.shape[0], length, heads, -1).transpose(1, 2) for t in (q, k, v)]
        scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(TEXT_WIDTH // heads) + causal
        attended = (scores.softmax(-1) @ split[2]).transpose(1, 2).reshape(x.shape)
        x = x + attended @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
        h = ln(x, p + "ln_2")
        x = x + F.gelu(h @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"]) @ s[p + "mlp.c_proj.weight"].T \
            + s[p + "mlp.c_proj.bias"]
    x = ln(x, "textual.ln_final")
    eos = tokens.argmax(dim=-1)
    return x[torch.arange(len(tokens)), eos] @ sd["textual_proj.weight"].double().T


def meru_image_features(sd: dict, vit: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    normalised = (pixels - sd["pixel_mean"]) / sd["pixel_std"]
    with torch.no_grad():
        return vit(normalised).double() @ sd["visual_proj.weight"].double().T


def meru_exp_map0(x: torch.Tensor, curv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    rc_xnorm = curv ** 0.5 * x.norm(dim=-1, keepdim=True)
    return torch.sinh(rc_xnorm.clamp(min=eps, max=math.asinh(2 ** 15))) * x / rc_xnorm.clamp(min=eps)


def meru_pairwise_dist(x, y, curv, eps: float = 1e-8):
    xt = torch.sqrt(1 / curv + (x ** 2).sum(-1, keepdim=True))
    yt = torch.sqrt(1 / curv + (y ** 2).sum(-1, keepdim=True))
    inner = x @ y.T - xt @ yt.T
    return torch.acosh(torch.clamp(-curv * inner, min=1 + eps)) / curv ** 0.5


def meru_tokens(tokens: torch.Tensor) -> list[torch.Tensor]:
    """MERU's tokenizer's output for the same texts: OpenCLIP's tokens up to and including [EOS]."""
    return [row[: int(row.argmax()) + 1] for row in tokens]


@pytest.fixture(scope="module")
def inputs(ih):
    pil = ih.random_images(5, seed=11)
    meru_transform = T.Compose([T.Resize(SIZE, T.InterpolationMode.BICUBIC), T.CenterCrop(SIZE), T.ToTensor()])
    ours = image_transform(SIZE, train=False)
    texts = ["a photo of a circle", "a very long caption " * 3, "two", "the taj mahal at dawn, seen through an arch"]
    return (torch.stack([meru_transform(i) for i in pil]), torch.stack([ours(i) for i in pil]), texts)


@pytest.mark.parametrize("hyperbolic", [True, False], ids=["MERU", "CLIPBaseline"])
def test_embeddings_logits_and_scalars_equal_meru(ih, tmp_path, inputs, hyperbolic):
    vit = meru_vit(ih, seed=1)
    ckpt = meru_checkpoint(ih, vit, hyperbolic, seed=2)
    torch.save(ckpt, tmp_path / "meru_vit_tiny.pth")
    pixels, our_images, texts = inputs
    converted = read_foreign(tmp_path / "meru_vit_tiny.pth")
    model = converted.model
    assert converted.source["format"] == "meru" and converted.source["architecture"] == "inferred from tensor shapes"
    assert (model.geometry, model.logit) == (("hyperbolic", "distance") if hyperbolic else ("elliptic", "inner"))
    assert model.config.image_mean == pytest.approx(MEAN) and model.config.image_std == pytest.approx(STD)

    sd = ckpt["model"]
    tokens = model.tokenizer()(texts)
    fi = meru_image_features(sd, vit, pixels)
    ft = meru_text_features(sd, meru_tokens(tokens))
    scale = sd["logit_scale"].clamp(max=4.6052).double().exp()
    if hyperbolic:
        curv = sd["curv"].double().exp()
        xi = meru_exp_map0(fi * sd["visual_alpha"].double().exp(), curv)
        xt = meru_exp_map0(ft * sd["textual_alpha"].double().exp(), curv)
        reference = -scale * meru_pairwise_dist(xi, xt, curv)
    else:
        xi, xt = F.normalize(fi, dim=-1), F.normalize(ft, dim=-1)
        reference = scale * xi @ xt.T
    with torch.no_grad():
        ei, et = model.encode_image(our_images), model.encode_text(tokens)
        logits = model.logit_scale * geom.pairwise_logits(ei, et, model.geometry, model.logit, model.curvature)
    assert ih.relative_error(ei, xi) < 1e-5 and ih.relative_error(et, xt) < 1e-5
    assert ih.relative_error(logits, reference) < 1e-5
    assert model.logit_scale.item() == pytest.approx(math.exp(4.6052), rel=1e-6)
    if hyperbolic:
        scalars = model.scalars()
        assert scalars["curvature"] == pytest.approx(1.3, rel=1e-6)
        assert scalars["alpha_image"] == pytest.approx(sd["visual_alpha"].exp().item(), rel=1e-6)
        assert scalars["alpha_text"] == pytest.approx(sd["textual_alpha"].exp().item(), rel=1e-6)


def test_state_dict_keeps_merus_names_and_frozen_positions(ih, tmp_path):
    vit = meru_vit(ih, seed=3)
    ckpt = meru_checkpoint(ih, vit, True, seed=3)
    torch.save(ckpt, tmp_path / "m.pth")
    model = load_checkpoint(tmp_path / "m.pth")
    towers = {k.removeprefix("towers."): v for k, v in model.state_dict().items() if k.startswith("towers.")}
    meru_towers = {k: v for k, v in ckpt["model"].items()
                   if k.startswith(("visual.", "textual.", "visual_proj.", "textual_proj."))}
    assert set(towers) == set(meru_towers)
    assert all(torch.equal(towers[k], meru_towers[k]) for k in towers)
    assert not model.towers.visual.pos_embed.requires_grad  # MERU keeps its sin-cos embedding fixed
    assert model.config.tower_config["use_sincos2d_pos"] is True


def write_meru_configs(folder: Path) -> Path:
    """MERU's two-level lazy configs (a base file and one that imports and overrides it)."""
    (folder / "train_meru_vit_l.py").write_text('''
from torch.optim import AdamW
from meru.config import LazyCall as L
from meru.encoders.image_encoders import build_timm_vit
from meru.encoders.text_encoders import TransformerTextEncoder
from meru.models import MERU

model = L(MERU)(
    visual=L(build_timm_vit)(
        arch="vit_large_patch16_224",
        global_pool="token",
        use_sincos2d_pos=True,
    ),
    textual=L(TransformerTextEncoder)(
        arch="L12_W512", vocab_size=49408, context_length=77
    ),
    embed_dim=512,
    curv_init=1.0,
    learn_curv=True,
    entail_weight=0.2,
)
optim = dict(optimizer=L(AdamW)(lr=5e-4, betas=(0.9, 0.98), weight_decay=0.2))
train = dict(seed=0, amp=True, total_batch_size=2048, num_iterations=120000)
''')
    (folder / "train_meru_vit_s.py").write_text('''
from .train_meru_vit_l import dataset, model, optim, train


model.visual.arch = "vit_small_mocov3_patch16_224"
''')
    return folder / "train_meru_vit_s.py"


def test_merus_config_files(tmp_path, ih):
    config = write_meru_configs(tmp_path)
    arch, extras = arch_from_config(parse_meru_config(config), "test")
    assert arch.visual_arch == "vit_small_mocov3_patch16_224" and arch.text_arch == "L12_W512"
    assert (arch.text_layers, arch.text_width, arch.text_heads, arch.embed_dim) == (12, 512, 8, 512)
    assert extras == {"curv_init": 1.0, "learn_curv": True, "entail_weight": 0.2, "model_class": "MERU"}
    # A real-size config does not fit a tiny checkpoint: the error names the keys and the flag.
    torch.save(meru_checkpoint(ih, meru_vit(ih, 0), True, 0), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match=r"shape mismatches.*--config"):
        load_checkpoint(tmp_path / "tiny.pth", model_config=config)


def test_named_architecture_and_heads_from_shapes():
    """A ViT-S/16 of MERU's shapes is its vit_small_mocov3 (12 heads, where timm's ViT-S has 6)."""
    vit = build_timm_vit(MeruArch(visual_arch="vit_small_mocov3_patch16_224"))
    assert vit.blocks[0].attn.num_heads == 12 and vit.embed_dim == 384
    sd = {f"visual.{k}": v for k, v in vit.state_dict().items()}
    sd.update({"textual.token_embed.weight": torch.zeros(49408, 512), "textual.posit_embed": torch.zeros(77, 512),
               "visual_proj.weight": torch.zeros(512, 384), **{f"textual.resblocks.{i}.ln_1.weight": torch.zeros(512)
                                                               for i in range(12)}})
    arch = infer_arch(sd, "test")
    assert arch.visual_arch == "vit_small_mocov3_patch16_224" and arch.visual_kwargs == {}
    assert (arch.text_layers, arch.text_heads, arch.embed_dim, arch.use_sincos2d_pos) == (12, 8, 512, True)


def test_eval_commands_read_meru_checkpoints(ih, tmp_path, image_folder, templates_file):
    torch.save(meru_checkpoint(ih, meru_vit(ih, 4), True, 4), tmp_path / "meru.pth")
    out = tmp_path / "zs.json"
    assert ih.run_cli(["eval", "zeroshot", str(tmp_path / "meru.pth"), "--data", str(image_folder), "--templates",
                       str(templates_file), "--device", "cpu", "--output", str(out)]) == 0
    direct = json.loads(out.read_text())
    assert direct["num_samples"] == 6
    native = tmp_path / "meru-native.pt"
    assert ih.run_cli(["convert", str(tmp_path / "meru.pth"), "--output", str(native)]) == 0
    assert ih.run_cli(["eval", "zeroshot", str(native), "--data", str(image_folder), "--templates",
                       str(templates_file), "--device", "cpu", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == direct["top1"]
    for command in (["eval", "retrieval", "--num-samples"], ["eval", "hierarchy", "--num-samples"],
                    ["traverse", "--num-images"]):
        out = tmp_path / f"{command[-2]}.json"
        args = [*command[:-1], str(native), command[-1], "8", "--device", "cpu", "--no-progress", "--output", str(out)]
        assert ih.run_cli(args) == 0, command
        assert json.loads(out.read_text())
    # The MERU model cannot be exported for OpenCLIP or the paper's code (other towers).
    assert ih.run_cli(["export", str(native), "--format", "paper", "--output", str(tmp_path / "p")]) == 2


def test_openclip_tokens_cut_after_eos_are_merus(ih):
    """Padding after [EOS] does not change MERU's text features (the causal mask), so OpenCLIP's padded tokens do."""
    vit = meru_vit(ih, seed=5)
    sd = meru_checkpoint(ih, vit, False, seed=5)["model"]
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a cat", "a much longer caption about a dog and a ball"])
    short = meru_text_features(sd, meru_tokens(tokens))
    padded = meru_text_features(sd, list(tokens))
    assert ih.relative_error(padded, short) < 1e-12
