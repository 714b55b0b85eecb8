"""CLIP_benchmark's evaluation sets as users have them on disk (its ``wds_*`` webdataset layout).

The layout (LAION-AI/CLIP_benchmark ``clip_benchmark/datasets/builder.py:build_wds_dataset``; written by its
``clip_benchmark_export_wds`` / ``webdataset_builder.convert_dataset``; the ``wds_<task>_test`` sets on the
Hugging Face hub, as DataComp downloads them)::

    ROOT/
        test/                       (or train/, ...: the split)
            nshards.txt             number of shards N
            0.tar ... N-1.tar       samples "s0000000.webp" (or .png, .jpg, .jpeg) + ".cls" (an integer label)
                                    or + ".txt" (the image's captions, one per line) for retrieval sets
        classnames.txt              class i's name on line i (classification)
        zeroshot_classification_templates.txt   one prompt per line, "{c}" where the class name goes
        dataset_type.txt            optional: "retrieval" (captions), "multilabel" (".npy" labels); default
                                    classification

When a classification set lacks its names or templates, CLIP_benchmark falls back on the ones it ships
(``en_classnames.json``, ``en_zeroshot_classification_templates.json``, keyed by task name, templates defaulting
to ImageNet's); so does :func:`open_benchmark` when the ``clip-benchmark`` package is installed
(``pip install clip-benchmark``).

Class prototypes per geometry (how ``euclip eval`` scores these sets, :func:`euclip.eval.zeroshot.class_prototypes`):
the mean over templates of the class's text embeddings, taken where the geometry is flat: on the sphere the mean
of the unit vectors, re-normalised (CLIP's rule, CLIP_benchmark's); in Euclidean space the mean of the scaled
features ``f / sqrt(D)``; in hyperbolic space the mean of the tangent vectors ``α f``, then the exponential map.
That is the paper's code (its CLIP_benchmark fork averages the forward pass's features and re-normalises only on
the sphere; its hyperbolic features are tangent vectors that its logit maps) and MERU's rule.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from euclip.data.sources import DataSource, DataSpec, _collate_eval, register_source

__all__ = ["BenchmarkSet", "ClipBenchmarkSource", "IMAGE_EXTENSIONS", "open_benchmark", "shipped_classnames",
           "shipped_templates", "task_name"]

IMAGE_EXTENSIONS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")
DATASET_TYPES: tuple[str, ...] = ("classification", "retrieval", "multilabel")
DEFAULT_TEMPLATE_TASK = "imagenet1k"  # CLIP_benchmark's fallback templates


@dataclass
class BenchmarkSet:
    """One split of a CLIP_benchmark webdataset evaluation set.

    Attributes:
        root: the set's folder (``wds_cifar10_test``).
        split: the split read (``test``).
        task: the task name (``cifar10``, ``vtab/cifar100``), from the folder name or given.
        dataset_type: ``classification``, ``retrieval`` or ``multilabel``.
        shards: the split's tar files, in order.
        classnames: class ``i``'s name at index ``i`` (classification), else None.
        templates: prompts with ``{c}`` (classification), else None.
        sources: where ``classnames`` / ``templates`` came from (a file, ``clip-benchmark``'s JSON, or given).
    """

    root: Path
    split: str
    task: str
    dataset_type: str
    shards: list[str]
    classnames: list[str] | None
    templates: list[str] | None
    sources: dict


def task_name(root: str | Path) -> str:
    """CLIP_benchmark's task name of a ``wds_*`` folder: ``wds_vtab-cifar100_test`` → ``vtab/cifar100``."""
    name = Path(root).name
    name = re.sub(r"^wds_", "", name)
    name = re.sub(r"_(test|train|val)$", "", name)
    return name.replace("-", "/")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _shipped(filename: str, language: str) -> dict | None:
    try:
        from importlib.resources import files

        return json.loads((files("clip_benchmark.datasets") / f"{language}_{filename}").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _lookup(table: dict | None, task: str, default: str | None = None):
    if table is None:
        return None
    for key in (task, task.split("/")[-1], f"wds/{task}", default):
        if key is not None and key in table:
            return table[key]
    return None


def shipped_classnames(task: str, language: str = "en") -> list[str] | None:
    """The class names ``clip-benchmark`` ships for ``task`` (None if it has none or is not installed)."""
    return _lookup(_shipped("classnames.json", language), task)


def shipped_templates(task: str, language: str = "en") -> list[str] | None:
    """The zero-shot templates ``clip-benchmark`` ships for ``task``, else ImageNet's (None: not installed)."""
    return _lookup(_shipped("zeroshot_classification_templates.json", language), task, DEFAULT_TEMPLATE_TASK)


def open_benchmark(root: str | Path, split: str = "test", task: str | None = None,
                   classnames: list[str] | None = None, templates: list[str] | None = None) -> BenchmarkSet:
    """Read a CLIP_benchmark webdataset set's metadata (see the module docstring for the layout).

    Args:
        root: the set's folder.
        split: the split sub-folder.
        task: the task name for the shipped names/templates; default from the folder name.
        classnames, templates: override the set's files (templates with ``{c}`` or ``{}``).

    Raises:
        FileNotFoundError: no such folder, or no shards in ``ROOT/split``.
        ValueError: a bad ``nshards.txt`` or ``dataset_type.txt``, or a classification set whose class names or
            templates can be found nowhere.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"--data: no such CLIP_benchmark folder: {base}")
    folder = base / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{base}: no '{split}' split folder (CLIP_benchmark's layout: ROOT/{split}/0.tar ...)")
    nshards_file = folder / "nshards.txt"
    if nshards_file.is_file():
        try:
            n = int(nshards_file.read_text().strip())
        except ValueError:
            raise ValueError(f"{nshards_file}: not a number of shards") from None
        shards = [str(folder / f"{i}.tar") for i in range(n)]
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(f"{nshards_file} says {n} shards; missing {missing[:3]}")
    else:  # CLIP_benchmark requires nshards.txt; tolerate its absence for hand-made sets
        shards = sorted((str(p) for p in folder.glob("*.tar")),
                        key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
        if not shards:
            raise FileNotFoundError(f"{folder}: no nshards.txt and no .tar shards")
    type_file = base / "dataset_type.txt"
    dataset_type = type_file.read_text().strip().lower() if type_file.is_file() else "classification"
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"{type_file}: unknown dataset type {dataset_type!r}; valid: {', '.join(DATASET_TYPES)}")
    task = task or task_name(base)
    sources = {}
    if dataset_type != "retrieval":
        if classnames is None and (base / "classnames.txt").is_file():
            classnames, sources["classnames"] = _lines(base / "classnames.txt"), str(base / "classnames.txt")
        elif classnames is None:
            classnames, sources["classnames"] = shipped_classnames(task), f"clip-benchmark en_classnames.json[{task}]"
        else:
            sources["classnames"] = "given"
        tfile = base / "zeroshot_classification_templates.txt"
        if templates is None and tfile.is_file():
            templates, sources["templates"] = _lines(tfile), str(tfile)
        elif templates is None:
            templates = shipped_templates(task)
            sources["templates"] = f"clip-benchmark en_zeroshot_classification_templates.json[{task}]"
        else:
            sources["templates"] = "given"
        if classnames is None or templates is None:
            lack = "class names" if classnames is None else "templates"
            shipped = "is not installed" if _shipped("classnames.json", "en") is None else f"has none for {task!r}"
            raise ValueError(f"{base}: no {lack}: no classnames.txt / zeroshot_classification_templates.txt, and "
                             f"clip-benchmark (which ships them per task) {shipped}; pass class names and templates")
    return BenchmarkSet(base, split, task, dataset_type, shards, classnames, templates, sources)


def _image(sample: dict) -> Image.Image:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            image = Image.open(io.BytesIO(sample[ext]))
            image.load()  # decode now, inside the caller's error handling
            return image
    raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image "
                     f"({', '.join(IMAGE_EXTENSIONS)})")


def _samples(bs: BenchmarkSet):
    import webdataset as wds

    # One deterministic pass in shard order (no shuffling); several DataLoader workers split the shards. Samples
    # stay raw bytes: decoding happens per sample, where a corrupt one is skipped and counted.
    return wds.WebDataset(bs.shards, shardshuffle=False, nodesplitter=None, empty_check=False)


class _EvalItems(torch.utils.data.IterableDataset):
    """The set's samples as evaluation items ``(image, captions, info)``; an unreadable sample is ``None``."""

    def __init__(self, bs: BenchmarkSet, transform: Callable[[Image.Image], torch.Tensor], limit: int | None):
        self.bs, self.transform, self.limit = bs, transform, limit

    def __iter__(self) -> Iterator[tuple | None]:
        for n, sample in enumerate(_samples(self.bs)):
            if self.limit is not None and n >= self.limit:
                return
            yield self._item(sample)

    def _item(self, sample: dict) -> tuple | None:
        try:
            image = self.transform(_image(sample))
            if self.bs.dataset_type == "retrieval":
                captions = [c for c in sample.get("txt", b"").decode("utf-8").splitlines() if c.strip()]
                return (image, captions, None) if captions else None
            label = int(sample["cls"].decode())
            return image, [], {"label": label, "class": self.bs.classnames[label]}
        except Exception:  # noqa: BLE001 - a corrupt sample is skipped and counted, never fatal
            return None


@register_source
class ClipBenchmarkSource(DataSource):
    """CLIP_benchmark's webdataset evaluation sets (evaluation only): classification sets give labels,
    retrieval sets captions."""

    name = "clip_benchmark"
    provides = frozenset({"labels", "captions"})
    help = "a CLIP_benchmark webdataset set (a wds_* folder with test/*.tar; evaluation only)"
    trainable = False

    def _set(self, spec: DataSpec) -> BenchmarkSet:
        bs = open_benchmark(spec.data, spec.split)
        if bs.dataset_type == "multilabel":
            raise ValueError(f"{bs.root}: multilabel sets are not supported (single-label classification or "
                             "retrieval sets are)")
        return bs

    def check_eval(self, spec: DataSpec) -> None:
        super().check_eval(spec)
        self._set(spec)

    def capabilities(self, spec: DataSpec) -> frozenset[str]:
        return frozenset({"captions"} if self._set(spec).dataset_type == "retrieval" else {"labels"})

    def class_names(self, spec: DataSpec) -> list[str] | None:
        return self._set(spec).classnames

    def default_templates(self, spec: DataSpec) -> list[str] | None:
        return self._set(spec).templates

    def eval_batches(self, spec: DataSpec, image_size: int):
        from euclip.data.transforms import image_transform

        loader = torch.utils.data.DataLoader(
            _EvalItems(self._set(spec), image_transform(image_size, train=False), spec.num_samples),
            batch_size=spec.batch_size, num_workers=spec.workers, collate_fn=_collate_eval)
        return loader, None
