"""Embed an evaluation set of image-caption pairs with a trained model, in batches, for every evaluation.

Retrieval, geometry diagnostics, traversals and hierarchy scores all start from the same thing: the manifold points
of a set of images and of their captions, with a map from each caption to its image. :class:`DataSpec` names a data
source (the synthetic test split, a CSV/TSV file or webdataset shards), :func:`embed` streams it through the model
in batches with a progress bar and returns an :class:`Embeddings`. Only ``(N, D)`` embeddings are kept, never
images.

Several captions per image are supported: a CSV with several rows for one image path gives one image and several
captions (rows are grouped by path, in file order). Webdataset samples and synthetic samples carry one caption each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from euclip import geometry as geom

__all__ = ["DATASET_TYPES", "DataSpec", "Embeddings", "curvature_of", "embed", "embed_texts", "norms"]

DATASET_TYPES: tuple[str, ...] = ("synthetic", "csv", "webdataset")


def curvature_of(model) -> float:
    """The model's ``c`` as a plain float (1.0 for the geometries that ignore it)."""
    c = model.curvature
    return float(c.detach().item()) if isinstance(c, torch.Tensor) else float(c)


@dataclass
class DataSpec:
    """Which image-caption pairs to evaluate on.

    Attributes:
        dataset_type: ``"synthetic"``, ``"csv"`` or ``"webdataset"``.
        data: CSV/TSV file or shard pattern (unused for synthetic).
        split: synthetic split (``"test"`` or ``"heldout"``).
        num_samples: images to embed (synthetic: exactly this many; csv/webdataset: at most this many;
            ``None``: all of a file or a single pass over the shards).
        seed: synthetic dataset seed.
        csv_img_key, csv_caption_key, csv_separator: CSV columns and separator (OpenCLIP's flags).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
    """

    dataset_type: str = "synthetic"
    data: str | None = None
    split: str = "test"
    num_samples: int | None = 1000
    seed: int = 0
    csv_img_key: str = "filepath"
    csv_caption_key: str = "caption"
    csv_separator: str = "\t"
    batch_size: int = 128
    workers: int = 0

    def __post_init__(self):
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"unknown dataset type {self.dataset_type!r}; valid types: {', '.join(DATASET_TYPES)}")
        if self.dataset_type != "synthetic" and not self.data:
            raise ValueError(f"--data is required with --dataset-type {self.dataset_type}")
        if self.dataset_type == "synthetic" and not self.num_samples:
            raise ValueError("the synthetic dataset needs --num-samples (it has no end)")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")

    def describe(self) -> dict:
        """The settings that identify the data, for JSON results (only those that apply to the type)."""
        d = asdict(self)
        if self.dataset_type == "synthetic":
            for k in ("data", "csv_img_key", "csv_caption_key", "csv_separator"):
                d.pop(k)
        else:
            d.pop("split")
            d.pop("seed")
            if self.dataset_type != "csv":
                for k in ("csv_img_key", "csv_caption_key", "csv_separator"):
                    d.pop(k)
        return d


@dataclass
class Embeddings:
    """Manifold points of a set of images and captions (hyperbolic: space components).

    Attributes:
        image: ``(N_i, D)`` image embeddings.
        text: ``(N_t, D)`` caption embeddings.
        text_to_image: ``(N_t,)`` long, the row of ``image`` each caption describes.
        image_tower_norm: ``(N_i,)`` norms of the image tower outputs before the geometry head
            (for elliptic models the only norm that varies).
        text_tower_norm: ``(N_t,)`` the same for captions.
        captions: the ``N_t`` caption strings.
        geometry, logit, curvature: the model's, so metrics can be computed without the model.
        image_info: synthetic data only: per image, ``{"shape", "family", "color", ...}`` attributes.
        caption_levels: synthetic data only: ``(N_t,)`` caption specificity level 0..4.
        skipped: images that could not be read (csv/webdataset), with their captions left out.
    """

    image: torch.Tensor
    text: torch.Tensor
    text_to_image: torch.Tensor
    image_tower_norm: torch.Tensor
    text_tower_norm: torch.Tensor
    captions: list[str]
    geometry: str
    logit: str
    curvature: float
    image_info: list[dict] | None = None
    caption_levels: torch.Tensor | None = None
    skipped: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.image.shape[0]

    @property
    def num_texts(self) -> int:
        return self.text.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Sources: each yields (images (B, 3, H, W), captions per image, info per image or None)
