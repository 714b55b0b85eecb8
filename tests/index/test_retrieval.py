"""Retrieval recall through an exact index gives the numbers of euclip.eval.retrieval, for every geometry × logit."""

from __future__ import annotations

import itertools

import pytest
import torch

from euclip import geometry as geom
from euclip.eval.embed import Embeddings
from euclip.eval.retrieval import retrieval_from_embeddings
from euclip.index import retrieval_recall

C = 0.8


def embeddings(geometry: str, logit: str, n_images: int = 150, seed: int = 0) -> Embeddings:
    """Images and 1-3 noisy captions each, so that recall is neither 0 nor 1."""
    g = torch.Generator().manual_seed(seed)
    f_image = torch.randn(n_images, 16, generator=g)
    per_image = torch.randint(1, 4, (n_images,), generator=g)
    owners = torch.repeat_interleave(torch.arange(n_images), per_image)
    f_text = f_image[owners] + 1.2 * torch.randn(len(owners), 16, generator=g)
    scale = 0.3
    image, text = geom.project(f_image * scale, geometry, C), geom.project(f_text * scale, geometry, C)
    return Embeddings(image=image, text=text, text_to_image=owners, image_tower_norm=f_image.norm(dim=1),
                      text_tower_norm=f_text.norm(dim=1), captions=[f"c{i}" for i in range(len(owners))],
                      geometry=geometry, logit=logit, curvature=C)


@pytest.mark.parametrize("geometry,logit", list(itertools.product(geom.GEOMETRIES, geom.LOGITS)))
def test_exact_index_gives_the_evaluation_numbers(geometry, logit):
    emb = embeddings(geometry, logit)
    ks = (1, 5, 10)
    expected = retrieval_from_embeddings(emb, ks, chunk=64)
    got = retrieval_recall(emb, ks, "Flat", batch_size=50)  # several query batches
    for direction in ("image_to_text", "text_to_image"):
        assert got[direction] == expected[direction], direction
    assert got["mean_recall"] == pytest.approx(expected["mean_recall"], abs=1e-12)
    assert 0 < got["mean_recall"] < 1
    assert (got["num_images"], got["num_texts"]) == (expected["num_images"], expected["num_texts"])
    assert got["ks"] == [1, 5, 10]


def test_k_beyond_the_number_of_items():
    emb = embeddings("euclidean", "squared", n_images=6)
    expected = retrieval_from_embeddings(emb, (1, 50))
    got = retrieval_recall(emb, (1, 50))
    assert got["image_to_text"] == expected["image_to_text"] and got["text_to_image"] == expected["text_to_image"]
    assert got["text_to_image"]["R@50"] == 1.0


def test_approximate_index_is_close():
    emb = embeddings("hyperbolic", "distance", n_images=600)
    exact = retrieval_recall(emb, (10,))
    approx = retrieval_recall(emb, (10,), "IVF8,Flat", search_params="nprobe=4")
    assert approx["factory"] == "IVF8,Flat" and approx["search_params"] == "nprobe=4"
    assert abs(approx["mean_recall"] - exact["mean_recall"]) < 0.1


def test_bad_input():
    emb = embeddings("elliptic", "inner", n_images=5)
    with pytest.raises(ValueError, match="ks must be positive"):
        retrieval_recall(emb, (0,))
    emb.text_to_image = torch.zeros_like(emb.text_to_image)
    with pytest.raises(ValueError, match="every image needs at least one caption"):
        retrieval_recall(emb)
    emb.text_to_image[0] = 99
    with pytest.raises(ValueError, match="outside"):
        retrieval_recall(emb)


def test_eval_retrieval_through_an_index_gives_the_blockwise_recalls(tmp_path):
    """`euclip eval retrieval --index Flat` scores through FAISS: the same recalls as the blockwise evaluation."""
    import json
    from dataclasses import asdict

    from euclip.cli import main
    from euclip.model import GeometricCLIP, ModelConfig

    torch.manual_seed(0)
    model = GeometricCLIP(ModelConfig(model="tiny", geometry="hyperbolic", logit="distance", final_ln=True))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": {"model": asdict(model.config)}},
               tmp_path / "run" / "checkpoints" / "latest.pt")
    outs = []
    for extra in ([], ["--index", "Flat"]):
        out = tmp_path / f"r{len(extra)}.json"
        assert main(["eval", "retrieval", str(tmp_path / "run"), "--num-samples", "40", "--no-progress",
                     "--output", str(out), *extra]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[1]["factory"] == "Flat"
    assert outs[0]["image_to_text"] == outs[1]["image_to_text"] and outs[0]["text_to_image"] == outs[1]["text_to_image"]
