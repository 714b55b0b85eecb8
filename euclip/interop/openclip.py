"""OpenCLIP checkpoint files: as cosine GeometricCLIPs, and as pretrained towers for another geometry.

An OpenCLIP file is the state dict of an ``open_clip.CLIP`` (or ``CustomTextCLIP``): what
``open_clip.create_model(name, pretrained=FILE)`` reads. Its model name is not in the file; it comes from
``--model``, or from the tensor shapes when exactly one OpenCLIP config fits them (shapes cannot tell
``ViT-B-32`` from ``ViT-B-32-quickgelu``, so that pair always needs ``--model``).

OpenCLIP normalises images with :data:`OPENCLIP_MEAN`/:data:`OPENCLIP_STD` (OpenAI's) for any model built
from a file, so a converted model carries that normalisation (``image_mean``/``image_std``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from euclip.interop.common import build_and_load, scalar
from euclip.interop.detect import first, read_checkpoint
from euclip.model import GeometricCLIP, ModelConfig

log = logging.getLogger(__name__)

OPENCLIP_MEAN: tuple[float, float, float] = tuple(OPENAI_DATASET_MEAN)
OPENCLIP_STD: tuple[float, float, float] = tuple(OPENAI_DATASET_STD)
HEAD_SCALARS: tuple[str, ...] = ("logit_scale", "logit_bias")


def _layers(state_dict: dict, prefix: str) -> int:
    """Number of ``{prefix}{i}.`` blocks in ``state_dict``."""
    idx = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)
           and k[len(prefix):].split(".")[0].isdigit()}
    return len(idx)


def _expected_shapes(cfg: dict) -> dict[str, tuple] | None:
    """The shapes of a few keys of an OpenCLIP ViT CLIP with model config ``cfg`` (None: another kind)."""
    vision, text = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    if cfg.get("custom_text") or "timm_model_name" in vision or "hf_model_name" in text or "multimodal_cfg" in cfg \
            or isinstance(vision.get("layers", 12), (list, tuple)):
        return None
    embed_dim = cfg["embed_dim"]
    width, patch = vision.get("width", 768), vision.get("patch_size", 16)
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    t_width = text.get("width", 512)
    return {
        "visual.conv1.weight": (width, 3, patch, patch),
        "visual.positional_embedding": ((size // patch) ** 2 + 1, width),
        "visual.proj": (width, embed_dim),
        "visual.transformer.resblocks.0.mlp.c_fc.weight": (int(width * vision.get("mlp_ratio", 4.0)), width),
        "token_embedding.weight": (text.get("vocab_size", 49408), t_width),
        "positional_embedding": (text.get("context_length", 77), t_width),
        "text_projection": (t_width, embed_dim),
        "transformer.resblocks.0.mlp.c_fc.weight": (int(t_width * text.get("mlp_ratio", 4.0)), t_width),
        "#visual_layers": (vision.get("layers", 12),),
        "#text_layers": (text.get("layers", 12),),
    }


def matching_models(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """OpenCLIP model names whose ViT/text-transformer shapes fit ``state_dict`` (heads are not in the shapes)."""
    actual = {k: tuple(v.shape) for k, v in state_dict.items()}
    actual["#visual_layers"] = (_layers(state_dict, "visual.transformer.resblocks."),)
    actual["#text_layers"] = (_layers(state_dict, "transformer.resblocks."),)
    out = []
    for name in open_clip.list_models():
        expected = _expected_shapes(open_clip.get_model_config(name) or {})
        if expected and all(actual.get(k) == v for k, v in expected.items()):
            out.append(name)
    return out


def infer_model_name(state_dict: dict[str, torch.Tensor], what: str) -> str:
    """The one OpenCLIP config that fits the shapes, else a ValueError asking for ``--model``."""
    names = matching_models(state_dict)
    if len(names) == 1:
        log.info("%s: model %s inferred from the tensor shapes", what, names[0])
        return names[0]
    if not names:
        raise ValueError(f"{what}: no OpenCLIP model config fits its tensor shapes; pass --model NAME")
    raise ValueError(f"{what}: the tensor shapes fit several OpenCLIP models ({', '.join(names)}); pass --model NAME "
                     "(OpenAI's weights and OpenCLIP's *-quickgelu tags need the -quickgelu config)")


def tower_state(state_dict: dict[str, torch.Tensor], drop: tuple[str, ...] = HEAD_SCALARS) -> dict[str, torch.Tensor]:
    """``towers.``-prefixed tower tensors (everything but the head's scalars)."""
    return {f"towers.{k}": v for k, v in state_dict.items() if k not in drop}


def from_openclip(state_dict: dict[str, torch.Tensor], model: str | None, what: str) -> GeometricCLIP:
    """A cosine GeometricCLIP (elliptic geometry, inner-product logit, final LayerNorms) from an OpenCLIP state dict."""
    if "logit_bias" in state_dict:
        raise ValueError(f"{what}: a SigLIP model (it has a logit_bias); euclip's models have no logit bias")
    name = model or infer_model_name(state_dict, what)
    if "logit_scale" not in state_dict:
        raise ValueError(f"{what}: no logit_scale; not an OpenCLIP CLIP state dict")
    config = ModelConfig(model=name, geometry="elliptic", logit="inner", final_ln=True,
                         init_logit_scale=math.log(1 / 0.07), image_mean=OPENCLIP_MEAN, image_std=OPENCLIP_STD)
    sd = tower_state(state_dict)
    sd["log_logit_scale"] = scalar(state_dict["logit_scale"])
    return build_and_load(config, sd, what, "Check --model (the OpenCLIP config it was trained with).")


def init_from_openclip(model: GeometricCLIP, path: str | Path) -> dict:
    """Initialise ``model``'s towers from an OpenCLIP checkpoint file, for training in any geometry.

    ``euclip train --pretrained FILE --model NAME --preset euclip`` calls this after building the model. The
    towers must be the OpenCLIP config ``NAME`` the file was trained with. What differs from the file:

    * a model without final LayerNorms (``final_ln=False``, EuCLIP's default) drops the file's
      ``visual.ln_post.*`` and ``ln_final.*``;
    * the logit scale is taken only for a cosine model (elliptic geometry, inner logit); other geometries'
      logits have other scales, so they keep their initial ``log t``;
    * the model's image normalisation becomes OpenCLIP's (:data:`OPENCLIP_MEAN`/``STD``), which the towers were
      trained with (``model.config.image_mean``/``image_std`` are set: save the model's config with it).

    Returns:
        ``{"path", "loaded": number of tensors, "dropped": keys not used, "logit_scale": bool, "image_mean",
        "image_std"}``.

    Raises:
        ValueError: the file's towers do not fit the model (first missing/unexpected keys, shape mismatches).
    """
    if model.config.towers != "openclip":
        raise ValueError(f"--pretrained: OpenCLIP weights need OpenCLIP towers, not {model.config.towers!r}")
    raw = read_checkpoint(path)
    what = f"--pretrained {raw.path}"
    source = raw.state_dict
    if "visual_proj.weight" in source:
        raise ValueError(f"{what}: a MERU checkpoint, not OpenCLIP weights")
    target = model.towers.state_dict()
    dropped = [k for k in source if k in HEAD_SCALARS or
               (k not in target and (k.startswith(("visual.ln_post.", "ln_final.", "text.ln_final."))
                                     and not model.config.final_ln))]
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target and k not in dropped]
    shapes = [f"{k} {tuple(source[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
              if k in source and tuple(source[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"{what} does not fit --model {model.config.model}: missing keys: {first(missing)}; "
                         f"unexpected keys: {first(unexpected)}; shape mismatches (file vs model): {first(shapes, 3)}")
    model.towers.load_state_dict({k: source[k].to(v.dtype) for k, v in target.items()}, strict=True)
    use_scale = model.geometry == "elliptic" and model.logit == "inner" and "logit_scale" in source
    if use_scale:
        with torch.no_grad():
            model.log_logit_scale.copy_(scalar(source["logit_scale"]))
    model.set_image_normalization(OPENCLIP_MEAN, OPENCLIP_STD)
    log.info("initialised %s towers from %s (%d tensors; dropped %s)", model.config.model, raw.path, len(target),
             first(dropped))
    return {"path": str(raw.path), "loaded": len(target), "dropped": dropped, "logit_scale": use_scale,
            "image_mean": OPENCLIP_MEAN, "image_std": OPENCLIP_STD}