# ----------------------------------------------------------------------------------------------------------------

Item = tuple[torch.Tensor, list[str], dict | None]


def _collate(items: list[Item | None]) -> tuple[torch.Tensor | None, list[list[str]], list[dict | None], int]:
    good = [it for it in items if it is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    return images, [it[1] for it in good], [it[2] for it in good], len(items) - len(good)


class _SyntheticPairs(Dataset):
    def __init__(self, split: str, size: int, seed: int, image_size: int):
        from euclip.data.synthetic import SyntheticShapes

        self.dataset = SyntheticShapes(split, size=size, seed=seed, image_size=image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Item:
        image, caption = self.dataset[i]
        attrs = self.dataset.attributes(i)
        return image, [caption], asdict(attrs)


class _GroupedCsv(Dataset):
    """One item per distinct image path of a CSV file, with all of that image's captions."""

    def __init__(self, spec: DataSpec, transform: Callable[[Image.Image], torch.Tensor]):
        from euclip.data.csv import CsvDataset

        # CsvDataset parses and validates the file (columns, separator); its rows are regrouped here.
        rows = CsvDataset(spec.data, transform, img_key=spec.csv_img_key, caption_key=spec.csv_caption_key,
                          sep=spec.csv_separator)
        groups: dict[str, list[str]] = {}
        for path, caption in zip(rows.images, rows.captions):
            if path is not None and caption.strip():
                groups.setdefault(path, []).append(caption)
        self.items = list(groups.items())[:spec.num_samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item | None:
        path, captions = self.items[i]
        try:
            with Image.open(path) as image:
                return self.transform(image), captions, None
        except Exception:  # noqa: BLE001 - any unreadable image is skipped and counted, as in training
            return None


def _no_tokens(captions: list[str]) -> torch.Tensor:
    # make_wds_loader wants a tokenizer; captions are tokenized later with the model's own, so this is a placeholder
    # (module level: it must pickle into DataLoader workers).
    return torch.zeros(len(captions), 1, dtype=torch.long)


def _wds_batches(spec: DataSpec, transform) -> Iterator[tuple[torch.Tensor | None, list[list[str]], list, int]]:
    from euclip.data.wds import make_wds_loader

    # One deterministic pass: no shuffling, so repeated evaluations see the same samples.
    loader = make_wds_loader(spec.data, transform, _no_tokens, spec.batch_size, num_workers=spec.workers,
                             num_samples=None, shuffle_buffer=0)
    seen = 0
    for batch in loader:
        images, captions = batch.images, batch.captions
        if spec.num_samples is not None:
            keep = min(len(captions), spec.num_samples - seen)
            images, captions = images[:keep], captions[:keep]
        seen += len(captions)
        yield (images if len(captions) else None), [[c] for c in captions], [None] * len(captions), batch.skipped
        if spec.num_samples is not None and seen >= spec.num_samples:
            break


def _batches(spec: DataSpec, image_size: int) -> tuple[Iterable, int | None]:
    """The batches of ``spec`` and their number (``None`` when unknown: webdataset)."""
    from euclip.data.transforms import image_transform

    if spec.dataset_type == "webdataset":
        n = None if spec.num_samples is None else -(-spec.num_samples // spec.batch_size)
        return _wds_batches(spec, image_transform(image_size, train=False)), n
    if spec.dataset_type == "synthetic":
        dataset = _SyntheticPairs(spec.split, spec.num_samples, spec.seed, image_size)
    else:
        if not Path(spec.data).is_file():
            raise FileNotFoundError(f"--data: no such CSV file: {spec.data}")
        dataset = _GroupedCsv(spec, image_transform(image_size, train=False))
    loader = DataLoader(dataset, batch_size=spec.batch_size, num_workers=spec.workers, collate_fn=_collate)
    return loader, len(loader)


# ----------------------------------------------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_texts(model, texts: list[str], device: torch.device | str = "cpu",
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Manifold points ``(N, D)`` and tower-output norms ``(N,)`` of ``texts``, in batches, on the CPU."""
    tokenizer = model.tokenizer()
    points, norms = [], []
    for start in range(0, len(texts), batch_size):
        features = model.towers.encode_text(tokenizer(texts[start:start + batch_size]).to(device)).float()
        norms.append(features.norm(dim=-1).cpu())
        points.append(model.to_manifold(features, "text").float().cpu())
    if not points:
        d = model.embed_dim
        return torch.empty(0, d), torch.empty(0)
    return torch.cat(points), torch.cat(norms)


@torch.no_grad()
def embed(model, spec: DataSpec, device: torch.device | str = "cpu", progress: bool = True,
          desc: str = "embed") -> Embeddings:
    """Embed the images and captions of ``spec`` with ``model``, batch by batch.

    Args:
        model: a :class:`~euclip.model.GeometricCLIP` (in eval mode).
        spec: the data.
        device: where the model is.
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        :class:`Embeddings` on the CPU, float32.

    Raises:
        ValueError: the data yielded no readable image.
    """
    batches, total = _batches(spec, model.image_size)
    tokenizer = model.tokenizer()
    image_parts, image_norms, text_parts, text_norms, owners = [], [], [], [], []
    captions: list[str] = []
    infos: list[dict | None] = []
    skipped = 0
    for images, caps, info, bad in tqdm(batches, desc=desc, total=total, disable=not progress, leave=False):
        skipped += bad
        if images is None:
            continue
        f_image = model.towers.encode_image(images.to(device)).float()
        image_norms.append(f_image.norm(dim=-1).cpu())
        image_parts.append(model.to_manifold(f_image, "image").float().cpu())
        offset = len(infos)
        flat = [c for per_image in caps for c in per_image]
        f_text = model.towers.encode_text(tokenizer(flat).to(device)).float()
        text_norms.append(f_text.norm(dim=-1).cpu())
        text_parts.append(model.to_manifold(f_text, "text").float().cpu())
        owners += [offset + i for i, per_image in enumerate(caps) for _ in per_image]
        captions += flat
        infos += info
    if not image_parts:
        raise ValueError(f"no readable image-caption pairs in {spec.describe()}")
    image_info = infos if all(i is not None for i in infos) else None
    levels = None
    if image_info is not None and spec.dataset_type == "synthetic":
        # Synthetic samples have one caption each, so caption i belongs to image i.
        levels = torch.tensor([image_info[j]["caption_level"] for j in owners], dtype=torch.long)
    return Embeddings(image=torch.cat(image_parts), text=torch.cat(text_parts),
                      text_to_image=torch.tensor(owners, dtype=torch.long), image_tower_norm=torch.cat(image_norms),
                      text_tower_norm=torch.cat(text_norms), captions=captions, geometry=model.geometry,
                      logit=model.logit, curvature=curvature_of(model), image_info=image_info,
                      caption_levels=levels, skipped=skipped)


def norms(emb: Embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from the origin (hyperbolic: from the vertex) of ``emb``'s images ``(N_i,)`` and texts ``(N_t,)``."""
    return (geom.norm_from_origin(emb.image, emb.geometry, emb.curvature),
            geom.norm_from_origin(emb.text, emb.geometry, emb.curvature))
