"""Reading other code's checkpoint files and telling their formats apart.

Formats (``source`` names):

* ``euclip``: euclip's own ``{"config": {"model": ...}, "model": state_dict, ...}``.
* ``paper``: the paper's OpenCLIP 2.24 fork (GitHub EIFY/open_clip, branch ``euclip``): OpenCLIP's
  training-loop file ``{epoch, name, state_dict, optimizer, scaler}`` (keys maybe prefixed ``module.``),
  plus ``alpha_img``/``alpha_txt``/``curvature`` for hyperbolic models, without ``visual.ln_post.*`` /
  ``ln_final.*`` for ``*-no-final-ln`` models; the geometry is in the run's ``params.txt``.
* ``meru``: MERU's and HyCoCLIP's ``{model: state_dict, optimizer, scheduler, scaler, iteration}``.
* ``openclip``: what ``open_clip.create_model(name, pretrained=FILE)`` reads: a state dict, maybe inside
  ``{"state_dict": ...}``, maybe ``module.``-prefixed, or a ``.safetensors`` file.

A paper checkpoint of a cosine or Euclidean model that keeps its final LayerNorms has exactly an OpenCLIP
file's keys: only its ``params.txt`` (or ``--geometry``) tells them apart.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("auto", "euclip", "paper", "meru", "openclip")
PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")  # DistributedDataParallel's, torch.compile's

# Keys that identify each layout (a file of that format has all or most of them).
MARKERS: dict[str, tuple[str, ...]] = {
    "openclip": ("token_embedding.weight", "positional_embedding", "text_projection", "logit_scale",
                 "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
                 "ln_final.weight", "visual.ln_post.weight"),
    "meru": ("visual_proj.weight", "textual_proj.weight", "textual.token_embed.weight", "textual.posit_embed",
             "logit_scale", "visual.patch_embed.proj.weight", "visual.pos_embed", "visual.cls_token",
             "visual.norm.weight", "pixel_mean", "pixel_std"),
}
# Key prefixes each layout may have; anything else is "unexpected" in error messages.
KNOWN_PREFIXES: dict[str, tuple[str, ...]] = {
    "openclip": ("visual.", "transformer.", "token_embedding.", "positional_embedding", "ln_final.",
                 "text_projection", "logit_scale", "logit_bias", "text.", "alpha_img", "alpha_txt", "curvature"),
    "meru": ("visual.", "textual.", "visual_proj.", "textual_proj.", "logit_scale", "curv", "visual_alpha",
             "textual_alpha", "pixel_mean", "pixel_std"),
}
PAPER_HYPERBOLIC_KEYS: tuple[str, ...] = ("alpha_img", "alpha_txt", "curvature")
FINAL_LN_KEYS: tuple[str, ...] = ("visual.ln_post.weight", "ln_final.weight")


@dataclass
class RawCheckpoint:
    """A checkpoint file as read: the file, the object in it, the state dict and where it was found.

    Attributes:
        path: the file read.
        obj: what ``torch.load`` returned (or the safetensors dict).
        state_dict: the model's tensors, with ``prefix`` stripped from every key.
        container: where the state dict was: ``"state_dict"`` / ``"model"`` (a key of ``obj``) or ``"root"``.
        prefix: the prefix stripped (``"module."``, ``"_orig_mod."``) or ``""``.
        meta: the other top-level entries that are plain values (``epoch``, ``name``, ``iteration``).
    """

    path: Path
    obj: object
    state_dict: dict[str, torch.Tensor]
    container: str
    prefix: str
    meta: dict = field(default_factory=dict)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the checkpoint a run directory of euclip, OpenCLIP (the paper's) or MERU points to."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    candidates = [p / "checkpoints" / "latest.pt", p / "checkpoints" / "epoch_latest.pt",
                  *_numbered(p / "checkpoints", r"epoch_(\d+)\.pt"), p / "epoch_latest.pt",
                  *_numbered(p, r"epoch_(\d+)\.pt")]
    pointer = p / "last_checkpoint.txt"  # MERU's CheckpointManager
    if pointer.is_file():
        candidates.append(p / pointer.read_text().strip())
    candidates += [p / "checkpoint_final.pth", *_numbered(p, r"checkpoint_(\d+)\.pth")]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{p}: no checkpoint found (looked for checkpoints/latest.pt, checkpoints/epoch_latest.pt, "
                            "checkpoints/epoch_N.pt, MERU's last_checkpoint.txt / checkpoint_final.pth)")


def _numbered(folder: Path, pattern: str) -> list[Path]:
    """Files of ``folder`` matching ``pattern`` (one integer group), the highest number first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in folder.iterdir() if (m := re.fullmatch(pattern, f.name))]
    return [f for _, f in sorted(found, reverse=True)]


