"""MERU's and HyCoCLIP's checkpoints (facebookresearch/meru, PalAvik/hycoclip) as GeometricCLIPs.

A checkpoint is ``{"model": state_dict, "optimizer", "scheduler", "scaler", "iteration"}``. MERU's model
(``meru/models.py``) maps images (``[0, 1]`` pixels, normalised inside the model by its ``pixel_mean`` /
``pixel_std`` buffers) and token lists through its towers (:mod:`euclip.interop.meru_towers`), then

* ``MERU`` (and ``HyCoCLIP``, a subclass): ``exp_map0(f · exp(alpha), exp(curv))`` per tower
  (``visual_alpha``, ``textual_alpha``, ``curv``: log-parametrised), logits ``−d(x, y)`` on the hyperboloid:
  euclip's hyperbolic geometry with the distance logit, final LayerNorms kept;
* ``CLIPBaseline``: ``f / ||f||``, cosine logits: euclip's elliptic geometry with the inner-product logit.

Both multiply the logits by ``exp(logit_scale)`` after clamping ``logit_scale`` to at most 4.6052 (ln 100),
which the conversion applies; ``curv`` and the alphas are used as stored (MERU's evaluation code does not clamp
them). Zero-shot prototypes in MERU: the text features' mean, times ``exp(textual_alpha)``, mapped by
``exp_map0`` (hyperbolic), or the normalised mean of normalised features (CLIP): what
:func:`euclip.eval.zeroshot.class_prototypes` computes. MERU scores classes by the Lorentzian inner product,
a monotone function of the distance euclip scores with, so the predicted classes are the same.

The architecture is MERU's config file (``--config configs/train_meru_vit_b.py``: read as text, never run),
or inferred from the tensor shapes. Shapes fix every size but the number of attention heads; those follow
MERU's conventions: ``width // 64`` for the text transformer (its default when the arch string has no
``A``), 12 for the 384-wide ViT (MERU's ``vit_small_mocov3_patch16_224``), ``width // 64`` for the other ViTs
(timm's ViT-B and ViT-L).
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import torch

from euclip.interop.common import build_and_load, scalar
from euclip.interop.detect import RawCheckpoint
from euclip.interop.meru_towers import MeruArch, sincos_pos_embed
from euclip.model import CURVATURE_RANGE, GeometricCLIP, ModelConfig

log = logging.getLogger(__name__)

MERU_PIXEL_MEAN = (0.485, 0.456, 0.406)  # MERU's defaults (ImageNet's), used when a file lacks the buffers
MERU_PIXEL_STD = (0.229, 0.224, 0.225)
MAX_LOG_LOGIT_SCALE = 4.6052  # MERU's clamp, "ln(100) = ~4.6052"
HYPERBOLIC_KEYS = ("curv", "visual_alpha", "textual_alpha")
HYPERBOLIC_CLASSES = ("MERU", "HyCoCLIP")
# Sizes (width, depth, patch, image) of MERU's three image towers.
_VIT_SIZES = {"vit_small_mocov3_patch16_224": (384, 12, 16, 224), "vit_base_patch16_224": (768, 12, 16, 224),
              "vit_large_patch16_224": (1024, 24, 16, 224)}


# ----------------------------------------------------------------------------------------------------------------
# MERU's lazy config files, read as text
# ----------------------------------------------------------------------------------------------------------------


def parse_meru_config(path: str | Path) -> dict:
    """The ``model`` of a MERU/HyCoCLIP training config (Detectron2-style lazy config), as a nested dict.

    The file is parsed, not executed (it imports MERU): ``model = L(MERU)(visual=L(build_timm_vit)(arch=...),
    textual=L(TransformerTextEncoder)(arch="L12_W512", ...), embed_dim=512, ...)`` becomes
    ``{"_target_": "MERU", "visual": {"_target_": "build_timm_vit", "arch": ...}, ...}``; ``from .other import
    model`` reads the sibling file first, and ``model.visual.arch = "..."`` overrides are applied in order.
    Values other than literals (``"${...}"`` interpolations are strings) are ``None``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: no such file: {p}")
    namespace: dict = {}
    try:
        tree = ast.parse(p.read_text(), filename=str(p))
    except SyntaxError as e:
        raise ValueError(f"--config {p}: not a Python config file ({e})") from None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .train_meru_vit_l import dataset, model, ...
                sibling = p.parent / f"{node.module}.py"
                if sibling.is_file():
                    other = _parse_namespace(sibling)
                    for alias in node.names:
                        if alias.name in other:
                            namespace[alias.asname or alias.name] = other[alias.name]
            else:
                for alias in node.names:
                    namespace[alias.asname or alias.name] = alias.name  # a symbol: its name
        elif isinstance(node, ast.Assign):
            value = _evaluate(node.value, namespace)
            for target in node.targets:
                _assign(target, value, namespace)
    model = namespace.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"--config {p}: no `model = L(MERU)(...)` (or CLIPBaseline, HyCoCLIP) found")
    return model


