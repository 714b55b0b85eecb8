"""The paper's code: its OpenCLIP 2.24 fork (GitHub EIFY/open_clip, branch ``euclip``), both ways.

Its model is OpenCLIP's ``CLIP`` with three more parameters for hyperbolic geometries and a geometry
string (``--geometry``) that is not saved in the checkpoint but in the run's ``params.txt``. Its forward
pass returns, per tower, the features scaled for the geometry, and its logits (``open_clip.METRICS``)
map them onto the manifold themselves:

* ``clip`` / ``elliptic``: ``f / ||f||``; logits ``x·y`` or ``−acos(x·y)``.
* ``euclidean*``: ``f / sqrt(embed_dim)``; logits ``−||x − y||``, ``−||x − y||²`` or ``x·y``.
* ``hyperbolic*``: ``exp(alpha) · f`` (``alpha_img``, ``alpha_txt``: log-parametrised), then in the logit the
  exponential map ``sinh(√c||v||) / (√c||v||) · v`` with ``c = clamp(exp(curvature), 0.1, 10)``.

All logits are multiplied by ``exp(logit_scale)``. In euclip terms: geometry and logit from
:data:`euclip.geometry.ALIASES`, ``logit_scale`` → ``log_logit_scale``, ``alpha_img``/``alpha_txt`` →
``log_alpha_image``/``log_alpha_text``, ``log_curvature = log clamp(exp(curvature), 0.1, 10)`` (the value
the fork uses), and every other key → ``towers.*``. A ``*-no-final-ln`` model (the fork's configs without
``visual.ln_post`` and ``ln_final``) is the OpenCLIP model without the suffix with ``final_ln=False``.
Images are normalised as the fork's OpenCLIP does (OpenAI's mean and std unless ``image_mean`` was set).

Zero-shot prototypes there: the mean over templates of the forward's text features (tangent vectors
``exp(alpha)·f`` for hyperbolic models, ``f / sqrt(D)`` for Euclidean ones), re-normalised only on the
sphere — what :func:`euclip.eval.zeroshot.class_prototypes` computes.
"""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import open_clip
import torch

from euclip import geometry as geom
from euclip.interop.common import build_and_load, scalar
from euclip.interop.detect import FINAL_LN_KEYS, PAPER_HYPERBOLIC_KEYS, RawCheckpoint
from euclip.interop.openclip import OPENCLIP_MEAN, OPENCLIP_STD, infer_model_name, tower_state
from euclip.model import CURVATURE_RANGE, GeometricCLIP, ModelConfig

log = logging.getLogger(__name__)

NO_FINAL_LN = "-no-final-ln"
# The fork's --geometry choices and what each means in euclip.
PAPER_GEOMETRIES: tuple[str, ...] = ("clip", "elliptic", "euclidean", "hyperbolic", "euclidean-inner",
                                     "euclidean-squared", "hyperbolic-inner", "hyperbolic-squared")
# The fork ships these four *-no-final-ln configs.
PAPER_NO_FINAL_LN_MODELS: tuple[str, ...] = ("ViT-S-16", "ViT-B-16", "ViT-B-32", "ViT-L-14")
PARAMS_FILE = "params.txt"


