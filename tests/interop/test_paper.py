"""The paper's code (its OpenCLIP 2.24 fork): checkpoints in, checkpoints out, equal to its forward pass.

A fork checkpoint is built here at tiny size from OpenCLIP's real ``CLIP`` (the fork's towers are OpenCLIP 2.24's,
whose key names and forward pass equal 3.3's for ViTs) plus the fork's extra keys as its ``model.py`` defines them,
in its training loop's file layout and run folder (``params.txt`` as its ``main.py`` writes it). The reference
forward pass is written here from the fork's maths: OpenCLIP's towers, then its scaling (1/sqrt(D) for
Euclidean geometries, exp(alpha) for hyperbolic ones) and, in float64, its exponential map and ``METRICS``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from euclip import geometry as geom
from euclip.data.transforms import image_transform
from euclip.eval.zeroshot import class_prototypes
from euclip.interop import convert, export_paper, load_checkpoint, read_foreign
from euclip.interop.paper import read_params
from euclip.model import load_model

D = 32  # the tiny config's embed_dim
# geometry -> (keeps the final LayerNorms?)
CASES = {"clip": True, "euclidean-squared": False, "hyperbolic": True, "hyperbolic-squared": False,
         "elliptic": True, "euclidean": False, "euclidean-inner": True, "hyperbolic-inner": True}


def fork_model(ih, final_ln: bool, seed: int) -> nn.Module:
    """The fork's towers: OpenCLIP's CLIP, with its ``final_layernorm: false`` configs' Identity LayerNorms."""
    torch.manual_seed(seed)
    model = ih.randomize_(open_clip.create_model(ih.TINY), seed).eval()
    if not final_ln:
        model.visual.ln_post = nn.Identity()
        model.ln_final = nn.Identity()
    return model


