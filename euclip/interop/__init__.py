"""Weights in, weights out: other code's checkpoints as GeometricCLIPs, and euclip models for other code.

Reading (:func:`load_checkpoint`; ``euclip convert`` writes the result as a native checkpoint):

* the paper's code (OpenCLIP 2.24 fork, EIFY/open_clip ``euclip``): :mod:`euclip.interop.paper`;
* MERU / HyCoCLIP (facebookresearch/meru, PalAvik/hycoclip): :mod:`euclip.interop.meru`;
* OpenCLIP checkpoint files, as cosine models: :mod:`euclip.interop.openclip`; and as pretrained towers for
  training another geometry: :func:`init_from_openclip`.

Writing (``euclip export``): :func:`export_openclip` (cosine models), :func:`export_paper` (the fork's run layout
with ``params.txt``), :func:`save_native`.

Every converted model reproduces its source's embeddings, logits and scalars, including the source's image
normalisation, which the model carries in ``config.image_mean``/``image_std`` (euclip's pipelines keep
feeding it euclip-normalised images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from euclip.interop.detect import (FINAL_LN_KEYS, PAPER_HYPERBOLIC_KEYS, SOURCES, RawCheckpoint, closest_layout,
                                   first, is_native, layout_of, read_checkpoint, resolve_checkpoint_path)
from euclip.interop.export import FORMATS, export_openclip, export_paper, save_native
from euclip.interop.openclip import init_from_openclip
from euclip.model import GeometricCLIP

__all__ = ["FORMATS", "SOURCES", "Converted", "convert", "detect_source", "export_openclip", "export_paper",
           "init_from_openclip", "load_checkpoint", "read_foreign", "resolve_checkpoint_path", "save_native"]

log = logging.getLogger(__name__)


@dataclass
class Converted:
    """A converted model and what is known about its source (kept in native checkpoints as ``"source"``).

    Attributes:
        model: the GeometricCLIP (CPU, eval mode).
        source: ``{"format", "path", ...}``: for the paper ``epoch``, ``name``, ``prefix``, ``params`` (its
            params.txt) and ``params_file``; for MERU ``model_class``, ``architecture`` (``"config FILE"`` or
            ``"inferred from tensor shapes"``), ``arch``, ``iteration``; for OpenCLIP ``model``.
        train: training settings that are not model settings (``entailment_weight``, ``min_radius``, ...).
    """

    model: GeometricCLIP
    source: dict
    train: dict


def detect_source(raw: RawCheckpoint, geometry: str | None = None, config: str | Path | None = None) -> tuple[str, str]:
    """``(source, why)``: which format ``raw`` is in; a ValueError naming the closest format if none.

    A state dict with OpenCLIP's keys is the paper's when its run has a ``params.txt`` with a geometry, when
    ``geometry`` is given, when it has the fork's hyperbolic parameters, or when it lacks the final LayerNorms
    (which plain OpenCLIP always has); otherwise a plain OpenCLIP file.
    """
    from euclip.interop.paper import find_params, read_params

    if is_native(raw.obj):
        return "euclip", "a euclip checkpoint (config + model)"
    layout = layout_of(raw.state_dict)
    if layout == "meru":
        return "meru", "MERU's keys (visual_proj, textual_proj, textual.*)"
    if layout == "openclip":
        params_file = Path(config) if config is not None else find_params(raw.path)
        if params_file is not None and read_params(params_file).get("geometry") is not None:
            return "paper", f"OpenCLIP keys and a geometry in {params_file}"
        if geometry is not None:
            return "paper", "OpenCLIP keys and --geometry"
        sd = raw.state_dict
        if any(k in sd for k in PAPER_HYPERBOLIC_KEYS):
            return "paper", f"the paper fork's hyperbolic parameters ({', '.join(PAPER_HYPERBOLIC_KEYS)})"
        if not any(k in sd for k in FINAL_LN_KEYS):
            return "paper", "OpenCLIP keys without final LayerNorms (the fork's *-no-final-ln models)"
        return "openclip", "OpenCLIP keys (no params.txt with a geometry beside it)"
    best, missing, unexpected = closest_layout(raw.state_dict)
    names = {"openclip": "an OpenCLIP/paper checkpoint", "meru": "a MERU checkpoint"}
    raise ValueError(f"{raw.path}: not a checkpoint format euclip reads (euclip, paper, meru, openclip). It looks most "
                     f"like {names[best]}, but lacks {first(missing)} and has unexpected keys {first(unexpected)}; "
                     f"if it is one, pass --source {best if best == 'meru' else 'openclip (or paper)'}"
                     f"{' with --config' if best == 'meru' else ' with --model and --geometry'}")


def read_foreign(path: str | Path, source: str = "auto", geometry: str | None = None,
                 model_config: str | Path | None = None, model: str | None = None,
                 loaded: object | None = None) -> Converted:
    """Read any supported checkpoint (file or run directory) into a :class:`Converted`.

    Args:
        path: the checkpoint file, or a run directory of euclip, OpenCLIP/the paper's fork, or MERU.
        source: ``auto`` (detect), ``euclip``, ``paper``, ``meru`` or ``openclip``.
        geometry: the paper's ``--geometry`` string (``euclidean-squared``, ``hyperbolic``, ...) when no
            ``params.txt`` says it (or to override it).
        model_config: MERU's training config file (``configs/train_meru_vit_b.py``), or the paper run's
            ``params.txt`` when it is not beside the checkpoint.
        model: the OpenCLIP model name (``ViT-B-32``) when the file's shapes do not settle it.
        loaded: the object already loaded from ``path``.
    """
    from euclip.interop.meru import from_meru
    from euclip.interop.openclip import from_openclip
    from euclip.interop.paper import find_params, from_paper, read_params

    if source not in SOURCES:
        raise ValueError(f"unknown --source {source!r}; valid: {', '.join(SOURCES)}")
    raw = read_checkpoint(path, loaded)
    detected, why = (source, "--source") if source != "auto" else detect_source(raw, geometry, model_config)
    if source not in ("auto", "euclip"):
        _check_forced_source(raw, source)
    log.info("%s: %s checkpoint (%s)", raw.path, detected, why)
    what = f"{detected} checkpoint {raw.path}"
    base = {"format": detected, "path": str(raw.path), "detected_by": why}
    if detected == "euclip":
        from euclip.model import load_model

        return Converted(load_model(str(raw.path)), base, {})
    if detected == "meru":
        if geometry is not None:
            log.warning("--geometry is ignored for MERU checkpoints (their keys say MERU or CLIPBaseline)")
        m, info = from_meru(raw, model_config, what)
        return Converted(m, {**base, **info}, {k: v for k, v in (("entailment_weight", info.get("entail_weight")),)
                                               if v is not None})
    if detected == "openclip":
        if geometry is not None and geometry not in ("clip",):
            raise ValueError(f"--geometry {geometry}: a plain OpenCLIP file is a cosine model; for the paper fork's "
                             "checkpoints use --source paper (or auto)")
        m = from_openclip(raw.state_dict, model, what)
        return Converted(m, {**base, "model": m.config.model, "epoch": raw.meta.get("epoch"),
                             "prefix": raw.prefix}, {})
    if detected == "paper":
        params_file = Path(model_config) if model_config is not None else find_params(raw.path)
        params = read_params(params_file) if params_file is not None else {}
        m = from_paper(raw, params, geometry, model, what)
        train = {}
        for ours, theirs in (("entailment_weight", "entailment_weight"), ("min_radius", "min_radius"),
                             ("min_radius_final", "final_min_radius")):
            if params.get(theirs) is not None:
                train[ours] = params[theirs]
        return Converted(m, {**base, "epoch": raw.meta.get("epoch", params.get("epochs")),
                             "name": raw.meta.get("name", params.get("name")), "prefix": raw.prefix,
                             "params": {k: v for k, v in params.items()},
                             "params_file": str(params_file) if params_file else None}, train)
    raise ValueError(f"unknown source {detected!r}")


def _check_forced_source(raw: RawCheckpoint, source: str) -> None:
    """A forced ``--source`` whose keys are another layout's: say so (instead of a confusing later failure)."""
    from euclip.interop.detect import KNOWN_PREFIXES, MARKERS

    layout = "meru" if source == "meru" else "openclip"
    actual = layout_of(raw.state_dict)
    if actual == layout:
        return
    keys = set(raw.state_dict)
    missing = [k for k in MARKERS[layout] if k not in keys]
    unexpected = [k for k in raw.state_dict if not k.startswith(KNOWN_PREFIXES[layout])]
    names = {"meru": "MERU's", "openclip": "OpenCLIP's"}
    found = f"it has {names[actual]} keys" if actual else "its keys are neither MERU's nor OpenCLIP's"
    raise ValueError(f"--source {source}: {raw.path} is not in {names[layout]} layout ({found}; missing "
                     f"{first(missing)}; unexpected {first(unexpected)}); try --source auto")


def load_checkpoint(path: str | Path, source: str = "auto", geometry: str | None = None,
                    model_config: str | Path | None = None, *, model: str | None = None,
                    loaded: object | None = None) -> GeometricCLIP:
    """A GeometricCLIP from a checkpoint of euclip, the paper's code, MERU/HyCoCLIP or OpenCLIP (CPU, eval mode).

    See :func:`read_foreign` for the arguments. :func:`euclip.model.load_model` calls this for every file that
    is not a native euclip checkpoint, so ``euclip eval ... OTHER.pt`` works.

    Raises:
        ValueError: an unknown format (naming the one it looks like, its first missing and unexpected keys and
            the flag that would help), or a file that does not fit the architecture it names.
        FileNotFoundError: no such file, or a run directory without a checkpoint.
    """
    return read_foreign(path, source, geometry, model_config, model, loaded).model


def convert(src: str | Path, dst: str | Path, source: str = "auto", geometry: str | None = None,
            model_config: str | Path | None = None, model: str | None = None) -> Converted:
    """``euclip convert``: read ``src`` (any supported format) and write it to ``dst`` as a native checkpoint."""
    converted = read_foreign(src, source, geometry, model_config, model)
    save_native(converted.model, dst, converted.source, converted.train)
    return converted
