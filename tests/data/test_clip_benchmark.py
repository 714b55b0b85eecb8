"""CLIP_benchmark's webdataset evaluation sets, written here as its conversion script writes them.

``clip_benchmark/webdataset_builder.py``: ``webdataset.ShardWriter("ROOT/test/%d.tar")`` samples
``{"__key__": "s0000000", "webp"|"png"|"jpg": image, "cls": label}`` (or ``"txt"``: captions joined by newlines),
``ROOT/test/nshards.txt``, ``ROOT/classnames.txt``, ``ROOT/zeroshot_classification_templates.txt``, and
``ROOT/dataset_type.txt`` ("retrieval") for retrieval sets.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from euclip.data.clip_benchmark import open_benchmark, shipped_classnames, shipped_templates, task_name
from euclip.data.sources import DataSpec
from euclip.data.transforms import image_transform

CLASSES = ["airplane", "automobile", "bird"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]


def _image(seed: int, size=(24, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format={"webp": "webp", "png": "png", "jpg": "jpeg"}[fmt], **({"lossless": True}
                                                                               if fmt == "webp" else {}))
    return buf.getvalue()


def write_classification_set(root: Path, n: int = 7, maxcount: int = 3, metadata: bool = True) -> list[int]:
    (root / "test").mkdir(parents=True)
    labels = [i % len(CLASSES) for i in range(n)]
    with webdataset.ShardWriter(str(root / "test" / "%d.tar"), maxcount=maxcount, verbose=0) as sink:
        for i, label in enumerate(labels):
            fmt = ("webp", "png", "jpg")[i % 3]
            sink.write({"__key__": "s%07d" % i, fmt: _encode(_image(i), fmt), "cls": label})
        shards = sink.shard
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    if metadata:
        (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return labels


def write_retrieval_set(root: Path) -> list[list[str]]:
    (root / "test").mkdir(parents=True)
    captions = [["a red square", "a square, red"], ["two circles"], ["a bird\\non a wire", "a bird", "wire"]]
    with webdataset.ShardWriter(str(root / "test" / "%d.tar"), maxcount=2, verbose=0) as sink:
        for i, caps in enumerate(captions):
            sink.write({"__key__": "s%07d" % i, "webp": _encode(_image(10 + i), "webp"), "txt": "\n".join(caps)})
        shards = sink.shard
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    return captions


def batches(root: Path, batch_size: int, workers: int = 0) -> list:
    spec = DataSpec("clip_benchmark", data=str(root), batch_size=batch_size, workers=workers, num_samples=None)
    loader, _ = spec.source.eval_batches(spec, 16)
    return list(loader)


def test_classification_set(tmp_path):
    root = tmp_path / "wds_cifar10_test"
    labels = write_classification_set(root)
    bs = open_benchmark(root)
    assert (bs.task, bs.dataset_type, bs.classnames, bs.templates) == ("cifar10", "classification", CLASSES, TEMPLATES)
    assert len(bs.shards) == 3 and bs.sources["classnames"].endswith("classnames.txt")
    transform = image_transform(16, train=False)
    got = batches(root, 4)
    images = torch.cat([b[0] for b in got])
    infos = [info for b in got for info in b[2]]
    assert images.shape == (7, 3, 16, 16) and [i["label"] for i in infos] == labels
    assert [i["class"] for i in infos] == [CLASSES[label] for label in labels]
    # Lossless formats decode to the pixels written (jpg is lossy).
    assert torch.allclose(images[0], transform(_image(0)), atol=1e-6)
    assert torch.allclose(images[1], transform(_image(1)), atol=1e-6)
    # Two workers split the shards: every sample once.
    assert sorted(i["label"] for b in batches(root, 2, workers=2) for i in b[2]) == sorted(labels)


def test_a_corrupt_sample_is_skipped_and_counted(tmp_path):
    root = tmp_path / "wds_cifar10_test"
    (root / "test").mkdir(parents=True)
    with webdataset.ShardWriter(str(root / "test" / "%d.tar"), maxcount=10, verbose=0) as sink:
        sink.write({"__key__": "s0", "png": _encode(_image(0), "png"), "cls": 1})
        sink.write({"__key__": "s1", "png": b"not a png at all", "cls": 2})
        sink.write({"__key__": "s2", "png": _encode(_image(2), "png")})  # no label
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (images, _, infos, skipped), = batches(root, 8)
    assert images.shape[0] == 1 and infos == [{"label": 1, "class": "automobile"}] and skipped == 2


def test_retrieval_set(tmp_path):
    root = tmp_path / "wds_mscoco_captions"
    captions = write_retrieval_set(root)
    bs = open_benchmark(root)
    assert bs.dataset_type == "retrieval" and bs.classnames is None and bs.task == "mscoco_captions"
    assert [c for b in batches(root, 2) for c in b[1]] == captions
    spec = DataSpec("clip_benchmark", data=str(root))
    assert spec.source.capabilities(spec) == {"captions"}


def test_shipped_names_and_templates(tmp_path):
    pytest.importorskip("clip_benchmark")
    from importlib.resources import files

    names = json.loads((files("clip_benchmark.datasets") / "en_classnames.json").read_text())
    templates = json.loads((files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json").read_text())
    assert shipped_classnames("mnist") == names["mnist"] == [str(i) for i in range(10)]
    assert shipped_templates("vtab/cifar100") == templates["cifar100"]
    assert shipped_templates("no-such-task") == templates["imagenet1k"]  # CLIP_benchmark's fallback
    root = tmp_path / "wds_vtab-pets"
    write_classification_set(root, metadata=False)
    bs = open_benchmark(root)
    assert bs.task == "vtab/pets" and bs.classnames == names["pets"] and bs.templates == templates["pets"]
    assert "en_classnames.json" in bs.sources["classnames"]


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        (tmp_path / "empty").mkdir()
        open_benchmark(tmp_path / "empty")
    root = tmp_path / "wds_unknown-task"
    write_classification_set(root, metadata=False)
    with pytest.raises(ValueError, match="no class names"):
        open_benchmark(root)
    (root / "test" / "nshards.txt").write_text("9\n")
    with pytest.raises(FileNotFoundError, match="says 9 shards"):
        open_benchmark(root, classnames=CLASSES, templates=TEMPLATES)
    assert task_name("/x/wds_vtab-clevr_count_all_test") == "vtab/clevr_count_all"


def test_zeroshot_and_retrieval_with_every_geometry(tmp_path):
    """Through euclip's evaluation registry: the prototypes and logits of each geometry, on both kinds of set."""
    from euclip.data.sources import DataSpec, infer_source
    from euclip.eval.registry import EvalContext
    from euclip.eval.retrieval import retrieval_from_embeddings
    from euclip.eval.runner import evaluate
    from euclip.eval.zeroshot import class_prototypes, predict_topk, zeroshot_tasks
    from euclip.model import GeometricCLIP, ModelConfig

    cls_root, ret_root = tmp_path / "wds_cifar10_test", tmp_path / "wds_flickr30k"
    labels = write_classification_set(cls_root)
    captions = write_retrieval_set(ret_root)
    assert infer_source(str(cls_root)) == infer_source(str(ret_root)) == "clip_benchmark"
    cls_spec = DataSpec("clip_benchmark", data=str(cls_root), batch_size=3, num_samples=None)
    ret_spec = DataSpec("clip_benchmark", data=str(ret_root), batch_size=2, num_samples=None)
    for geometry, logit in (("elliptic", "inner"), ("euclidean", "squared"), ("hyperbolic", "distance")):
        torch.manual_seed(0)
        model = GeometricCLIP(ModelConfig(model="tiny", geometry=geometry, logit=logit, image_size=16)).eval()
        result = evaluate(model, cls_spec, progress=False)  # every evaluation that applies to labelled images
        assert set(result["evaluations"]) == {"zeroshot"}  # hierarchy: no taxonomy is named (wordnet needs wnids)
        zeroshot = result["evaluations"]["zeroshot"]
        assert zeroshot["num_samples"] == 7 and zeroshot["classes"] == CLASSES and zeroshot["templates"] == "the data's"
        task = zeroshot_tasks(EvalContext(model, cls_spec, progress=False))["classes"]
        assert task["labels"].tolist() == labels
        # The same predictions as scoring every image against the set's prototypes directly.
        prototypes = class_prototypes(model, CLASSES, TEMPLATES)
        images = torch.stack([image_transform(16, train=False)(_image(i)) for i in range(7) if i % 3 != 2])
        with torch.no_grad():
            direct = predict_topk(model.encode_image(images), prototypes, geometry, logit, model.curvature)[:, 0]
        assert [p for i, p in enumerate(task["top"][:, 0].tolist()) if i % 3 != 2] == direct.tolist()  # jpg: lossy
        emb = EvalContext(model, ret_spec, progress=False).embeddings()
        assert emb.num_images == 3 and emb.num_texts == 6 and emb.text_to_image.tolist() == [0, 0, 1, 2, 2, 2]
        assert emb.captions == [c for caps in captions for c in caps] and emb.geometry == geometry
        with torch.no_grad():  # the same points as embedding the images and captions directly
            direct_images = model.encode_image(torch.stack([image_transform(16, False)(_image(10 + i))
                                                            for i in range(3)]))
            direct_texts = model.encode_text(model.tokenizer()(emb.captions))
        assert torch.allclose(emb.image, direct_images, atol=1e-5) and torch.allclose(emb.text, direct_texts, atol=1e-5)
        recalls = retrieval_from_embeddings(emb, ks=(1, 3, 6))
        assert recalls["image_to_text"]["R@6"] == 1.0 and recalls["text_to_image"]["R@3"] == 1.0
        assert set(evaluate(model, ret_spec, progress=False)["evaluations"]) == {"retrieval", "geometry"}
