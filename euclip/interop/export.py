"""Writing euclip models for other code: euclip's native file, an OpenCLIP file, the paper fork's run layout.

Image normalisation. OpenCLIP (hence the paper's fork and its CLIP_benchmark / DataComp evaluations) feeds a
model built from a file images normalised with OpenAI's mean and std; a euclip model's towers may expect
another normalisation (euclip's own ``(0.5, 0.5, 0.5)``, MERU's ImageNet one). For a ViT the difference is
folded into the weights, exactly: the towers want ``a_c·x + b_c`` (per channel ``c``) of OpenCLIP's input ``x``;
the patch convolution has no bias and no padding, so ``W * (a·x + b) = (W·a) * x + Σ W·b``, a constant per
output channel that is added to the positional embedding of every patch token. Other image towers (ResNets)
cannot take it and are refused unless they already expect OpenCLIP's normalisation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch

from euclip.interop.openclip import OPENCLIP_MEAN, OPENCLIP_STD
from euclip.interop.paper import params_lines, paper_geometry, paper_model_name, to_paper_state_dict, with_head
from euclip.model import PIPELINE_MEAN, PIPELINE_STD, GeometricCLIP
from euclip.train.checkpoint import atomic_save

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("openclip", "paper")
PAPER_CHECKPOINT = "epoch_latest.pt"  # what DataComp's fork looks for in RUN/checkpoints/


def save_native(model: GeometricCLIP, path: str | Path, source: dict | None = None, train: dict | None = None) -> Path:
    """Write ``model`` as a euclip checkpoint that :func:`euclip.model.load_model` (every command) reads.

    Args:
        model: the model.
        path: the ``.pt`` file to write (folders are created).
        source: where it came from (``{"format", "path", ...}``), kept under ``"source"`` for ``euclip export``.
        train: training settings that are not model settings (``entailment_weight``, ``min_radius``, ...), kept
            in ``config`` beside ``model`` as the trainer's checkpoints do.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": {**(train or {}), "model": asdict(model.config)}, "model": model.state_dict(),
             "source": source or {}}
    atomic_save(state, p)
    return p


def input_affine(model: GeometricCLIP, mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(a, b)``: the towers' input is ``a·x + b`` for ``x`` normalised by ``mean``/``std`` (None: the identity)."""
    t_mean = model.config.image_mean or PIPELINE_MEAN
    t_std = model.config.image_std or PIPELINE_STD
    if tuple(t_mean) == tuple(mean) and tuple(t_std) == tuple(std):
        return None
    a = torch.tensor([s / ts for s, ts in zip(std, t_std)], dtype=torch.float64)
    b = torch.tensor([(m - tm) / ts for m, tm, ts in zip(mean, t_mean, t_std)], dtype=torch.float64)
    return a, b


def fold_input_normalization(state_dict: dict[str, torch.Tensor], affine: tuple[torch.Tensor, torch.Tensor],
                             what: str) -> dict[str, torch.Tensor]:
    """Fold ``x → a·x + b`` into an OpenCLIP ViT's ``visual.conv1`` and ``visual.positional_embedding`` (a copy)."""
    conv, pos = state_dict.get("visual.conv1.weight"), state_dict.get("visual.positional_embedding")
    if conv is None or pos is None or conv.ndim != 4 or conv.shape[1] != 3:
        raise ValueError(f"{what}: its towers expect another image normalisation than OpenCLIP's, which can be folded "
                         "into a ViT's patch embedding only; this image tower is not an OpenCLIP ViT")
    a, b = affine
    w = conv.double()
    out = dict(state_dict)
    out["visual.conv1.weight"] = (w * a.view(1, 3, 1, 1)).to(conv.dtype)
    shift = (w * b.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))  # (width,): the same for every patch
    new_pos = pos.double().clone()
    new_pos[1:] += shift  # row 0 is the class token, which the convolution does not touch
    out["visual.positional_embedding"] = new_pos.to(pos.dtype)
    return out