def _parse_namespace(path: Path) -> dict:
    model = parse_meru_config(path)
    return {"model": model}


def _evaluate(node: ast.AST, namespace: dict):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_evaluate(e, namespace) for e in node.elts]
    if isinstance(node, ast.Name):
        value = namespace.get(node.id, node.id)
        return _copy(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand, namespace)
        return -value if isinstance(value, (int, float)) else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Call) and len(node.func.args) == 1:
        # L(Target)(**kwargs): a lazy call
        target = _evaluate(node.func.args[0], namespace)
        out = {"_target_": target if isinstance(target, str) else None}
        out.update({kw.arg: _evaluate(kw.value, namespace) for kw in node.keywords if kw.arg})
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {kw.arg: _evaluate(kw.value, namespace) for kw in node.keywords if kw.arg}
    return None


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _assign(target: ast.AST, value, namespace: dict) -> None:
    if isinstance(target, ast.Name):
        namespace[target.id] = value
        return
    path = []
    while isinstance(target, ast.Attribute):
        path.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name) and isinstance(namespace.get(target.id), dict):
        obj = namespace[target.id]
        for key in reversed(path[1:]):
            obj = obj.setdefault(key, {})
            if not isinstance(obj, dict):
                return
        obj[path[0]] = value


def parse_text_arch(arch: str) -> tuple[int, int, int]:
    """``L12_W512`` → ``(layers, width, heads)``; heads from ``_A8`` or MERU's default ``width // 64``."""
    layers, width = re.search(r"L(\d+)", arch or ""), re.search(r"W(\d+)", arch or "")
    if not layers or not width:
        raise ValueError(f"MERU text arch {arch!r} is not of the form L<layers>_W<width>[_A<heads>]")
    heads = re.search(r"A(\d+)", arch)
    w = int(width.group(1))
    return int(layers.group(1)), w, int(heads.group(1)) if heads else w // 64


def arch_from_config(model: dict, what: str) -> tuple[MeruArch, dict]:
    """``(MeruArch, extras)`` from :func:`parse_meru_config`'s dict; extras: ``model_class``, ``curv_init``, ..."""
    visual, textual = model.get("visual") or {}, model.get("textual") or {}
    if not visual.get("arch") or not textual.get("arch"):
        raise ValueError(f"{what}: the config's model has no visual.arch / textual.arch")
    layers, width, heads = parse_text_arch(textual["arch"])
    arch = MeruArch(visual_arch=visual["arch"], global_pool=visual.get("global_pool") or "token",
                    use_sincos2d_pos=visual.get("use_sincos2d_pos", True) is not False,
                    text_layers=layers, text_width=width, text_heads=heads,
                    vocab_size=int(textual.get("vocab_size") or 49408),
                    context_length=int(textual.get("context_length") or 77),
                    embed_dim=int(model.get("embed_dim") or 512))
    extras = {k: model.get(k) for k in ("curv_init", "learn_curv", "entail_weight", "pixel_mean", "pixel_std")
              if model.get(k) is not None}
    extras["model_class"] = model.get("_target_")
    return arch, extras


# ----------------------------------------------------------------------------------------------------------------
# The architecture from the tensor shapes
# ----------------------------------------------------------------------------------------------------------------


