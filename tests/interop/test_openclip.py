"""OpenCLIP files in (as cosine models, and as pretrained towers for another geometry) and out.

The reference is OpenCLIP itself: ``open_clip.create_model_and_transforms(name, pretrained=FILE)``, its own
preprocessing and its ``encode_image``/``encode_text``/``get_logits``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import open_clip
import pytest
import torch

from euclip import geometry as geom
from euclip.data.transforms import image_transform
from euclip.interop import export_openclip, init_from_openclip, load_checkpoint, read_foreign
from euclip.interop.openclip import OPENCLIP_MEAN, matching_models
from euclip.model import GeometricCLIP, ModelConfig


def openclip_file(ih, path, seed=0, wrap=None):
    torch.manual_seed(seed)
    model = ih.randomize_(open_clip.create_model(ih.TINY), seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07) + 0.2)
    sd = model.state_dict()
    torch.save(sd if wrap is None else {"epoch": 2, "name": "r", "state_dict": {wrap + k: v for k, v in sd.items()}},
               path)
    return path


def openclip_outputs(name, file, pil, texts):
    """Embeddings and logits by OpenCLIP's own pipeline: its preprocessing, its model, its logits."""
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(file))
    model.eval()
    images = torch.stack([preprocess(i) for i in pil])
    tokens = open_clip.get_tokenizer(name)(texts)
    with torch.no_grad():
        image, text = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
        logits, _ = model.get_logits(images, tokens)
    return image, text, logits


def euclip_outputs(model, pil, texts):
    images = torch.stack([image_transform(model.image_size, train=False)(i) for i in pil])
    tokens = model.tokenizer()(texts)
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(tokens)
        logits = model.logit_scale * geom.pairwise_logits(image, text, model.geometry, model.logit, model.curvature)
    return image, text, logits


TEXTS = ["a photo of a dog", "a square", "three red triangles on a table"]


@pytest.mark.parametrize("wrap", [None, "module."], ids=["state_dict", "training_file"])
def test_openclip_file_is_a_cosine_model_with_openclips_outputs(ih, tmp_path, wrap):
    path = openclip_file(ih, tmp_path / "open_clip_pytorch_model.bin", wrap=wrap)
    converted = read_foreign(path)
    model = converted.model
    assert converted.source["format"] == "openclip" and model.config.model == ih.TINY  # inferred from the shapes
    assert (model.geometry, model.logit, model.config.final_ln) == ("elliptic", "inner", True)
    pil = ih.random_images(4, seed=3)
    for ours, theirs in zip(euclip_outputs(model, pil, TEXTS), openclip_outputs(ih.TINY, path, pil, TEXTS)):
        assert ih.relative_error(ours, theirs) < 1e-5


