"""The on-disk index format: a round trip gives the same searches, broken folders are refused with their reason,
and a model other than the index's (geometry, config, weights) is refused naming what differs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from euclip import geometry as geom
from euclip.index import GeometryIndex, build_index, check_model, model_identity
from euclip.index.store import Manifest, config_fingerprint, weights_fingerprint
from euclip.model import GeometricCLIP, ModelConfig


def points(n: int, d: int, geometry: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return geom.project(torch.randn(n, d, generator=g) * 0.3, geometry, 0.7)


@pytest.mark.parametrize("geometry,logit,factory", [("hyperbolic", "distance", "Flat"), ("elliptic", "inner", "HNSW8"),
                                                    ("euclidean", "squared", "IVF4,Flat")])
def test_round_trip(tmp_path, geometry, logit, factory):
    y = points(200, 16, geometry)
    ids = [f"caption {i}\twith a tab, a newline\nand ünïcode" for i in range(200)]
    index = build_index(y, ids, geometry, logit, 0.7, factory, search_params="nprobe=4" if "IVF" in factory else None,
                        modality="text", min_radius=0.2, data={"data": "x.txt"})
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "ids.jsonl", "index.faiss", "manifest.json"]
    loaded = GeometryIndex.load(folder)
    assert loaded.ids == ids and loaded.manifest == index.manifest
    assert isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), index.embeddings)
    np.testing.assert_allclose(index.embeddings, y.numpy(), rtol=1e-6, atol=1e-7)  # elliptic: re-normalised
    before, after = index.search(y[:20], 7), loaded.search(y[:20], 7)
    assert torch.equal(before.indices, after.indices) and torch.equal(before.scores, after.scores)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "euclip-index" and manifest["version"] == 1
    assert (manifest["geometry"], manifest["logit"], manifest["count"], manifest["dim"]) == (geometry, logit, 200, 16)
    assert manifest["factory"] == factory and manifest["curvature"] == pytest.approx(0.7)
    assert len((folder / "ids.jsonl").read_text().splitlines()) == 200  # newlines inside ids are escaped


def test_overwrite_keeps_a_consistent_folder(tmp_path):
    a = build_index(points(50, 8, "euclidean"), None, "euclidean", "squared")
    b = build_index(points(30, 8, "euclidean", 1), None, "euclidean", "squared")
    a.save(tmp_path / "idx")
    b.save(tmp_path / "idx")
    assert len(GeometryIndex.load(tmp_path / "idx")) == 30
    assert not [p for p in (tmp_path / "idx").iterdir() if ".tmp-" in p.name]


def test_broken_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index folder"):
        GeometryIndex.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        GeometryIndex.load(tmp_path / "empty")
    folder = build_index(points(20, 8, "elliptic"), None, "elliptic", "inner").save(tmp_path / "idx")
    lines = (folder / "ids.jsonl").read_text().splitlines()
    (folder / "ids.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="inconsistent with its manifest .count 20.: ids.jsonl has 19 lines"):
        GeometryIndex.load(folder)
    (folder / "ids.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="lacks ids.jsonl"):
        GeometryIndex.load(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ValueError, match="is not an euclip index manifest"):
        GeometryIndex.load(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        GeometryIndex.load(folder)
    del manifest["geometry"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lacks the field.s. geometry"):
        GeometryIndex.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GeometryIndex.load(folder)


def test_search_params_are_saved(tmp_path):
    y = points(500, 8, "euclidean")
    index = build_index(y, None, "euclidean", "squared", factory="IVF8,Flat")
    index.set_search_params("nprobe=8")
    loaded = GeometryIndex.load(index.save(tmp_path / "idx"))
    assert loaded.manifest.search_params == "nprobe=8"
    import faiss

    assert faiss.extract_index_ivf(loaded.index).nprobe == 8


# ----------------------------------------------------------------------------------------------------------------
# Model identity
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    meru = GeometricCLIP(ModelConfig(model="tiny", geometry="hyperbolic", logit="distance", final_ln=True,
                                     image_size=32))
    torch.manual_seed(0)
    euclip = GeometricCLIP(ModelConfig(model="tiny", geometry="euclidean", logit="squared", image_size=32))
    return meru, euclip


def test_fingerprints(models):
    meru, euclip = models
    assert config_fingerprint(meru.config_dict()) == config_fingerprint(dict(reversed(meru.config_dict().items())))
    assert config_fingerprint(meru.config_dict()) != config_fingerprint(euclip.config_dict())
    state = {k: v.clone() for k, v in meru.state_dict().items()}
    assert weights_fingerprint(state) == weights_fingerprint(meru.state_dict())
    state["log_logit_scale"] += 1e-6
    assert weights_fingerprint(state) != weights_fingerprint(meru.state_dict())


def test_check_model_names_what_differs(models, tmp_path):
    meru, euclip = models
    identity = model_identity(meru, tmp_path)
    assert identity["path"] == str(tmp_path.resolve()) and identity["checkpoint"].endswith("checkpoints/latest.pt")
    index = build_index(points(10, meru.embed_dim, "hyperbolic"), None, "hyperbolic", "distance", model=identity)
    index.check_model(meru)  # the same model passes
    with pytest.raises(ValueError, match="holds hyperbolic/distance embeddings, but the model is euclidean/squared"):
        index.check_model(euclip)
    other_config = GeometricCLIP(replace(meru.config, learn_curvature=False))
    other_config.load_state_dict(meru.state_dict())
    with pytest.raises(ValueError, match="another config .index vs model: learn_curvature: True vs False"):
        index.check_model(other_config)
    retrained = GeometricCLIP(meru.config)
    retrained.load_state_dict(meru.state_dict())
    with torch.no_grad():
        retrained.log_alpha_image += 0.1
    with pytest.raises(ValueError, match="other weights of the same config"):
        index.check_model(retrained)
    # An index of bare embeddings only knows its geometry.
    bare = Manifest(geometry="hyperbolic", logit="distance", curvature=1.0, dim=8, index_dim=9, metric="ip",
                    factory="Flat", count=1)
    check_model(bare, retrained)
    with pytest.raises(ValueError, match="but the model is euclidean/squared"):
        check_model(bare, euclip)