def load_file(path: Path) -> object:
    """``torch.load`` on the CPU (tensors only where possible), or a ``.safetensors`` file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        return load_safetensors(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Training-loop files can hold other picklable objects (RNG states, numpy scalars); the user chose the file.
        log.debug("%s: not loadable with weights_only=True; loading it in full", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError as e:
        if "TorchScript" in str(e) or "jit" in str(e).lower():
            raise ValueError(f"{path}: a TorchScript archive (OpenAI's original CLIP files); load it with "
                             "open_clip.create_model(NAME, pretrained='openai') and save its state_dict() first") from e
        raise


def is_native(obj: object) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "model" in obj["config"] \
        and isinstance(obj.get("model"), dict)


def _is_tensor_dict(d: object) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(k, str) for k in d) and \
        any(isinstance(v, torch.Tensor) for v in d.values())


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove a prefix that every key carries (``module.``, ``_orig_mod.``, or both); returns ``(dict, prefix)``."""
    stripped = ""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if state_dict and all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped += prefix
                changed = True
    return state_dict, stripped


def read_checkpoint(path: str | Path, loaded: object | None = None) -> RawCheckpoint:
    """Read a checkpoint file (or a run directory's) and locate its state dict.

    Args:
        path: the file or run directory.
        loaded: the object already loaded from ``path`` (skips reading the file again).
    """
    p = resolve_checkpoint_path(path)
    obj = load_file(p) if loaded is None else loaded
    meta = {}
    if isinstance(obj, dict):
        meta = {k: v for k, v in obj.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if is_native(obj):
        return RawCheckpoint(p, obj, obj["model"], "model", "", meta)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and _is_tensor_dict(obj.get(key)):
            sd, prefix = strip_prefix(obj[key])
            return RawCheckpoint(p, obj, sd, key, prefix, meta)
    if _is_tensor_dict(obj):
        sd, prefix = strip_prefix(dict(obj))
        return RawCheckpoint(p, obj, sd, "root", prefix, {})
    kind = type(obj).__name__
    keys = list(obj)[:8] if isinstance(obj, dict) else []
    raise ValueError(f"{p}: no state dict found (a {kind}{f' with keys {keys}' if keys else ''}); euclip reads "
                     "euclip, paper (OpenCLIP fork), MERU/HyCoCLIP and OpenCLIP checkpoints")


def layout_of(state_dict: dict[str, torch.Tensor]) -> str | None:
    """``"openclip"`` (OpenCLIP's CLIP keys: also the paper's) or ``"meru"`` when the markers say so, else None."""
    keys = set(state_dict)
    if {"visual_proj.weight", "textual_proj.weight"} <= keys and any(k.startswith("textual.") for k in keys):
        return "meru"
    if "logit_scale" in keys and (("token_embedding.weight" in keys and "text_projection" in keys)
                                  or any(k.startswith("text.") for k in keys)) \
            and any(k.startswith("visual.") for k in keys):
        return "openclip"
    return None


def closest_layout(state_dict: dict[str, torch.Tensor]) -> tuple[str, list[str], list[str]]:
    """The layout whose marker keys overlap most, with its first missing markers and unexpected keys."""
    keys = set(state_dict)
    best = max(MARKERS, key=lambda f: sum(k in keys for k in MARKERS[f]) / len(MARKERS[f]))
    missing = [k for k in MARKERS[best] if k not in keys]
    unexpected = [k for k in state_dict if not k.startswith(KNOWN_PREFIXES[best])]
    return best, missing, unexpected


def first(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return f"{shown}{f' (+{len(items) - n} more)' if len(items) > n else ''}" if items else "none"
