"""GeometricCLIP's additions for other code's towers: the image normalisation it carries, its config fields."""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import asdict

import pytest
import torch

from euclip.data.transforms import image_transform
from euclip.model import PIPELINE_MEAN, PIPELINE_STD, GeometricCLIP, ModelConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_pipeline_constants_are_the_transforms_defaults():
    params = inspect.signature(image_transform).parameters
    assert tuple(params["mean"].default) == PIPELINE_MEAN and tuple(params["std"].default) == PIPELINE_STD


def test_towers_see_their_own_normalisation():
    torch.manual_seed(0)
    model = GeometricCLIP(ModelConfig(model="tiny", image_mean=MEAN, image_std=STD)).eval()
    seen = []
    model.towers.visual.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    model.double()
    with torch.no_grad():
        model.encode_image((pixels - 0.5) / 0.5)
    expected = (pixels - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], expected, rtol=0, atol=1e-12)
    # Deep copies keep the hook (EMA copies, DataParallel replicas); removing it restores the plain model.
    twin = copy.deepcopy(model)
    with torch.no_grad():
        x = (pixels - 0.5) / 0.5
        assert torch.equal(twin.encode_image(x), model.encode_image(x))
        model.set_image_normalization(None, None)
        assert not torch.allclose(model.encode_image(x), twin.encode_image(x))
    assert model.config.image_mean is None and twin.config.image_mean == MEAN


def test_config_fields_round_trip_and_validate():
    config = ModelConfig(model="tiny", image_mean=MEAN, image_std=STD)
    assert ModelConfig(**json.loads(json.dumps(asdict(config)))) == config  # lists from JSON become tuples again
    assert ModelConfig() == ModelConfig(towers="openclip", tower_config=None, image_mean=None, image_std=None)
    with pytest.raises(ValueError, match="together"):
        ModelConfig(image_mean=MEAN)
    with pytest.raises(ValueError, match="unknown towers"):
        ModelConfig(towers="jax")
    with pytest.raises(ValueError, match="needs a tower_config"):
        ModelConfig(towers="meru")
    with pytest.raises(ValueError, match="3 values"):
        ModelConfig(image_mean=(0.5, 0.5), image_std=(0.5, 0.5))
    # A default model has no hook and the state dict it always had.
    plain = GeometricCLIP(ModelConfig(model="tiny"))
    assert plain._normalization_hook is None and not plain.towers.visual._forward_pre_hooks


TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                         "tokenizer_kwargs": {"clean": "canonicalize"}}}


def test_the_tokenizer_is_the_one_openclip_names_for_the_model(tmp_path):
    import open_clip

    # An OpenCLIP model whose tokenizer differs from ViT-B-32's: it strips punctuation and case ("canonicalize").
    (tmp_path / "euclip-test-canonical.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(tmp_path / "euclip-test-canonical.json")
    model = GeometricCLIP(ModelConfig(model="euclip-test-canonical"))
    assert model.config.tokenizer == "euclip-test-canonical"  # recorded in the run's config.json
    text = ["A RED-Triangle!!", "the circle."]
    expected = open_clip.get_tokenizer("euclip-test-canonical")(text)
    assert torch.equal(model.tokenizer()(text), expected)
    assert not torch.equal(expected, open_clip.get_tokenizer("ViT-B-32", context_length=16)(text))
    # Loaded back from a checkpoint, the model reads with the tokenizer it was trained with.
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "config": {"model": asdict(model.config)}}, path)
    from euclip.model import load_model

    assert torch.equal(load_model(path).tokenizer()(text), expected)
    assert GeometricCLIP(ModelConfig()).config.tokenizer == "ViT-B-32"  # the tiny CPU towers read CLIP's BPE