def export_openclip(model: GeometricCLIP, path: str | Path) -> Path:
    """Write a cosine ``model`` as an OpenCLIP file: ``open_clip.create_model(NAME, pretrained=path)`` loads it.

    The file is a plain state dict (OpenCLIP's released files' layout). With OpenCLIP's own preprocessing
    (``create_model_and_transforms``) it gives the embeddings euclip gives with euclip's (see the module docstring
    on normalisation). Only cosine models (elliptic geometry, inner-product logit) with OpenCLIP towers and their
    final LayerNorms: OpenCLIP scores every model by the cosine times ``exp(logit_scale)`` and always builds the
    final LayerNorms.
    """
    import open_clip

    what = f"model {model.config.model}"
    if (model.geometry, model.logit) != ("elliptic", "inner"):
        raise ValueError(f"--format openclip: OpenCLIP scores by cosine similarity; this is a {model.geometry} model "
                         f"with the {model.logit} logit (use --format paper, whose code has every geometry)")
    if model.config.towers != "openclip" or model.config.model not in open_clip.list_models():
        raise ValueError(f"--format openclip: {what} is not an OpenCLIP architecture (euclip configs and MERU's "
                         "towers have no OpenCLIP config)")
    if not model.config.final_ln:
        raise ValueError(f"--format openclip: {what} has no final LayerNorms, which OpenCLIP always builds "
                         "(use --format paper: the fork has *-no-final-ln configs)")
    sd = {k[len("towers."):]: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("towers.")}
    affine = input_affine(model, OPENCLIP_MEAN, OPENCLIP_STD)
    if affine is not None:
        sd = fold_input_normalization(sd, affine, what)
    sd = with_head(sd, {"logit_scale": model.log_logit_scale.detach().clone()})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(sd, p)
    return p


def export_paper(model: GeometricCLIP, out_dir: str | Path, source: dict | None = None,
                 train: dict | None = None) -> Path:
    """Write ``model`` as a run of the paper's fork: ``OUT/params.txt`` and ``OUT/checkpoints/epoch_latest.pt``.

    The checkpoint is the fork's ``{"epoch", "name", "state_dict"}`` (no optimizer state: for evaluation); the
    keys are prefixed as the source's were (``module.`` for a multi-GPU run of the fork), else not. ``params.txt``
    has the fork's ``geometry`` and ``model`` (``NAME-no-final-ln`` without final LayerNorms), which DataComp's and
    CLIP_benchmark's forks read, and the settings known (logit scales, entailment weight, min radius).

    Args:
        model: a GeometricCLIP with OpenCLIP towers.
        out_dir: the run folder to write.
        source: the native checkpoint's ``"source"`` (from ``euclip convert``): epoch, name, key prefix, params.
        train: training settings (``entailment_weight``, ``min_radius``, ``min_radius_final``) if known.

    Returns:
        The checkpoint's path.
    """
    source = source or {}
    train = train or {}
    what = f"model {model.config.model}"
    geometry = paper_geometry((model.geometry, model.logit))
    name = paper_model_name(model.config)
    sd = to_paper_state_dict(model)
    affine = input_affine(model, OPENCLIP_MEAN, OPENCLIP_STD)
    if affine is not None:
        sd = fold_input_normalization(sd, affine, what)
    prefix = source.get("prefix", "") if source.get("format") == "paper" else ""
    sd = {prefix + k: v for k, v in sd.items()}
    run = Path(out_dir)
    run_name = source.get("name") or run.name
    epoch = source.get("epoch") if source.get("epoch") is not None else 0
    params = dict(source.get("params") or {})
    params.update(geometry=geometry, model=name, name=run_name, siglip=False,
                  init_logit_scale=model.config.init_logit_scale,
                  max_logit_scale=math.log(model.config.max_logit_scale),
                  force_image_size=model.config.image_size, image_mean=None, image_std=None,
                  force_quick_gelu=False)
    if "entailment_weight" in train:
        params["entailment_weight"] = train["entailment_weight"]
    if "min_radius" in train:
        params["min_radius"] = train["min_radius"]
    if "min_radius_final" in train:
        params["final_min_radius"] = train["min_radius_final"]
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "params.txt").write_text(params_lines(params))
    path = run / "checkpoints" / PAPER_CHECKPOINT
    atomic_save({"epoch": epoch, "name": run_name, "state_dict": sd}, path)
    return path
