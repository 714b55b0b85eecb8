"""The batch every euclip data source yields, and the collate function that builds it.

Datasets return ``(image_tensor, caption)`` per sample, or ``None`` for a sample that could not
be read (a missing or corrupt image, an empty caption). The collate function drops those and
counts them, so a bad sample is skipped and reported instead of stopping a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


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