def test_export_round_trip_gives_openclip_the_same_embeddings(ih, tmp_path):
    """A euclip cosine model (euclip's own 0.5 normalisation) → --format openclip → plain OpenCLIP."""
    torch.manual_seed(0)
    model = ih.randomize_(GeometricCLIP(ModelConfig(model=ih.TINY, geometry="elliptic", logit="inner",
                                                    final_ln=True)), 4).eval()
    torch.save({"config": {"model": asdict(model.config)}, "model": model.state_dict()}, tmp_path / "native.pt")
    out = tmp_path / "exported.bin"
    assert ih.run_cli(["export", str(tmp_path / "native.pt"), "--format", "openclip", "--output", str(out)]) == 0
    pil = ih.random_images(4, seed=5)
    theirs = openclip_outputs(ih.TINY, out, pil, TEXTS)
    for ours, ref in zip(euclip_outputs(model, pil, TEXTS), theirs):
        assert ih.relative_error(ours, ref) < 1e-5
    # A model that already expects OpenCLIP's normalisation is written unchanged.
    original = openclip_file(ih, tmp_path / "o.bin", seed=2)
    export_openclip(load_checkpoint(original), tmp_path / "again.bin")
    a, b = torch.load(original, weights_only=True), torch.load(tmp_path / "again.bin", weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_what_openclip_cannot_score(ih):
    for config in (ModelConfig(model=ih.TINY, geometry="euclidean", logit="squared"),  # not cosine
                   ModelConfig(model=ih.TINY, geometry="elliptic", logit="inner", final_ln=False),  # no final LN
                   ModelConfig(model="tiny", geometry="elliptic", logit="inner", final_ln=True)):  # euclip towers
        with pytest.raises(ValueError, match="--format openclip"):
            export_openclip(GeometricCLIP(config), "unused.bin")


def test_init_from_openclip_for_euclip_training(ih, tmp_path):
    """`euclip train --pretrained FILE --preset euclip`: towers from the file, final LayerNorms dropped."""
    path = openclip_file(ih, tmp_path / "pretrained.bin", seed=6, wrap="module.")
    model = GeometricCLIP(ModelConfig(model=ih.TINY, geometry="euclidean", logit="squared", final_ln=False))
    scale_before = model.log_logit_scale.item()
    report = init_from_openclip(model, path)
    assert sorted(report["dropped"]) == ["ln_final.bias", "ln_final.weight", "logit_scale", "visual.ln_post.bias",
                                         "visual.ln_post.weight"]
    assert model.log_logit_scale.item() == scale_before and not report["logit_scale"]
    assert model.config.image_mean == OPENCLIP_MEAN
    source = torch.load(path, weights_only=True)["state_dict"]
    for k, v in model.towers.state_dict().items():
        assert torch.equal(v, source["module." + k]), k
    # The towers see what OpenCLIP's towers saw: OpenCLIP's model without its final LayerNorms, its preprocessing.
    reference, _, preprocess = open_clip.create_model_and_transforms(ih.TINY, pretrained=str(path))
    reference.visual.ln_post, reference.ln_final = torch.nn.Identity(), torch.nn.Identity()
    pil = ih.random_images(3, seed=1)
    with torch.no_grad():
        theirs = reference.eval().encode_image(torch.stack([preprocess(i) for i in pil]))
        ours = model.eval().towers.encode_image(torch.stack([image_transform(32, train=False)(i) for i in pil]))
    assert ih.relative_error(ours, theirs) < 1e-5
    clip = GeometricCLIP(ModelConfig(model=ih.TINY, geometry="elliptic", logit="inner", final_ln=True))
    assert init_from_openclip(clip, path)["logit_scale"] and clip.log_logit_scale.item() == pytest.approx(
        source["module.logit_scale"].item())
    with pytest.raises(ValueError, match="does not fit --model ViT-S-32"):
        init_from_openclip(GeometricCLIP(ModelConfig(model="ViT-S-32", final_ln=False)), path)


def test_model_name_from_shapes_or_the_flag(ih, tmp_path):
    vit_b = open_clip.create_model("ViT-B-32").state_dict()
    assert matching_models(vit_b) == ["ViT-B-32", "ViT-B-32-quickgelu"]
    torch.save({k: v for k, v in vit_b.items()}, tmp_path / "b32.bin")
    with pytest.raises(ValueError, match="ViT-B-32, ViT-B-32-quickgelu.*--model"):
        load_checkpoint(tmp_path / "b32.bin")
    assert load_checkpoint(tmp_path / "b32.bin", model="ViT-B-32-quickgelu").config.model == "ViT-B-32-quickgelu"


def test_unknown_and_mismatched_files_name_the_format_and_the_flag(ih, tmp_path):
    sd = torch.load(openclip_file(ih, tmp_path / "o.bin"), weights_only=True)
    broken = {k: v for k, v in sd.items() if k != "logit_scale" and not k.startswith("token_embedding")}
    broken["my_head.weight"] = torch.zeros(2)
    torch.save(broken, tmp_path / "broken.bin")
    with pytest.raises(ValueError, match=r"looks most like an OpenCLIP.*token_embedding.weight.*my_head.weight.*"
                                         r"--source openclip"):
        load_checkpoint(tmp_path / "broken.bin")
    with pytest.raises(ValueError, match=r"--source meru: .*not in MERU's layout \(it has OpenCLIP's keys; missing "
                                         r"visual_proj.weight.*--source auto"):
        load_checkpoint(tmp_path / "o.bin", source="meru")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="no state dict found"):
        load_checkpoint(tmp_path / "odd.pt")
    assert ih.run_cli(["eval", "zeroshot", str(tmp_path / "broken.bin"), "--device", "cpu"]) == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        load_checkpoint(tmp_path)


def test_eval_zeroshot_reads_openclip_files(ih, tmp_path, image_folder, templates_file):
    path = openclip_file(ih, tmp_path / "clip.bin", seed=8)
    out = tmp_path / "zs.json"
    assert ih.run_cli(["eval", "zeroshot", str(path), "--data", str(image_folder), "--templates",
                       str(templates_file), "--device", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_samples"] == 6 and 0 <= result["top1"] <= 1
    assert ih.run_cli(["convert", str(path), "--output", str(tmp_path / "clip.pt"), "--source", "openclip",
                       "--model", ih.TINY]) == 0


def test_train_pretrained_fine_tunes_openclip_towers_into_another_geometry(ih, tmp_path):
    from euclip.cli import main
    from euclip.model import load_model

    path = openclip_file(ih, tmp_path / "pretrained.bin", seed=7)
    run = tmp_path / "run"
    # lr 0 and no weight decay: after one step the weights are still the file's.
    assert main(["train", "--pretrained", str(path), "--model", ih.TINY, "--preset", "euclip", "--steps", "1",
                 "--batch-size", "4", "--workers", "0", "--lr", "0", "--wd", "0", "--no-progress", "--no-eval",
                 "--output", str(run)]) == 0
    model = load_model(run)
    source = torch.load(path, weights_only=True)
    assert model.config.final_ln is False and model.config.image_mean == OPENCLIP_MEAN
    for k, v in model.towers.state_dict().items():
        assert torch.equal(v, source[k]), k
    assert main(["train", "--pretrained", str(tmp_path / "nope.bin"), "--model", ih.TINY, "--steps", "1",
                 "--output", str(tmp_path / "r2")]) == 2