def _count(state_dict: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def infer_arch(state_dict: dict[str, torch.Tensor], what: str) -> MeruArch:
    """MERU's architecture from its checkpoint's shapes (heads by MERU's conventions: see the module docstring)."""
    try:
        width, _, patch, _ = state_dict["visual.patch_embed.proj.weight"].shape
        tokens = state_dict["visual.pos_embed"].shape[1]
        vocab, t_width = state_dict["textual.token_embed.weight"].shape
        context = state_dict["textual.posit_embed"].shape[0]
        embed_dim = state_dict["visual_proj.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"{what}: cannot infer MERU's architecture, no {e.args[0]}; pass --config") from None
    class_token = "visual.cls_token" in state_dict
    grid = round((tokens - class_token) ** 0.5)
    if grid * grid != tokens - class_token:
        raise ValueError(f"{what}: pos_embed has {tokens} tokens, not a square grid; pass --config")
    depth = _count(state_dict, "visual.blocks.")
    fc1 = state_dict.get("visual.blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / width if fc1 is not None else 4.0
    image = grid * patch
    name = next((n for n, size in _VIT_SIZES.items() if size == (width, depth, patch, image)), None)
    if name is not None and mlp_ratio == 4.0:
        kwargs = {}
    else:  # not one of MERU's image towers: a timm ViT of these sizes
        name = "vit_base_patch16_224"
        kwargs = {"embed_dim": int(width), "depth": depth, "num_heads": max(int(width) // 64, 1),
                  "patch_size": int(patch), "img_size": int(image), "mlp_ratio": mlp_ratio}
    pos = state_dict["visual.pos_embed"].float()
    sincos = pos.shape[-1] % 4 == 0 and torch.allclose(pos, sincos_pos_embed((grid, grid), pos.shape[-1],
                                                                              class_token), atol=1e-6)
    arch = MeruArch(visual_arch=name, visual_kwargs=kwargs, global_pool="token" if class_token else "avg",
                    use_sincos2d_pos=bool(sincos), text_layers=_count(state_dict, "textual.resblocks."),
                    text_width=int(t_width), text_heads=max(int(t_width) // 64, 1), vocab_size=int(vocab),
                    context_length=int(context), embed_dim=int(embed_dim))
    log.info("%s: MERU architecture inferred from the tensor shapes: %s (image: %s%s), text %s; attention heads by "
             "MERU's conventions (pass --config with the training config to be sure)", what, name, name,
             f" with {kwargs}" if kwargs else "", arch.text_arch)
    return arch


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------


def meru_info(raw: RawCheckpoint, config_path: str | Path | None, what: str) -> tuple[MeruArch, dict, str]:
    """``(arch, extras, how)``: from ``--config`` if given, else from the shapes; ``how`` says which."""
    if config_path is not None:
        arch, extras = arch_from_config(parse_meru_config(config_path), f"--config {config_path}")
        return arch, extras, f"config {config_path}"
    return infer_arch(raw.state_dict, what), {}, "inferred from tensor shapes"


def from_meru(raw: RawCheckpoint, config_path: str | Path | None = None, what: str = "MERU checkpoint"
              ) -> tuple[GeometricCLIP, dict]:
    """A GeometricCLIP equal to the MERU/HyCoCLIP/CLIPBaseline model in ``raw``; returns ``(model, info)``."""
    sd = raw.state_dict
    arch, extras, how = meru_info(raw, config_path, what)
    hyperbolic = all(k in sd for k in HYPERBOLIC_KEYS)
    if any(k in sd for k in HYPERBOLIC_KEYS) and not hyperbolic:
        raise ValueError(f"{what}: has only some of {', '.join(HYPERBOLIC_KEYS)}")
    declared = extras.get("model_class")
    if declared and (declared in HYPERBOLIC_CLASSES) != hyperbolic:
        raise ValueError(f"{what}: --config builds {declared} but the checkpoint is "
                         f"{'hyperbolic (MERU)' if hyperbolic else 'a CLIPBaseline'}; check --config")
    mean = tuple(sd["pixel_mean"].flatten().tolist()) if "pixel_mean" in sd else MERU_PIXEL_MEAN
    std = tuple(sd["pixel_std"].flatten().tolist()) if "pixel_std" in sd else MERU_PIXEL_STD
    if "pixel_mean" not in sd:
        log.warning("%s: no pixel_mean/pixel_std buffers; using MERU's defaults %s / %s", what, mean, std)
    lo, hi = CURVATURE_RANGE
    curv_init = min(max(float(extras.get("curv_init", 1.0)), lo), hi)
    config = ModelConfig(model=f"meru-{arch.visual_arch}", geometry="hyperbolic" if hyperbolic else "elliptic",
                         logit="distance" if hyperbolic else "inner", final_ln=True, towers="meru",
                         tower_config=arch.to_dict(), image_mean=mean, image_std=std,
                         init_logit_scale=float(torch.tensor(1 / 0.07).log()), curvature=curv_init,
                         learn_curvature=extras.get("learn_curv", True) is not False)
    out = {f"towers.{k}": v for k, v in sd.items()
           if k.startswith(("visual.", "textual.", "visual_proj.", "textual_proj."))}
    out["log_logit_scale"] = scalar(sd["logit_scale"]).clamp(max=MAX_LOG_LOGIT_SCALE)
    if hyperbolic:
        out["log_curvature"] = scalar(sd["curv"])
        out["log_alpha_image"] = scalar(sd["visual_alpha"])
        out["log_alpha_text"] = scalar(sd["textual_alpha"])
    extra_keys = [k for k in sd if f"towers.{k}" not in out and k not in
                  ("logit_scale", "pixel_mean", "pixel_std", *HYPERBOLIC_KEYS)]
    if extra_keys:
        raise ValueError(f"{what}: keys MERU's models do not have: {extra_keys[:5]}; is it a MERU checkpoint?")
    model = build_and_load(config, out, what, "Pass the training config with --config (or check it).")
    info = {"format": "meru", "model_class": declared or ("MERU" if hyperbolic else "CLIPBaseline"),
            "architecture": how, "arch": arch.to_dict(), "entail_weight": extras.get("entail_weight"),
            "iteration": raw.meta.get("iteration")}
    return model, info
