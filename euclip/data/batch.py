"""The batch every euclip data source yields, the collate function that builds it, and the guard that stops a
stream which reads nothing.

Datasets return ``(image_tensor, caption)`` per sample, or ``None`` for a sample that could not
be read (a missing or corrupt image, an empty caption). The collate function drops those and
counts them, so a bad sample is skipped and reported instead of stopping a run. Data that is
unreadable as a whole is another matter: :func:`guard_readable` turns a stream of nothing but
skipped samples into a :class:`NoReadableDataError` naming the data, rather than a run that
"succeeds" without having trained on a single sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch


# A stream stops after this many unreadable samples in a row even before a whole epoch of them: with any
# fraction of readable samples that is still worth training on (say 1 %), 100,000 misses in a row never happen
# by chance, while a dataset of dead links or zero-byte files is refused in seconds rather than after an epoch.
MAX_UNREADABLE_IN_A_ROW = 100_000


class NoReadableDataError(ValueError):
    """The data cannot be read at all (every shard, or every sample tried): a run on it would train on nothing.

    A ``ValueError``, so that the CLI reports it as bad input: one line naming the data, exit code 2.
    """


def caption_id(caption: str) -> int:
    """A stable 63-bit id of a caption's text (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(caption.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) float
    tokens: torch.Tensor  # (B, context_length) long
    caption_ids: torch.Tensor  # (B,) long: equal ids = identical captions (shared positives)
    captions: list[str]
    skipped: int = 0  # samples of this batch dropped as unreadable

    def __len__(self) -> int:
        return len(self.captions)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(self.images.to(device, non_blocking=non_blocking),
                     self.tokens.to(device, non_blocking=non_blocking),
                     self.caption_ids.to(device, non_blocking=non_blocking), self.captions, self.skipped)

    def pin_memory(self) -> "Batch":
        # DataLoader(pin_memory=True) calls this on custom batch types.
        return Batch(self.images.pin_memory(), self.tokens.pin_memory(), self.caption_ids.pin_memory(),
                     self.captions, self.skipped)


class Collate:
    """Stack images, tokenize captions, drop unreadable (``None``) samples and count them.

    Args:
        tokenizer: callable mapping a list of strings to a ``(B, L)`` LongTensor (OpenCLIP's).
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]):
        self.tokenizer = tokenizer

    def __call__(self, samples: Sequence[tuple[torch.Tensor, str] | None]) -> Batch:
        good = [s for s in samples if s is not None]
        skipped = len(samples) - len(good)
        if not good:
            return Batch(torch.empty(0, 3, 1, 1), torch.empty(0, 1, dtype=torch.long),
                         torch.empty(0, dtype=torch.long), [], skipped)
        images = torch.stack([s[0] for s in good])
        captions = [s[1] for s in good]
        return Batch(images, self.tokenizer(captions),
                     torch.tensor([caption_id(c) for c in captions], dtype=torch.long), captions, skipped)


def guard_readable(batches: Iterable[Batch], limit: int, data: str) -> Iterator[Batch]:
    """``batches``, raising :class:`NoReadableDataError` once ``limit`` samples in a row were all unreadable.

    Single bad samples, and even a whole batch of them, are skipped and counted (``Batch.skipped``); only a run
    of ``min(limit, MAX_UNREADABLE_IN_A_ROW)`` unreadable samples without a readable one in between (``limit``:
    one epoch of this process's samples, i.e. every sample was tried) means the data as a whole is unreadable.

    Args:
        batches: the stream.
        limit: raw samples of one epoch on this process.
        data: what to name in the error (the ``--train-data`` value).
    """
    limit = max(1, min(limit, MAX_UNREADABLE_IN_A_ROW))
    in_a_row = 0
    for batch in batches:
        in_a_row = in_a_row + batch.skipped if len(batch) == 0 else 0
        if in_a_row >= limit:
            raise NoReadableDataError(nothing_readable(data, in_a_row))
        yield batch


def nothing_readable(data: str, skipped: int, read: str = "in a row") -> str:
    """The message of a stream (or run) that read ``skipped`` samples (``read``: how) and none was usable."""
    return (f"no readable sample in {data}: all {skipped} samples read {read} were unreadable (missing, empty or "
            "corrupt images, or no caption); the warnings above name the first ones")
