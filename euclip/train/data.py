"""Training data: deterministic, resumable sample orders over map-style datasets, and webdataset streams.

For the synthetic and CSV datasets the order of samples is a pure function of ``(seed, epoch)``,
and random augmentations are seeded by ``(seed, epoch, index)``: a checkpoint only needs the step
to resume at exactly the next sample, with the same augmentations, whatever the number of
workers. Every process takes its own slice of each *global* batch, so ``W`` processes with batch
``B`` see exactly what one process with batch ``W·B`` sees.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from euclip.data.batch import Collate
from euclip.train.config import TrainConfig
from euclip.train.distributed import DistInfo


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    return zlib.crc32(repr(parts).encode()) | (zlib.adler32(repr(parts[::-1]).encode()) << 32) & (2**63 - 1)


class GlobalBatchSampler(Sampler):
    """Yields this process's batches of ``(epoch, index)`` pairs, from a given step onwards, forever.

    Epoch ``e`` is a permutation of ``range(num_samples)`` seeded by ``(seed, e)``, cut into global
    batches of ``batch_size · world_size`` (the remainder is dropped); process ``r`` takes slice
    ``[r·B, (r+1)·B)`` of each.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, dist_info: DistInfo, start_step: int = 0):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = dist_info.rank, dist_info.world_size
        self.global_batch = batch_size * self.world
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the global batch ({batch_size} per process × {self.world} processes = "
                             f"{self.global_batch}) is larger than the dataset ({num_samples} samples)")
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
            for b in range(within, self.steps_per_epoch):
                start = b * self.global_batch + self.rank * self.batch_size
                yield [(epoch, i) for i in order[start:start + self.batch_size]]
            step = (epoch + 1) * self.steps_per_epoch

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite, so report one epoch
        return self.steps_per_epoch


class EpochIndexed(Dataset):
    """Wraps a map-style dataset so that ``dataset[(epoch, index)]`` is reproducible.

    The transform's randomness is seeded by ``(seed, epoch, index)`` inside a forked RNG, so the
    caller's RNG is untouched. With ``fresh_per_epoch`` (the infinite synthetic stream) epoch ``e``
    reads samples ``e·N + index``: every epoch is new data.
    """

    def __init__(self, dataset: Dataset, seed: int, fresh_per_epoch: bool = False, random_transform: bool = True):
        self.dataset, self.seed, self.fresh_per_epoch = dataset, seed, fresh_per_epoch
        self.random_transform = random_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if not self.random_transform:
            return self.dataset[epoch * len(self.dataset) + index if self.fresh_per_epoch else index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.dataset[epoch * len(self.dataset) + index if self.fresh_per_epoch else index]


@dataclass
class TrainData:
    loader: object  # iterable of Batch
    steps_per_epoch: int
    exact_resume: bool  # webdataset: exact for unchanged shards, batch size, workers and processes
    num_samples: int


def build_train_data(cfg: TrainConfig, tokenizer, image_size: int, dist_info: DistInfo, start_step: int,
                     pin_memory: bool = False) -> TrainData:
    """The training stream for ``cfg.dataset_type``, positioned at ``start_step``."""
    collate = Collate(tokenizer)
    if cfg.dataset_type == "webdataset":
        from euclip.data.transforms import image_transform
        from euclip.data.wds import make_wds_loader

        if not cfg.train_num_samples:
            raise ValueError("--train-num-samples is required with --dataset-type webdataset (it defines an epoch)")
        loader = make_wds_loader(cfg.train_data, image_transform(image_size, train=True), tokenizer, cfg.batch_size,
                                 num_workers=cfg.workers, num_samples=cfg.train_num_samples,
                                 resampled=cfg.dataset_resampled, seed=cfg.seed, rank=dist_info.rank,
                                 world_size=dist_info.world_size, pin_memory=pin_memory)
        steps_per_epoch = loader.num_batches
        return TrainData(_wds_stream(loader, start_step, steps_per_epoch), steps_per_epoch, True,
                         cfg.train_num_samples)

    if cfg.dataset_type == "synthetic":
        from euclip.data.synthetic import SyntheticShapes

        dataset = SyntheticShapes("train", size=cfg.train_num_samples or 50_000, seed=cfg.seed, image_size=image_size)
        # Synthetic samples are pure functions of their index: no transform randomness to seed.
        wrapped = EpochIndexed(dataset, cfg.seed, fresh_per_epoch=True, random_transform=False)
    else:
        from euclip.data.csv import CsvDataset
        from euclip.data.transforms import image_transform

        dataset = CsvDataset(cfg.train_data, image_transform(image_size, train=True), img_key=cfg.csv_img_key,
                             caption_key=cfg.csv_caption_key, sep=cfg.csv_separator)
        wrapped = EpochIndexed(dataset, cfg.seed)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, cfg.seed, dist_info, start_step)
    loader = DataLoader(wrapped, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=pin_memory,
                        prefetch_factor=4 if cfg.workers > 0 else None)
    return TrainData(loader, sampler.steps_per_epoch, True, len(dataset))


def _wds_stream(loader, start_step: int, steps_per_epoch: int):
    """Chain webdataset epochs from ``start_step``; the loader skips the batches already trained on.

    With ``--train-num-samples`` every epoch is a pure function of ``(seed, epoch)`` (see
    :mod:`euclip.data.wds`), so resuming mid-epoch yields the same batches as an uninterrupted run,
    as long as shards, batch size, workers and processes are unchanged.
    """
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        loader.set_epoch(epoch, start_batch=skip)
        yield from loader
        skip = 0
        epoch += 1
