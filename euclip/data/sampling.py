"""Deterministic, resumable sample orders over map-style datasets (synthetic, CSV).

The order of samples is a pure function of ``(seed, epoch)``, and random augmentations are seeded by
``(seed, epoch, index)``: a checkpoint only needs the step to resume at exactly the next sample, with the
same augmentations, whatever the number of workers. Every process takes its own slice of each *global*
batch, so ``W`` processes with batch ``B`` see exactly what one process with batch ``W·B`` sees; with
gradient accumulation over ``A`` micro-batches, an optimizer step's global batch is ``A·W·B`` consecutive
samples of the permutation, so ``--accum-freq A --batch-size B`` sees exactly what ``--batch-size A·B`` sees.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochIndexed", "GlobalBatchSampler", "describe_global_batch", "mix_seed"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    return zlib.crc32(repr(parts).encode()) | (zlib.adler32(repr(parts[::-1]).encode()) << 32) & (2**63 - 1)


def describe_global_batch(batch_size: int, world_size: int, accum_freq: int) -> str:
    """``"the global batch (B per process × W process(es) = G samples)"``, for errors about its size (every
    source words them alike)."""
    accum = f" × {accum_freq} accumulated micro-batches" if accum_freq > 1 else ""
    return (f"the global batch ({batch_size} per process × {world_size} process(es){accum} = "
            f"{batch_size * world_size * accum_freq} samples)")


class GlobalBatchSampler(Sampler):
    """Yields this process's micro-batches of ``(epoch, index)`` pairs, from a given optimizer step onwards, forever.

    Epoch ``e`` is a permutation of ``range(num_samples)`` seeded by ``(seed, e)``, cut into the global
    batches of the optimizer steps, ``G = accum_freq · world_size · batch_size`` samples each (the
    remainder is dropped). Step ``s``'s global batch is cut into ``accum_freq`` micro-batches of
    ``world_size · batch_size`` consecutive samples, and process ``r`` takes slice ``[r·B, (r+1)·B)``
    of each. The union over processes and micro-batches of a step is the same whatever ``W`` and
    ``accum_freq`` are, as long as ``G`` is: that is what makes distributed and accumulated runs equal
    one process with one big batch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, accum_freq: int = 1):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world, self.accum_freq = rank, world_size, accum_freq
        self.micro_batch = batch_size * self.world  # one micro-batch over all processes
        self.global_batch = self.micro_batch * accum_freq  # one optimizer step over all processes
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{describe_global_batch(batch_size, self.world, accum_freq)} is larger than the dataset "
                             f"({num_samples} samples); lower --batch-size or --accum-freq, or use more data")
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
            for s in range(within, self.steps_per_epoch):
                for m in range(self.accum_freq):
                    start = s * self.global_batch + m * self.micro_batch + self.rank * self.batch_size
                    yield [(epoch, i) for i in order[start:start + self.batch_size]]
            step = (epoch + 1) * self.steps_per_epoch

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite, so report one epoch of micro-batches
        return self.steps_per_epoch * self.accum_freq


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
