"""The data an index is built from, embedded with a model: images or captions, each with the id that names it.

Data types (``IndexSource.data_type``; ``"auto"`` guesses from ``data``):

* ``folder``: every image file (``.jpg .jpeg .png .webp .bmp .gif``) under a folder, recursively, in sorted order;
  ids are the paths relative to the folder.
* ``csv``: a CSV/TSV in OpenCLIP's ``CsvDataset`` format; images: its distinct image paths in file order (ids as the
  file writes them, relative to its folder), or text: its captions (ids: the captions).
* ``webdataset``: tar shards (``'shards/{00000..00009}.tar'``, several joined with ``::``); images (ids:
  ``shard:key``) or their captions (ids: the captions).
* ``captions``: a text file with one caption per line (blank lines ignored); ids: the captions.
* ``synthetic``: the built-in synthetic split (:class:`euclip.eval.embed.DataSpec`); images (ids:
  ``split/index``) or captions.

Unreadable images are skipped and counted (``skipped`` in the returned description), as in training; ``num_samples``
keeps the first N items. Images go through the evaluation transform (resize + centre crop) and the model's towers
and geometry head in batches, exactly as :func:`euclip.eval.embed.embed` does.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

__all__ = [
    "DATA_TYPES",
    "IMAGE_SUFFIXES",
    "MODALITIES",
    "IndexSource",
    "detect_data_type",
    "embed_image_files",
    "embed_source",
]

DATA_TYPES: tuple[str, ...] = ("auto", "folder", "csv", "webdataset", "captions", "synthetic")
MODALITIES: tuple[str, ...] = ("image", "text")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_TEXT_CHUNK = 4096  # captions per progress-bar step


def detect_data_type(data: str | None) -> str:
    """Guess the data type of ``data``: a folder, a ``.csv``/``.tsv`` file, shards (``.tar``, braces, ``::``), or a
    captions file (anything else that is a file).

    Raises:
        FileNotFoundError: ``data`` names nothing that exists (and is no shard pattern).
        ValueError: no ``data``.
    """
    if not data:
        raise ValueError("--data is required (or --data-type synthetic)")
    p = Path(data)
    if p.is_dir():
        return "folder"
    if "{" in data or "::" in data or data.endswith(".tar"):
        return "webdataset"
    if not p.is_file():
        raise FileNotFoundError(f"--data: no such file or folder: {data}")
    return "csv" if p.suffix.lower() in (".csv", ".tsv") else "captions"


@dataclass
class IndexSource:
    """What to embed for an index (see the module docstring).

    Attributes:
        data: a folder, a CSV/TSV file, a shard pattern or a captions file (unused for synthetic).
        data_type: one of :data:`DATA_TYPES`.
        modality: ``"image"`` or ``"text"``; ``None``: text for a captions file, images otherwise.
        num_samples: keep the first N items (synthetic: exactly N, default 1000).
        split, seed: of the synthetic data.
        csv_img_key, csv_caption_key, csv_separator: CSV columns and separator.
        batch_size: images or captions per forward pass.
        workers: DataLoader worker processes for images.
    """

    data: str | None = None
    data_type: str = "auto"
    modality: str | None = None
    num_samples: int | None = None
    split: str = "test"
    seed: int = 0
    csv_img_key: str = "filepath"
    csv_caption_key: str = "caption"
    csv_separator: str = "\t"
    batch_size: int = 128
    workers: int = 0

    def __post_init__(self):
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"unknown data type {self.data_type!r}; valid: {', '.join(DATA_TYPES)}")
        if self.data_type == "auto":
            self.data_type = detect_data_type(self.data)
        elif self.data_type != "synthetic" and not self.data:
            raise ValueError(f"--data is required with --data-type {self.data_type}")
        if self.modality is None:
            self.modality = "text" if self.data_type == "captions" else "image"
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; valid: {', '.join(MODALITIES)}")
        if self.modality == "image" and self.data_type == "captions":
            raise ValueError(f"--modality image: {self.data} is a captions file (one caption per line), not images")
        if self.modality == "text" and self.data_type == "folder":
            raise ValueError(f"--modality text: the folder {self.data} holds images, not captions")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")

    def describe(self) -> dict:
        """The settings that identify the data (for the manifest)."""
        d = asdict(self)
        if self.data_type != "synthetic":
            d.pop("split")
            d.pop("seed")
            d["data"] = str(Path(self.data).resolve()) if self.data_type != "webdataset" else self.data
        if self.data_type != "csv":
            for key in ("csv_img_key", "csv_caption_key", "csv_separator"):
                d.pop(key)
        return d


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


class _ImageFiles(Dataset):
    """``(image_tensor, id)`` per file, or ``None`` for an unreadable one."""

    def __init__(self, paths: list[str], ids: list[str], transform):
        self.paths, self.ids, self.transform = paths, ids, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str] | None:
        try:
            with Image.open(self.paths[i]) as image:
                return self.transform(image), self.ids[i]
        except Exception:  # noqa: BLE001 - any unreadable image is skipped and counted, as in training
            return None


class _ShardImages(IterableDataset):
    """``(image_tensor, "shard:key")`` per webdataset sample with an image (``None``: no or a corrupt image).

    In DataLoader workers, webdataset gives each worker its share of the shards (its ``split_by_worker``).
    """

    def __init__(self, shards: list[str], transform):
        self.shards, self.transform = shards, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str] | None]:
        for sample in _shard_samples(self.shards):
            image_key = next((key for key in _image_keys() if key in sample), None)
            if image_key is None:
                yield None
                continue
            try:
                with Image.open(io.BytesIO(sample[image_key])) as image:
                    yield self.transform(image), f"{sample['__url__']}:{sample['__key__']}"
            except Exception:  # noqa: BLE001 - a corrupt image is skipped and counted
                yield None


def _image_keys() -> tuple[str, ...]:
    from euclip.data.wds import IMAGE_KEYS

    return IMAGE_KEYS


def _shard_samples(shards: list[str]) -> Iterator[dict]:
    """Every sample (a dict of the files sharing a key, plus ``__url__`` and ``__key__``) of ``shards``, in order."""
    import webdataset as wds

    if not shards:
        return iter(())
    return iter(wds.WebDataset(shards, shardshuffle=False, handler=wds.warn_and_continue, empty_check=False))


def _collate(items: list) -> tuple[torch.Tensor | None, list[str], int]:
    good = [it for it in items if it is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    return images, [it[1] for it in good], len(items) - len(good)


@torch.no_grad()
def _embed_image_batches(model, loader, device, total: int | None, progress: bool, limit: int | None
                         ) -> tuple[torch.Tensor, list[str], int]:
    parts, ids, skipped = [], [], 0
    for images, names, bad in tqdm(loader, desc="index: embed images", total=total, disable=not progress,
                                   leave=False):
        skipped += bad
        if images is None:
            continue
        if limit is not None:
            images, names = images[:limit - len(ids)], names[:limit - len(ids)]
        features = model.towers.encode_image(images.to(device)).float()
        parts.append(model.to_manifold(features, "image").float().cpu())
        ids += names
        if limit is not None and len(ids) >= limit:
            break
    points = torch.cat(parts) if parts else torch.empty(0, model.embed_dim)
    return points, ids, skipped


def embed_image_files(model, paths: list[str], ids: list[str] | None = None, device: torch.device | str = "cpu",
                      batch_size: int = 128, workers: int = 0, progress: bool = False
                      ) -> tuple[torch.Tensor, list[str], int]:
    """Embed image files: ``(points (N, D), ids of the readable ones, number skipped)``."""
    from euclip.data.transforms import image_transform

    ids = list(paths) if ids is None else ids
    dataset = _ImageFiles(list(paths), ids, image_transform(model.image_size, train=False))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    return _embed_image_batches(model, loader, device, len(loader), progress, None)


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--data: no image files ({' '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def _csv_rows(source: IndexSource):
    from euclip.data.csv import CsvDataset

    return CsvDataset(source.data, lambda image: image, img_key=source.csv_img_key,
                      caption_key=source.csv_caption_key, sep=source.csv_separator)


def _as_written(path: str, root: Path) -> str:
    """A CSV's image path as its file writes it: relative to the CSV's folder when inside it."""
    return os.path.relpath(path, root) if path.startswith(str(root) + os.sep) else path


def _wds_captions(shards: list[str], limit: int | None) -> list[str]:
    captions = []
    for sample in _shard_samples(shards):
        if "txt" in sample:
            caption = sample["txt"].decode("utf-8", errors="replace")
        elif "json" in sample:
            caption = json.loads(sample["json"]).get("caption")
        else:
            continue
        if isinstance(caption, str) and caption.strip():
            captions.append(caption.strip())
        if limit is not None and len(captions) >= limit:
            break
    return captions


def _read_captions(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--data: no such captions file: {p}")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


@torch.no_grad()
def _embed_texts(model, texts: list[str], device, batch_size: int, progress: bool) -> torch.Tensor:
    from euclip.eval.embed import embed_texts

    parts = [embed_texts(model, texts[s:s + _TEXT_CHUNK], device, batch_size)[0]
             for s in tqdm(range(0, len(texts), _TEXT_CHUNK), desc="index: embed captions", disable=not progress,
                           leave=False)]
    return torch.cat(parts) if parts else torch.empty(0, model.embed_dim)


def embed_source(model, source: IndexSource, device: torch.device | str = "cpu", progress: bool = True
                 ) -> tuple[torch.Tensor, list[str], dict]:
    """Embed ``source`` with ``model``: ``(points (N, D) float32 on the CPU, N ids, description)``.

    The description is :meth:`IndexSource.describe` plus ``"count"`` and ``"skipped"`` (unreadable images).

    Raises:
        FileNotFoundError: missing files.
        ValueError: a malformed source, or one without a single readable item (an empty data set).
    """
    from euclip.data.transforms import image_transform

    kind, limit = source.data_type, source.num_samples
    skipped = 0
    if kind == "synthetic":
        from euclip.eval.embed import DataSpec, embed

        spec = DataSpec("synthetic", split=source.split, num_samples=limit or 1000, seed=source.seed,
                        batch_size=source.batch_size, workers=source.workers)
        emb = embed(model, spec, device, progress=progress, desc="index: embed synthetic")
        if source.modality == "image":
            points, ids = emb.image, [f"{source.split}/{i:06d}" for i in range(emb.num_images)]
        else:
            points, ids = emb.text, list(emb.captions)
    elif source.modality == "text":
        if kind == "captions":
            texts = _read_captions(source.data)
        elif kind == "csv":
            texts = [c.strip() for c in _csv_rows(source).captions if c.strip()]
        else:
            from euclip.data.wds import expand_shards

            texts = _wds_captions(expand_shards(source.data), limit)
        texts = texts[:limit]
        points, ids = _embed_texts(model, texts, device, source.batch_size, progress), texts
    else:
        transform = image_transform(model.image_size, train=False)
        if kind == "webdataset":
            from euclip.data.wds import expand_shards

            shards = expand_shards(source.data)
            loader = DataLoader(_ShardImages(shards, transform), batch_size=source.batch_size,
                                num_workers=min(source.workers, len(shards)), collate_fn=_collate)
            points, ids, skipped = _embed_image_batches(model, loader, device, None, progress, limit)
        else:
            if kind == "folder":
                root = Path(source.data)
                paths = _folder_images(root)[:limit]
                names = [p.relative_to(root).as_posix() for p in paths]
                paths = [str(p) for p in paths]
            else:
                rows = _csv_rows(source)
                root = rows.path.resolve().parent
                paths = list(dict.fromkeys(p for p in rows.images if p is not None))[:limit]
                names = [_as_written(p, root) for p in paths]
            points, ids, skipped = embed_image_files(model, paths, names, device, source.batch_size, source.workers,
                                                     progress)
    if len(ids) == 0:
        what = "readable images" if source.modality == "image" else "captions"
        raise ValueError(f"--data {source.data or kind}: no {what} to index (an empty data set"
                         + (f"; {skipped} unreadable" if skipped else "") + ")")
    return points, ids, {**source.describe(), "count": len(ids), "skipped": skipped}