def read_params(path: str | Path) -> dict:
    """Parse OpenCLIP's ``params.txt`` (``name: value`` lines, values as ``str()`` printed them)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"params file not found: {p}")
    params = {}
    for line in p.read_text().splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or " " in key.strip():
            continue
        params[key.strip()] = _value(value.strip())
    return params


def _value(text: str):
    if text in ("None", ""):
        return None
    try:
        return ast.literal_eval(text)  # numbers, True/False, lists, tuples
    except (ValueError, SyntaxError):
        return text


def find_params(checkpoint: Path) -> Path | None:
    """``params.txt`` beside a checkpoint: in its folder, or its run folder (``RUN/checkpoints/epoch_N.pt``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        candidate = folder / PARAMS_FILE
        if candidate.is_file():
            return candidate
    return None


def paper_geometry(geometry: str | tuple[str, str]) -> str:
    """The fork's geometry string for a euclip ``(geometry, logit)`` (or check a string)."""
    if isinstance(geometry, str):
        if geometry not in PAPER_GEOMETRIES:
            raise ValueError(f"unknown paper geometry {geometry!r}; the fork's: {', '.join(PAPER_GEOMETRIES)}")
        return geometry
    for name in PAPER_GEOMETRIES:
        if geom.ALIASES[name] == tuple(geometry):
            return name
    raise ValueError(f"the paper's code has no geometry for {geometry[0]} with the {geometry[1]} logit "
                     f"(its choices: {', '.join(PAPER_GEOMETRIES)})")


def paper_config(raw: RawCheckpoint, params: dict, geometry: str | None, model: str | None,
                 what: str) -> ModelConfig:
    """The ModelConfig of a paper checkpoint from its ``params.txt`` entries and the flags (which win)."""
    name = geometry or params.get("geometry")
    if name is None:
        raise ValueError(f"{what}: no geometry (no params.txt with a 'geometry:' line); pass --geometry "
                         f"({', '.join(PAPER_GEOMETRIES)})")
    geometry_, logit = geom.resolve(paper_geometry(str(name)))
    if params.get("siglip"):
        raise ValueError(f"{what}: trained with --siglip (a logit bias); euclip's models have no logit bias")
    sd = raw.state_dict
    has_alpha = [k in sd for k in PAPER_HYPERBOLIC_KEYS]
    if geometry_ == "hyperbolic" and not all(has_alpha):
        raise ValueError(f"{what}: geometry {name!r} but the state dict lacks {', '.join(PAPER_HYPERBOLIC_KEYS)}; "
                         "check --geometry")
    if geometry_ != "hyperbolic" and any(has_alpha):
        raise ValueError(f"{what}: the state dict has hyperbolic parameters ({', '.join(PAPER_HYPERBOLIC_KEYS)}) "
                         f"but the geometry is {name!r}; pass --geometry hyperbolic (or -squared, -inner)")
    has_final_ln = [k in sd for k in FINAL_LN_KEYS]
    if any(has_final_ln) != all(has_final_ln):
        raise ValueError(f"{what}: has only one of {', '.join(FINAL_LN_KEYS)}; euclip removes both final "
                         "LayerNorms or neither")
    model_name = model or params.get("model")
    if model_name is None:
        model_name = infer_model_name({k: v for k, v in sd.items() if k not in PAPER_HYPERBOLIC_KEYS}, what)
    model_name = str(model_name)
    final_ln = all(has_final_ln)
    if model_name.endswith(NO_FINAL_LN):
        model_name = model_name[: -len(NO_FINAL_LN)]
        if final_ln:
            raise ValueError(f"{what}: model {model_name + NO_FINAL_LN} but the state dict has final LayerNorms")
    if params.get("force_quick_gelu") and not model_name.endswith("-quickgelu"):
        model_name += "-quickgelu"
    if model_name not in open_clip.list_models():
        raise ValueError(f"{what}: OpenCLIP has no model config {model_name!r}; pass --model NAME")
    size = params.get("force_image_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean = params.get("image_mean") or OPENCLIP_MEAN
    std = params.get("image_std") or OPENCLIP_STD
    max_log_scale = params.get("max_logit_scale")
    init = params.get("init_logit_scale")
    return ModelConfig(model=model_name, geometry=geometry_, logit=logit, final_ln=final_ln,
                       init_logit_scale=float(init) if init is not None else math.log(1 / 0.07),
                       max_logit_scale=math.exp(max_log_scale) if max_log_scale is not None else 100.0,
                       image_size=int(size) if size else None, image_mean=tuple(mean), image_std=tuple(std))


def from_paper(raw: RawCheckpoint, params: dict, geometry: str | None = None, model: str | None = None,
               what: str = "paper checkpoint") -> GeometricCLIP:
    """A GeometricCLIP equal to the fork's model in ``raw`` (see the module docstring for the mapping)."""
    config = paper_config(raw, params, geometry, model, what)
    sd = raw.state_dict
    if "logit_scale" not in sd:
        raise ValueError(f"{what}: no logit_scale; not an OpenCLIP/paper state dict")
    out = tower_state(sd, drop=("logit_scale", "logit_bias", *PAPER_HYPERBOLIC_KEYS))
    out["log_logit_scale"] = scalar(sd["logit_scale"])
    if config.geometry == "hyperbolic":
        out["log_alpha_image"] = scalar(sd["alpha_img"])
        out["log_alpha_text"] = scalar(sd["alpha_txt"])
        lo, hi = CURVATURE_RANGE
        out["log_curvature"] = scalar(sd["curvature"]).exp().clamp(lo, hi).log()
    return build_and_load(config, out, what, "Check --model / the 'model:' line of params.txt, and --geometry.")


def to_paper_state_dict(model: GeometricCLIP) -> dict[str, torch.Tensor]:
    """The fork's state dict of ``model`` (OpenCLIP towers): the towers' keys plus its scalars, in its order.

    The fork's ``CLIP`` registers ``logit_scale`` (and ``alpha_img``, ``alpha_txt``, ``curvature``) after its own
    ``positional_embedding`` and ``text_projection``, before the sub-modules' tensors: that order is kept.
    """
    if model.config.towers != "openclip":
        raise ValueError(f"the paper's code has OpenCLIP towers only, not {model.config.towers!r}")
    towers = {k[len("towers."):]: v.detach().clone() for k, v in model.state_dict().items()
              if k.startswith("towers.")}
    extras = {"logit_scale": model.log_logit_scale.detach().clone()}
    if model.geometry == "hyperbolic":
        extras.update(alpha_img=model.log_alpha_image.detach().clone(),
                      alpha_txt=model.log_alpha_text.detach().clone(),
                      curvature=model.log_curvature.detach().clone())
    return with_head(towers, extras)


def with_head(towers: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP ``CLIP`` state dict in its order: its own tensors, then ``head`` (its scalars), then sub-modules."""
    own = [k for k in towers if "." not in k]
    return {**{k: towers[k] for k in own}, **head, **{k: v for k, v in towers.items() if k not in own}}


def paper_model_name(config: ModelConfig) -> str:
    """The fork's ``--model`` for a euclip config: ``NAME`` or ``NAME-no-final-ln``."""
    if config.model not in open_clip.list_models():
        raise ValueError(f"the paper's code builds OpenCLIP models; {config.model!r} is not one")
    if config.final_ln:
        return config.model
    if config.model not in PAPER_NO_FINAL_LN_MODELS:
        log.warning("the paper's fork has *-no-final-ln configs for %s only; add one for %s (its config with "
                    "\"final_layernorm\": false in vision_cfg and text_cfg)", ", ".join(PAPER_NO_FINAL_LN_MODELS),
                    config.model)
    return config.model + NO_FINAL_LN


def params_lines(params: dict) -> str:
    """``params.txt`` text as OpenCLIP's main.py writes it: ``name: value`` for each name, sorted."""
    return "".join(f"{k}: {params[k]}\n" for k in sorted(params))
