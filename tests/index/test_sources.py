"""Embedding what an index is built from: real image files, CSVs, tar shards and caption files, with their ids; the
points equal those of euclip.eval.embed's independent path; unreadable images are counted, empty data refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from euclip.data.wds import write_shards
from euclip.eval.embed import DataSpec, embed, embed_texts
from euclip.index.sources import IndexSource, detect_data_type, embed_source
from euclip.model import GeometricCLIP, ModelConfig


@pytest.fixture(scope="module")
def model() -> GeometricCLIP:
    torch.manual_seed(0)
    return GeometricCLIP(ModelConfig(model="tiny", geometry="hyperbolic", logit="distance", final_ln=True,
                                     image_size=32)).eval()


def image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder of 6 images in two sub-folders (jpg and png), a corrupt .png, a text file; a CSV over them."""
    root = tmp_path_factory.mktemp("data")
    for i in range(6):
        sub = root / "photos" / ("a" if i < 3 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        image(i).save(sub / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "photos" / "b" / "broken.png").write_bytes(b"not a png")
    (root / "photos" / "notes.txt").write_text("not an image")
    rows = ["filepath\tcaption"]
    for i in range(6):
        path = f"photos/{'a' if i < 3 else 'b'}/{i}.{'png' if i % 2 else 'jpg'}"
        rows += [f"{path}\tpicture number {i}", f"{path}\tanother caption of {i}"]
    (root / "pairs.tsv").write_text("\n".join(rows) + "\n")
    (root / "captions.txt").write_text("a red triangle\n\n  a blue circle  \na shape\n")
    return root


def test_detect_data_type(data):
    assert detect_data_type(str(data / "photos")) == "folder"
    assert detect_data_type(str(data / "pairs.tsv")) == "csv"
    assert detect_data_type(str(data / "captions.txt")) == "captions"
    assert detect_data_type("shards/{00000..00003}.tar") == "webdataset"
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        detect_data_type(str(data / "missing.txt"))


def test_folder_and_csv_images_match_the_evaluation_embedding(model, data):
    points, ids, info = embed_source(model, IndexSource(str(data / "photos"), batch_size=4), progress=False)
    assert ids == ["a/0.jpg", "a/1.png", "a/2.jpg", "b/3.png", "b/4.jpg", "b/5.png"]  # sorted; broken.png skipped
    assert info["skipped"] == 1 and info["count"] == 6 and info["modality"] == "image"
    # euclip.eval.embed reads the same images through the CSV (its own dataset and loader).
    reference = embed(model, DataSpec("csv", str(data / "pairs.tsv"), num_samples=None, batch_size=3),
                      progress=False)
    torch.testing.assert_close(points, reference.image, rtol=1e-5, atol=1e-6)
    csv_points, csv_ids, csv_info = embed_source(model, IndexSource(str(data / "pairs.tsv")), progress=False)
    assert csv_ids == [f"photos/{'a' if i < 3 else 'b'}/{i}.{'png' if i % 2 else 'jpg'}" for i in range(6)]
    torch.testing.assert_close(csv_points, reference.image, rtol=1e-5, atol=1e-6)
    assert csv_info["data_type"] == "csv" and csv_info["csv_img_key"] == "filepath"


def test_csv_and_file_captions(model, data):
    points, ids, _ = embed_source(model, IndexSource(str(data / "pairs.tsv"), modality="text", num_samples=5),
                                  progress=False)
    assert ids == ["picture number 0", "another caption of 0", "picture number 1", "another caption of 1",
                   "picture number 2"]
    torch.testing.assert_close(points, embed_texts(model, ids)[0])
    points, ids, info = embed_source(model, IndexSource(str(data / "captions.txt")), progress=False)
    assert ids == ["a red triangle", "a blue circle", "a shape"] and info["modality"] == "text"
    torch.testing.assert_close(points, embed_texts(model, ids)[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_images_and_captions(model, tmp_path, workers):
    samples = [(image(i), f"shard caption {i}") for i in range(7)]
    shards = write_shards(samples, str(tmp_path / "shards" / "%03d.tar"), maxcount=3, image_format="png")
    pattern = str(tmp_path / "shards" / "{000..002}.tar")
    assert len(shards) == 3
    points, ids, _ = embed_source(model, IndexSource(pattern, batch_size=2, workers=workers), progress=False)
    # Every sample once (workers read disjoint shards), each named by its shard and key.
    assert sorted(ids) == sorted(f"{shards[i // 3]}:{i:09d}" for i in range(7))
    by_id = dict(zip(ids, points))
    files = []
    for i, (img, _) in enumerate(samples):
        img.save(tmp_path / f"{i}.png")  # the same lossless images as files
        files.append(str(tmp_path / f"{i}.png"))
    from euclip.index.sources import embed_image_files

    direct, _, _ = embed_image_files(model, files)
    torch.testing.assert_close(torch.stack([by_id[f"{shards[i // 3]}:{i:09d}"] for i in range(7)]), direct)
    text_points, captions, _ = embed_source(model, IndexSource(pattern, modality="text", num_samples=4),
                                            progress=False)
    assert captions == [f"shard caption {i}" for i in range(4)]
    torch.testing.assert_close(text_points, embed_texts(model, captions)[0])


def test_synthetic(model):
    points, ids, info = embed_source(model, IndexSource(data_type="synthetic", num_samples=12, batch_size=5),
                                     progress=False)
    assert points.shape == (12, model.embed_dim) and ids[0] == "test/000000" and ids[-1] == "test/000011"
    assert info["split"] == "test" and "csv_img_key" not in info
    _, captions, _ = embed_source(model, IndexSource(data_type="synthetic", modality="text", num_samples=12),
                                  progress=False)
    assert len(captions) == 12 and all(isinstance(c, str) and c for c in captions)


def test_bad_sources(model, data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        embed_source(model, IndexSource(str(tmp_path / "empty"), data_type="folder"), progress=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="no readable images to index .an empty data set; 1 unreadable."):
        embed_source(model, IndexSource(str(tmp_path / "broken")), progress=False)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="no captions to index .an empty data set"):
        embed_source(model, IndexSource(str(tmp_path / "blank.txt")), progress=False)
    with pytest.raises(ValueError, match="is a captions file"):
        IndexSource(str(data / "captions.txt"), modality="image")
    with pytest.raises(ValueError, match="holds images, not captions"):
        IndexSource(str(data / "photos"), modality="text")
    with pytest.raises(ValueError, match="--data is required with --data-type csv"):
        IndexSource(data_type="csv")
    with pytest.raises(ValueError, match="columns|column"):
        embed_source(model, IndexSource(str(data / "pairs.tsv"), csv_img_key="path"), progress=False)
