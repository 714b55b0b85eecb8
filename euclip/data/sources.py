"""Data sources behind one small interface: what training streams and evaluations read.

Every source (``--dataset-type NAME``) is a :class:`DataSource` subclass registered with
:func:`register_source`. A source says what its samples provide (``captions``, ``labels``, ``attributes``:
evaluations declare what they need and run only on sources that have it) and implements

* :meth:`DataSource.check`: validate the options before any work, naming the flag or file at fault;
* :meth:`DataSource.train_stream`: the training stream, positioned at an optimizer step (exact resume);
* :meth:`DataSource.eval_batches`: evaluation batches of images, their captions and their per-image info.

Built in: ``synthetic`` (the rendered shapes, no files), ``csv`` (OpenCLIP's CsvDataset format),
``webdataset`` (img2dataset's tar shards) and, for evaluation only, ``folder`` (one sub-folder of images per
class, the ImageNet layout). A new format is one file with a subclass and the decorator, imported below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import logging

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from euclip.data.batch import Collate, NoReadableDataError, guard_readable
from euclip.data.sampling import EpochIndexed, GlobalBatchSampler, describe_global_batch
from euclip.options import option
from euclip.signals import ignore_stop_signals

__all__ = ["DATA_SOURCES", "DataSource", "DataSpec", "StreamPosition", "TrainDataOptions", "TrainStream",
           "check_source", "get_source", "register_source", "SYNTHETIC_EPOCH"]

SYNTHETIC_EPOCH = 50_000  # synthetic samples per epoch without --train-num-samples
_MAX_NAMED = 5  # unreadable evaluation images named in warnings (per process), the rest only counted

logger = logging.getLogger(__name__)

# One evaluation batch: images (B, 3, H, W) or None when none was readable, the captions of each image, the
# info of each image (synthetic attributes, a class label) or None, and the number of unreadable samples.
EvalBatch = tuple[torch.Tensor | None, list[list[str]], list[dict | None], int]


@dataclass(frozen=True)
class TrainDataOptions:
    """The training-data settings of a run (``TrainConfig.data_options()``); see ``euclip train --help``."""

    train_data: str | None = None
    train_num_samples: int | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "caption"
    csv_separator: str = "\t"
    synthetic_render_size: int | None = None
    synthetic_caption_levels: tuple[float, ...] | None = None
    synthetic_color_captions: tuple[float, ...] | None = None
    dataset_resampled: bool = False
    seed: int = 0
    workers: int = 2
    batch_size: int = 128  # per process
    accum_freq: int = 1


@dataclass(frozen=True)
class StreamPosition:
    """Which process reads, and from which optimizer step on."""

    rank: int = 0
    world_size: int = 1
    start_step: int = 0
    pin_memory: bool = False


@dataclass
class TrainStream:
    """A training stream: ``accum_freq`` micro-batches (:class:`~euclip.data.batch.Batch`) per optimizer step."""

    loader: Iterable
    steps_per_epoch: int  # optimizer steps
    num_samples: int  # samples per epoch


@dataclass
class DataSpec:
    """Which images (and captions) to evaluate on.

    Attributes:
        dataset_type: a registered source (``synthetic``, ``csv``, ``webdataset``, ``folder``).
        data: CSV/TSV file, shard pattern or image folder (unused for synthetic).
        split: synthetic split (``"test"`` or ``"heldout"``).
        num_samples: images to embed (synthetic: exactly this many; others: at most this many; ``None``: all of a
            file or folder, or a single pass over the shards).
        seed: synthetic dataset seed.
        csv_img_key, csv_caption_key, csv_separator: CSV columns and separator (OpenCLIP's flags).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
    """

    dataset_type: str = option("synthetic", choices=lambda: source_names(),
                               help="synthetic (built in), csv (OpenCLIP's CsvDataset format; rows sharing an image "
                                    "path are one image with several captions), webdataset shards, or folder (one "
                                    "sub-folder of images per class)",
                               default_text="from --data: a folder, a .tar pattern, a CSV file; else synthetic")
    data: str | None = option(None, metavar="PATH", help="CSV/TSV file, shard pattern like "
                                                         "'data/{00000..00009}.tar', or image folder")
    split: str = option("test", choices=("test", "heldout"), help="synthetic split")
    num_samples: int | None = option(1000, metavar="N", help="images to evaluate",
                                     default_text="synthetic: 1000; other data: all")
    seed: int = option(0, help="synthetic dataset seed")
    csv_img_key: str = option("filepath", metavar="COLUMN", help="CSV column of image paths")
    csv_caption_key: str = option("caption", metavar="COLUMN", help="CSV column of captions")
    csv_separator: str = option("\t", metavar="SEP", help="CSV column separator")
    batch_size: int = option(128, help="images per forward pass")
    workers: int = option(0, help="data-loading worker processes")

    def __post_init__(self):
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        get_source(self.dataset_type).check_eval(self)

    @property
    def source(self) -> "DataSource":
        return get_source(self.dataset_type)

    @property
    def tag(self) -> str:
        """A short name for file names: ``synthetic_test``, ``csv``, ``webdataset``, ``folder``."""
        return f"synthetic_{self.split}" if self.dataset_type == "synthetic" else self.dataset_type

    def describe(self) -> dict:
        """The settings that identify the data, for JSON results (only those that apply to the type)."""
        d = asdict(self)
        drop = {"data", "csv_img_key", "csv_caption_key", "csv_separator"} if self.dataset_type == "synthetic" \
            else {"split", "seed"} | ({"csv_img_key", "csv_caption_key", "csv_separator"}
                                      if self.dataset_type != "csv" else set())
        return {k: v for k, v in d.items() if k not in drop}


class DataSource:
    """One data format. Subclasses set ``name``, ``provides`` and ``help`` and implement what they support."""

    name: ClassVar[str]
    provides: ClassVar[frozenset[str]]  # "captions", "labels" (class per image), "attributes" (synthetic)
    help: ClassVar[str]
    trainable: ClassVar[bool] = True
    named_by_folders: ClassVar[bool] = False

    def check(self, options: TrainDataOptions, world_size: int = 1) -> None:
        """Validate training options before any work (errors name the flag or file)."""
        if not options.train_data:
            raise ValueError(f"--train-data is required with --dataset-type {self.name}")

    def train_stream(self, options: TrainDataOptions, tokenizer, image_size: int,
                     position: StreamPosition) -> TrainStream:
        raise ValueError(f"--dataset-type {self.name} is for evaluation only")

    def check_eval(self, spec: DataSpec) -> None:
        """Validate evaluation options (errors name the flag or file)."""
        if not spec.data:
            raise ValueError(f"--data is required with --dataset-type {self.name}")

    def eval_batches(self, spec: DataSpec, image_size: int) -> tuple[Iterable[EvalBatch], int | None]:
        """The evaluation batches of ``spec`` and their number (``None`` when unknown)."""
        raise NotImplementedError

    def capabilities(self, spec: DataSpec) -> frozenset[str]:
        """What ``spec``'s samples provide (a source whose sets differ, e.g. CLIP_benchmark's, looks at the data)."""
        return self.provides

    def class_names(self, spec: DataSpec) -> list[str] | None:
        """Labelled sources: the name of each label (the ``class`` of the images' info), in label order."""
        return None

    def default_templates(self, spec: DataSpec) -> list[str] | None:
        """Labelled sources that ship prompt templates with the data; ``None``: OpenCLIP's ImageNet ones."""
        return None


DATA_SOURCES: dict[str, DataSource] = {}


def register_source(cls: type[DataSource]) -> type[DataSource]:
    """Class decorator: make ``cls`` available as ``--dataset-type cls.name``."""
    if cls.name in DATA_SOURCES:
        raise ValueError(f"a data source named {cls.name!r} is already registered")
    DATA_SOURCES[cls.name] = cls()
    return cls


def check_source(name: str, training: bool = False) -> str:
    valid = [n for n, s in DATA_SOURCES.items() if s.trainable or not training]
    if name not in valid:
        raise ValueError(f"unknown dataset type {name!r}; valid types: {', '.join(valid)}")
    return name


def get_source(name: str) -> DataSource:
    return DATA_SOURCES[check_source(name)]


def infer_source(data: str | None) -> str:
    """The source a ``--data`` path looks like: ``folder`` (a directory), ``webdataset`` (a ``.tar`` pattern),
    ``csv`` (any other file), ``synthetic`` (none given)."""
    if data is None:
        return "synthetic"
    if Path(data).is_dir():
        return "clip_benchmark" if any((Path(data) / "test").glob("*.tar")) else "folder"
    return "webdataset" if ".tar" in data else "csv"


def source_names(training: bool = False) -> list[str]:
    """The registered sources (for ``--dataset-type`` choices); only trainable ones with ``training``."""
    return [n for n, s in DATA_SOURCES.items() if s.trainable or not training]


# ----------------------------------------------------------------------------------------------------------------
# Map-style sources share the deterministic sampler
# ----------------------------------------------------------------------------------------------------------------


def _map_stream(dataset: Dataset, wrapped: EpochIndexed, options: TrainDataOptions, tokenizer,
                position: StreamPosition) -> TrainStream:
    sampler = GlobalBatchSampler(len(dataset), options.batch_size, options.seed, position.rank, position.world_size,
                                 position.start_step, options.accum_freq)
    loader = DataLoader(wrapped, batch_sampler=sampler, collate_fn=Collate(tokenizer), num_workers=options.workers,
                        persistent_workers=options.workers > 0, pin_memory=position.pin_memory,
                        prefetch_factor=4 if options.workers > 0 else None,
                        worker_init_fn=ignore_stop_signals)  # the trainer handles preemption (euclip.signals)
    # An epoch of this process's samples that are all unreadable: every row was tried, the data is unreadable.
    epoch = sampler.steps_per_epoch * options.accum_freq * options.batch_size
    return TrainStream(_Guarded(loader, epoch, options.train_data or "the data"), sampler.steps_per_epoch,
                       len(dataset))


class _Guarded:
    """A loader whose iterations raise :class:`NoReadableDataError` after ``limit`` unreadable samples in a row
    (see :func:`~euclip.data.batch.guard_readable`); re-iterable like the loader it wraps."""

    def __init__(self, loader: Iterable, limit: int, data: str):
        self.loader, self.limit, self.data = loader, limit, data

    def __iter__(self) -> Iterator:
        return guard_readable(self.loader, self.limit, self.data)


def _collate_eval(items: list[tuple[torch.Tensor, list[str], dict | None] | None]) -> EvalBatch:
    good = [it for it in items if it is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    return images, [it[1] for it in good], [it[2] for it in good], len(items) - len(good)


def _eval_loader(dataset: Dataset, spec: DataSpec) -> tuple[DataLoader, int]:
    loader = DataLoader(dataset, batch_size=spec.batch_size, num_workers=spec.workers, collate_fn=_collate_eval)
    return loader, len(loader)


class _SkipLog:
    """Names the first few unreadable evaluation images in warnings (per process); the rest are only counted (the
    evaluation's ``skipped_images``), as training does."""

    def __init__(self, data: str):
        self.data, self.count = data, 0

    def __call__(self, path: str, exn: Exception) -> None:
        self.count += 1
        if self.count <= _MAX_NAMED:
            logger.warning("%s: skipping unreadable image %s: %s: %s", self.data, path, type(exn).__name__, exn)
            if self.count == _MAX_NAMED:
                logger.warning("%s: further unreadable images are only counted", self.data)


def _eval_transform(image_size: int):
    from euclip.data.transforms import image_transform

    return image_transform(image_size, train=False)


# ----------------------------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------------------------


class _SyntheticPairs(Dataset):
    def __init__(self, split: str, size: int, seed: int, image_size: int):
        from euclip.data.synthetic import SyntheticShapes

        self.dataset = SyntheticShapes(split, size=size, seed=seed, image_size=image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, caption = self.dataset[i]
        return image, [caption], asdict(self.dataset.attributes(i))


@register_source
class SyntheticSource(DataSource):
    name = "synthetic"
    provides = frozenset({"captions", "labels", "attributes"})
    help = "the built-in rendered shapes (no files)"

    def check(self, options: TrainDataOptions, world_size: int = 1) -> None:
        if options.synthetic_render_size is not None and options.synthetic_render_size < 8:
            raise ValueError(f"--synthetic-render-size must be >= 8, got {options.synthetic_render_size}")
        if options.synthetic_caption_levels is not None:
            from euclip.data.synthetic import check_level_probs

            try:
                check_level_probs(options.synthetic_caption_levels)
            except ValueError as exn:
                raise ValueError(f"--synthetic-caption-levels: {exn}") from None
        if options.synthetic_color_captions is not None:
            from euclip.data.synthetic import check_color_captions

            try:
                check_color_captions(options.synthetic_color_captions)
            except ValueError as exn:
                raise ValueError(f"--synthetic-color-captions: {exn}") from None
        size = options.train_num_samples or SYNTHETIC_EPOCH
        global_batch = options.batch_size * world_size * options.accum_freq
        if global_batch > size:
            raise ValueError(f"the global batch ({options.batch_size} per process × {world_size} process(es) × "
                             f"{options.accum_freq} accumulated = {global_batch}) is larger than the synthetic "
                             f"epoch (--train-num-samples {size})")

    def train_stream(self, options: TrainDataOptions, tokenizer, image_size: int,
                     position: StreamPosition) -> TrainStream:
        from euclip.data.synthetic import LEVEL_PROBS, SyntheticShapes

        # Rendered at synthetic_render_size when given: the trainer resizes on the device (rendering large
        # images is the CPU bottleneck of GPU runs).
        dataset = SyntheticShapes("train", size=options.train_num_samples or SYNTHETIC_EPOCH, seed=options.seed,
                                  image_size=options.synthetic_render_size or image_size,
                                  level_probs=options.synthetic_caption_levels or LEVEL_PROBS,
                                  color_captions=options.synthetic_color_captions or (0.0,))
        # Synthetic samples are pure functions of their index: no transform randomness to seed, and every epoch
        # reads new samples.
        wrapped = EpochIndexed(dataset, options.seed, fresh_per_epoch=True, random_transform=False)
        return _map_stream(dataset, wrapped, options, tokenizer, position)

    def check_eval(self, spec: DataSpec) -> None:
        if not spec.num_samples:
            raise ValueError("the synthetic dataset needs --num-samples (it has no end)")

    def eval_batches(self, spec: DataSpec, image_size: int):
        return _eval_loader(_SyntheticPairs(spec.split, spec.num_samples, spec.seed, image_size), spec)


# ----------------------------------------------------------------------------------------------------------------
# csv
# ----------------------------------------------------------------------------------------------------------------


class _GroupedCsv(Dataset):
    """One item per distinct image path of a CSV file, with all of that image's captions (rows in file order)."""

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
        self.skip_log = _SkipLog(spec.data)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, captions = self.items[i]
        try:
            with Image.open(path) as image:
                return self.transform(image), captions, None
        except Exception as exn:  # noqa: BLE001 - any unreadable image is skipped and counted, as in training
            self.skip_log(path, exn)
            return None


@register_source
class CsvSource(DataSource):
    name = "csv"
    provides = frozenset({"captions"})
    help = "OpenCLIP's CsvDataset format: a TSV/CSV of image paths and captions"

    def check(self, options: TrainDataOptions, world_size: int = 1) -> None:
        super().check(options, world_size)
        if not Path(options.train_data).is_file():
            raise FileNotFoundError(f"--train-data: no such file: {options.train_data}")

    def train_stream(self, options: TrainDataOptions, tokenizer, image_size: int,
                     position: StreamPosition) -> TrainStream:
        from euclip.data.csv import CsvDataset
        from euclip.data.transforms import image_transform

        dataset = CsvDataset(options.train_data, image_transform(image_size, train=True), img_key=options.csv_img_key,
                             caption_key=options.csv_caption_key, sep=options.csv_separator)
        return _map_stream(dataset, EpochIndexed(dataset, options.seed), options, tokenizer, position)

    def check_eval(self, spec: DataSpec) -> None:
        super().check_eval(spec)
        if not Path(spec.data).is_file():
            raise FileNotFoundError(f"--data: no such CSV file: {spec.data}")

    def eval_batches(self, spec: DataSpec, image_size: int):
        return _eval_loader(_GroupedCsv(spec, _eval_transform(image_size)), spec)


# ----------------------------------------------------------------------------------------------------------------
# webdataset
# ----------------------------------------------------------------------------------------------------------------


def _no_tokens(captions: list[str]) -> torch.Tensor:
    # make_wds_loader wants a tokenizer; evaluation tokenizes later with the model's own, so this is a placeholder
    # (module level: it must pickle into DataLoader workers).
    return torch.zeros(len(captions), 1, dtype=torch.long)


def _wds_stream(loader, start_batch: int, batches_per_epoch: int) -> Iterator:
    """Chain webdataset epochs from micro-batch ``start_batch``; the loader skips the batches already trained on.

    With ``--train-num-samples`` every epoch is a pure function of ``(seed, epoch)`` (see
    :mod:`euclip.data.wds`), so resuming mid-epoch yields the same batches as an uninterrupted run, as long as
    shards, batch size, workers and processes are unchanged.
    """
    epoch, skip = divmod(start_batch, batches_per_epoch)
    while True:
        loader.set_epoch(epoch, start_batch=skip)
        batches = 0
        for batch in loader:
            batches += 1
            yield batch
        if not batches:
            # The workers end their streams with an error when their shards yield nothing; an epoch without a
            # batch that got past them must not become an endless loop over empty epochs either.
            raise NoReadableDataError(f"webdataset epoch {epoch} yielded no batch at all")
        skip = 0
        epoch += 1


def _wds_eval_batches(spec: DataSpec, transform) -> Iterator[EvalBatch]:
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


@register_source
class WebdatasetSource(DataSource):
    name = "webdataset"
    provides = frozenset({"captions"})
    help = "tar shards of NNN.jpg|png|webp + NNN.txt|json (img2dataset's layout)"

    def check(self, options: TrainDataOptions, world_size: int = 1) -> None:
        from euclip.data.wds import expand_shards

        super().check(options, world_size)
        expand_shards(options.train_data)  # names missing local shards (FileNotFoundError)
        if not options.train_num_samples:
            raise ValueError("--train-num-samples is required with --dataset-type webdataset (it defines an epoch)")
        global_batch = options.batch_size * world_size * options.accum_freq
        if global_batch > options.train_num_samples:
            # As for CSV data (GlobalBatchSampler): the epoch would be rounded up to one batch of mostly repeats.
            raise ValueError(f"{describe_global_batch(options.batch_size, world_size, options.accum_freq)} is larger "
                             f"than the epoch (--train-num-samples {options.train_num_samples}); lower --batch-size "
                             "or --accum-freq, or raise --train-num-samples")

    def train_stream(self, options: TrainDataOptions, tokenizer, image_size: int,
                     position: StreamPosition) -> TrainStream:
        from euclip.data.transforms import image_transform
        from euclip.data.wds import make_wds_loader

        accum = options.accum_freq
        # Round the epoch up (as OpenCLIP does, to whole batches per worker) also to whole optimizer steps, so that
        # an accumulated step never straddles two epochs and resuming maps steps to batches exactly.
        unit = options.batch_size * position.world_size * max(options.workers, 1) * accum
        num_samples = -(-options.train_num_samples // unit) * unit
        loader = make_wds_loader(options.train_data, image_transform(image_size, train=True), tokenizer,
                                 options.batch_size, num_workers=options.workers, num_samples=num_samples,
                                 resampled=options.dataset_resampled, seed=options.seed, rank=position.rank,
                                 world_size=position.world_size, pin_memory=position.pin_memory)
        stream = _wds_stream(loader, position.start_step * accum, loader.num_batches)
        stream = guard_readable(stream, loader.num_samples, options.train_data)
        return TrainStream(stream, loader.num_batches // accum, num_samples)

    def check_eval(self, spec: DataSpec) -> None:
        from euclip.data.wds import expand_shards

        super().check_eval(spec)
        expand_shards(spec.data)

    def eval_batches(self, spec: DataSpec, image_size: int):
        n = None if spec.num_samples is None else -(-spec.num_samples // spec.batch_size)
        return _wds_eval_batches(spec, _eval_transform(image_size)), n


# ----------------------------------------------------------------------------------------------------------------
# folder (evaluation only)
# ----------------------------------------------------------------------------------------------------------------


class _LabelledFolder(Dataset):
    """``root/<class>/<image>`` as items ``(image, [], {"label": index, "class": folder name})``."""

    def __init__(self, spec: DataSpec, image_size: int):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(spec.data, transform=_eval_transform(image_size))
        n = len(self.folder)
        # At most num_samples images, evenly spaced over the folder (every class keeps a share).
        self.indices = (list(range(n)) if spec.num_samples is None or spec.num_samples >= n
                        else torch.linspace(0, n - 1, spec.num_samples).round().long().unique().tolist())
        self.skip_log = _SkipLog(spec.data)

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        try:
            image, label = self.folder[self.indices[i]]
        except Exception as exn:  # noqa: BLE001 - PIL's UnidentifiedImageError, OSError (truncated), ...
            self.skip_log(self.folder.samples[self.indices[i]][0], exn)  # skipped and counted, as in training
            return None
        return image, [], {"label": label, "class": self.folder.classes[label]}


@register_source
class FolderSource(DataSource):
    name = "folder"
    provides = frozenset({"labels"})
    help = "one sub-folder of images per class (ImageNet layout; evaluation only)"
    trainable = False
    named_by_folders = True  # --classnames must name the sub-folders (euclip.eval.classnames checks the order)

    def check_eval(self, spec: DataSpec) -> None:
        super().check_eval(spec)
        if not Path(spec.data).is_dir():
            raise FileNotFoundError(f"--data: no such folder: {spec.data}")

    def eval_batches(self, spec: DataSpec, image_size: int):
        return _eval_loader(_LabelledFolder(spec, image_size), spec)

    def class_names(self, spec: DataSpec) -> list[str]:
        return folder_classes(spec.data)


def folder_classes(path: str | Path) -> list[str]:
    """The class names of an image folder, in the order of its labels (sorted sub-folder names)."""
    from torchvision.datasets.folder import find_classes

    return find_classes(str(path))[0]


import euclip.data.clip_benchmark  # noqa: E402,F401 - registers the clip_benchmark source