def fork_state_dict(model: nn.Module, geometry: str, seed: int) -> dict[str, torch.Tensor]:
    """The fork's ``CLIP.state_dict()``: own tensors, logit_scale, then alpha_img, alpha_txt, curvature, sub-modules."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(model.state_dict())
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07)) + 0.3 * torch.randn((), generator=g)
    extras = {}
    if geometry.startswith("hyperbolic"):
        dim_scale = math.log(math.sqrt(1 / D))
        extras = {"alpha_img": torch.tensor(dim_scale) + 0.3 * torch.randn((), generator=g),
                  "alpha_txt": torch.tensor(dim_scale) + 0.3 * torch.randn((), generator=g),
                  "curvature": torch.tensor(math.log(0.6)) + 0.2 * torch.randn((), generator=g)}
    own = [k for k in sd if "." not in k]
    return {**{k: sd[k] for k in own}, **extras, **{k: v for k, v in sd.items() if k not in own}}


def write_fork_run(root: Path, model_name: str, geometry: str, state_dict: dict, params: bool = True,
                   prefix: str = "module.") -> Path:
    """``root/params.txt`` and ``root/checkpoints/epoch_3.pt`` as the fork's main.py writes them (DDP: module.)."""
    (root / "checkpoints").mkdir(parents=True)
    if params:
        args = {"model": model_name, "geometry": geometry, "name": root.name, "epochs": 3, "entailment_weight": 0.2,
                "min_radius": 0.1, "final_min_radius": None, "init_logit_scale": None, "max_logit_scale": math.log(100),
                "force_image_size": None, "force_quick_gelu": False, "image_mean": None, "image_std": None,
                "siglip": False, "lr": 0.0005, "precision": "amp", "train_data": "/data/{00000..00099}.tar"}
        (root / "params.txt").write_text("".join(f"{k}: {args[k]}\n" for k in sorted(args)))
    optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)])
    path = root / "checkpoints" / "epoch_3.pt"
    torch.save({"epoch": 3, "name": root.name, "state_dict": {prefix + k: v for k, v in state_dict.items()},
                "optimizer": optimizer.state_dict(), "scaler": {"scale": 65536.0, "growth_factor": 2.0}}, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# The fork's maths, in float64
# ----------------------------------------------------------------------------------------------------------------


def fork_features(model, sd, geometry, images, tokens):
    """The fork's ``forward``: per-tower features scaled for the geometry (tangent vectors when hyperbolic)."""
    with torch.no_grad():
        fi, ft = model.encode_image(images).double(), model.encode_text(tokens).double()
    if geometry in ("clip", "elliptic"):
        return fi / fi.norm(dim=-1, keepdim=True), ft / ft.norm(dim=-1, keepdim=True)
    if geometry.startswith("euclidean"):
        return fi * math.sqrt(1 / D), ft * math.sqrt(1 / D)
    return fi * sd["alpha_img"].double().exp(), ft * sd["alpha_txt"].double().exp()


def fork_curvature(sd) -> torch.Tensor:
    return sd["curvature"].double().exp().clamp(0.1, 10.0)


def exp_map(v, c):
    r = c.sqrt() * v.norm(dim=-1, keepdim=True)
    return torch.sinh(r) / r * v


def fork_logits(x, y, geometry, c):
    """The fork's ``METRICS[geometry](x, y, c)`` (before the logit scale)."""
    if geometry in ("clip", "euclidean-inner"):
        return x @ y.T
    if geometry == "elliptic":
        return -torch.acos(x @ y.T)
    if geometry.startswith("euclidean"):
        squared = (x * x).sum(-1, keepdim=True) - 2 * x @ y.T + (y * y).sum(-1, keepdim=True).T
        return -squared if geometry == "euclidean-squared" else -squared.sqrt()
    xs, ys = exp_map(x, c), exp_map(y, c)
    xt, yt = torch.sqrt(1 / c + (xs ** 2).sum(-1)), torch.sqrt(1 / c + (ys ** 2).sum(-1))
    inner = xs @ ys.T - torch.outer(xt, yt)
    if geometry == "hyperbolic-inner":
        return inner
    d = torch.acosh(-c * inner)
    return -d / c.sqrt() if geometry == "hyperbolic" else -d ** 2 / c


@pytest.fixture(scope="module")
def inputs(ih):
    pil = ih.random_images(5, seed=7)
    theirs = open_clip.image_transform(32, is_train=False)  # OpenCLIP's evaluation preprocessing (OpenAI mean/std)
    ours = image_transform(32, train=False)
    texts = ["a photo of a circle", "two squares", "a triangle on a red background, drawn with a pen", "x"]
    tokens = open_clip.get_tokenizer(ih.TINY)(texts)
    return (torch.stack([theirs(i) for i in pil]), torch.stack([ours(i) for i in pil]), texts, tokens)


@pytest.mark.parametrize("geometry", list(CASES))
def test_embeddings_logits_and_scalars_equal_the_fork(ih, tmp_path, inputs, geometry):
    final_ln = CASES[geometry]
    fork = fork_model(ih, final_ln, seed=len(geometry))
    sd = fork_state_dict(fork, geometry, seed=1)
    name = ih.TINY if final_ln else ih.TINY + "-no-final-ln"
    path = write_fork_run(tmp_path / "run1", name, geometry, sd)
    theirs_images, our_images, texts, tokens = inputs

    model = load_checkpoint(path)
    assert (model.geometry, model.logit) == geom.ALIASES[geometry] and model.config.final_ln == final_ln
    assert torch.equal(model.tokenizer()(texts), tokens)
    xi, xt = fork_features(fork, sd, geometry, theirs_images, tokens)
    with torch.no_grad():
        ei, et = model.encode_image(our_images), model.encode_text(tokens)
        logits = model.logit_scale * geom.pairwise_logits(ei, et, model.geometry, model.logit, model.curvature)
    hyperbolic = geometry.startswith("hyperbolic")
    c = fork_curvature(sd) if hyperbolic else None
    points_i, points_t = (exp_map(xi, c), exp_map(xt, c)) if hyperbolic else (xi, xt)
    assert ih.relative_error(ei, points_i) < 1e-5 and ih.relative_error(et, points_t) < 1e-5
    reference = sd["logit_scale"].double().exp() * fork_logits(xi, xt, geometry, c)
    assert ih.relative_error(logits, reference) < 1e-5
    assert model.logit_scale.item() == pytest.approx(sd["logit_scale"].exp().item(), rel=1e-6)
    if hyperbolic:
        with torch.no_grad():
            tangent = model.tangent_features(model.towers.encode_image(our_images), "image")
        assert ih.relative_error(tangent, xi) < 1e-5
        scalars = model.scalars()
        assert scalars["curvature"] == pytest.approx(c.item(), rel=1e-6)
        assert scalars["alpha_image"] == pytest.approx(sd["alpha_img"].exp().item(), rel=1e-6)
        assert scalars["alpha_text"] == pytest.approx(sd["alpha_txt"].exp().item(), rel=1e-6)


@pytest.mark.parametrize("geometry", ["clip", "euclidean-squared", "hyperbolic", "elliptic"])
def test_class_prototypes_follow_the_forks_rule(ih, tmp_path, geometry):
    """The fork's zero-shot classifier: template mean of the forward's text features, re-normalised on the sphere."""
    final_ln = CASES[geometry]
    fork = fork_model(ih, final_ln, seed=3)
    sd = fork_state_dict(fork, geometry, seed=4)
    path = write_fork_run(tmp_path / "run", ih.TINY if final_ln else ih.TINY + "-no-final-ln", geometry, sd)
    model = load_checkpoint(path)
    tokenizer = open_clip.get_tokenizer(ih.TINY)
    texts = [t.format(c) for c in ih.CLASSES for t in ih.TEMPLATES]
    _, features = fork_features(fork, sd, geometry, torch.zeros(1, 3, 32, 32), tokenizer(texts))
    fork_protos = features.view(len(ih.CLASSES), len(ih.TEMPLATES), -1).mean(1)
    if geometry in ("clip", "elliptic"):
        fork_protos = fork_protos / fork_protos.norm(dim=-1, keepdim=True)
    if geometry.startswith("hyperbolic"):  # its logit maps the (tangent) prototype onto the hyperboloid
        fork_protos = exp_map(fork_protos, fork_curvature(sd))
    ours = class_prototypes(model, list(ih.CLASSES), list(ih.TEMPLATES), model.tokenizer())
    assert ih.relative_error(ours, fork_protos) < 1e-5


def test_round_trip_is_key_for_key_equal(ih, tmp_path):
    fork = fork_model(ih, final_ln=False, seed=5)
    sd = fork_state_dict(fork, "hyperbolic", seed=6)
    src = write_fork_run(tmp_path / "meru-b32", ih.TINY + "-no-final-ln", "hyperbolic", sd)
    native = tmp_path / "native.pt"
    assert ih.run_cli(["convert", str(src), "--output", str(native)]) == 0
    out = tmp_path / "exported"
    assert ih.run_cli(["export", str(native), "--format", "paper", "--output", str(out)]) == 0

    original = torch.load(src, weights_only=False)
    exported = torch.load(out / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert list(exported["state_dict"]) == list(original["state_dict"])  # same keys, same order, same prefix
    for k, v in original["state_dict"].items():
        assert torch.equal(exported["state_dict"][k], v), k
    assert (exported["epoch"], exported["name"]) == (3, "meru-b32")
    params, original_params = read_params(out / "params.txt"), read_params(tmp_path / "meru-b32" / "params.txt")
    for key in ("geometry", "model", "entailment_weight", "min_radius", "name"):
        assert params[key] == original_params[key], key
    # DataComp's fork parses `geometry: X` lines with line.split(': ')
    lines = dict(line.split(": ", 1) for line in (out / "params.txt").read_text().splitlines())
    assert lines["geometry"] == "hyperbolic" and lines["model"] == ih.TINY + "-no-final-ln"


def test_export_of_a_native_model_feeds_openclip_normalised_images(ih, tmp_path, inputs):
    """A euclip-trained model (euclip's 0.5 normalisation) exported for the fork: its preprocessing, same points."""
    from dataclasses import asdict

    from euclip.model import GeometricCLIP, ModelConfig

    torch.manual_seed(0)
    model = ih.randomize_(GeometricCLIP(ModelConfig(model=ih.TINY, geometry="euclidean", logit="squared")), 9).eval()
    torch.save({"config": {"model": asdict(model.config), "min_radius": 0.2}, "model": model.state_dict()},
               tmp_path / "m.pt")
    assert ih.run_cli(["export", str(tmp_path / "m.pt"), "--format", "paper", "--output", str(tmp_path / "x")]) == 0
    sd = torch.load(tmp_path / "x" / "checkpoints" / "epoch_latest.pt", weights_only=True)["state_dict"]
    fork = fork_model(ih, final_ln=False, seed=0)
    fork.load_state_dict({k: v for k, v in sd.items()}, strict=True)
    theirs_images, our_images, _, tokens = inputs
    xi, xt = fork_features(fork, sd, "euclidean-squared", theirs_images, tokens)
    with torch.no_grad():
        assert ih.relative_error(model.encode_image(our_images), xi) < 1e-5
        assert ih.relative_error(model.encode_text(tokens), xt) < 1e-5
    assert read_params(tmp_path / "x" / "params.txt")["min_radius"] == 0.2


def test_geometry_comes_from_params_or_the_flag(ih, tmp_path):
    fork = fork_model(ih, final_ln=False, seed=2)
    sd = fork_state_dict(fork, "hyperbolic-squared", seed=2)
    path = write_fork_run(tmp_path / "bare", ih.TINY, "hyperbolic-squared", sd, params=False)
    with pytest.raises(ValueError, match="--geometry"):
        load_checkpoint(path)
    model = load_checkpoint(path, geometry="hyperbolic-squared")
    assert (model.geometry, model.logit, model.config.final_ln) == ("hyperbolic", "squared", False)
    with pytest.raises(ValueError, match="lacks alpha_img"):
        load_checkpoint(write_fork_run(tmp_path / "e", ih.TINY, "euclidean", fork_state_dict(fork, "clip", 1),
                                       params=False), geometry="hyperbolic")
    with pytest.raises(ValueError, match="hyperbolic parameters"):
        load_checkpoint(path, geometry="euclidean-squared")
    params = tmp_path / "elsewhere.txt"
    params.write_text(f"geometry: hyperbolic-squared\nmodel: {ih.TINY}-no-final-ln\n")
    converted = read_foreign(path, model_config=params)
    assert converted.source["format"] == "paper" and converted.model.logit == "squared"


def test_eval_commands_read_fork_runs(ih, tmp_path, image_folder, templates_file):
    """`euclip eval zeroshot` on the fork's checkpoint file, its run folder and the converted file."""
    fork = fork_model(ih, final_ln=False, seed=8)
    path = write_fork_run(tmp_path / "euclip-run", ih.TINY + "-no-final-ln", "euclidean-squared",
                          fork_state_dict(fork, "euclidean-squared", 8))
    outs = []
    for i, target in enumerate([path, tmp_path / "euclip-run"]):
        out = tmp_path / f"zs{i}.json"
        assert ih.run_cli(["eval", "zeroshot", str(target), "--data", str(image_folder), "--templates",
                           str(templates_file), "--device", "cpu", "--output", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["num_samples"] == 6 and outs[0]["top1"] == outs[1]["top1"]
    native = tmp_path / "converted.pt"
    convert(path, native)
    assert load_model(str(native)).config.final_ln is False
    for command in (["eval", "retrieval"], ["eval", "geometry"]):
        out = tmp_path / f"{command[1]}.json"
        assert ih.run_cli([*command, str(native), "--num-samples", "12", "--device", "cpu", "--no-progress",
                           "--output", str(out)]) == 0
        assert json.loads(out.read_text())


def test_export_paper_names(ih, tmp_path):
    fork = fork_model(ih, final_ln=True, seed=1)
    model = load_checkpoint(write_fork_run(tmp_path / "r", ih.TINY, "clip", fork_state_dict(fork, "clip", 1)))
    export_paper(model, tmp_path / "out")
    assert read_params(tmp_path / "out" / "params.txt")["model"] == ih.TINY
    model.config.logit = "squared"  # elliptic with the squared logit: the fork has no such geometry
    with pytest.raises(ValueError, match="no geometry for elliptic"):
        export_paper(model, tmp_path / "out2")
