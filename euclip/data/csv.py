"""Image-text pairs listed in a CSV/TSV file, in OpenCLIP's ``CsvDataset`` format.

One row per pair; one column holds the image path (relative to the CSV file's folder, or absolute) and one
the caption. The file is parsed with Python's :mod:`csv` module, so quoted fields may contain the separator,
quotes and newlines.

Problems with the file itself (missing, empty, wrong columns) raise at construction, before a run starts.
Problems with single samples (a missing or corrupt image, an empty caption) make ``__getitem__`` return
``None``; :class:`euclip.data.batch.Collate` drops those and counts them in ``Batch.skipped``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CsvDataset"]

logger = logging.getLogger(__name__)

# Unreadable images are logged individually up to this many per process, then only at powers of ten, so a
# dataset with thousands of dead links does not drown the training log.
_MAX_LOGGED = 5
_SEPARATORS = {"\t": "'\\t'", ",": "','", ";": "';'", "|": "'|'"}


class CsvDataset(Dataset):
    """Map-style dataset of ``(image_tensor, caption)`` pairs read from a delimited text file.

    Args:
        path: the CSV/TSV file.
        transform: maps a PIL image to a tensor, e.g. :func:`euclip.data.transforms.image_transform`.
        img_key: name of the column with image paths.
        caption_key: name of the column with captions.
        sep: field separator (OpenCLIP's ``--csv-separator``; tab by default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, has no data rows, is not UTF-8 (the first bad line named), or its header
            lacks ``img_key`` / ``caption_key``.
    """

    def __init__(self, path: str | os.PathLike, transform: Callable[[Image.Image], torch.Tensor],
                 img_key: str = "filepath", caption_key: str = "caption", sep: str = "\t"):
        self.path = Path(path)
        self.transform = transform
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file not found: {self.path}")
        try:
            self._read(img_key, caption_key, sep)
        except UnicodeDecodeError as exn:
            raise ValueError(_not_utf8(self.path, exn)) from None
        if not self.images:
            raise ValueError(f"CSV file {self.path} has a header but no data rows")
        self.num_unreadable = 0  # per process: each DataLoader worker counts its own share

    def _read(self, img_key: str, caption_key: str, sep: str) -> None:
        root = self.path.resolve().parent
        # utf-8-sig drops the byte-order mark spreadsheet programs write; otherwise the first column name
        # would silently start with U+FEFF and never match --csv-img-key.
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"CSV file {self.path} is empty (no header row)")
            header = [name.strip() for name in header]
            _check_header(self.path, header, (img_key, caption_key), sep)
            img_col, cap_col = header.index(img_key), header.index(caption_key)
            self.images: list[str | None] = []
            self.captions: list[str] = []
            for row in reader:
                if not row:  # blank line, e.g. a trailing newline
                    continue
                if len(row) <= max(img_col, cap_col):
                    # A short row is one bad sample, not a bad file: keep its slot and skip it at load time.
                    self.images.append(None)
                    self.captions.append("")
                    continue
                image = row[img_col].strip()
                self.images.append(str(root / image) if image else None)  # absolute paths survive the join
                self.captions.append(row[cap_col])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str] | None:
        """Load, decode and transform one pair; ``None`` if the image is unreadable or the caption empty."""
        caption, image_path = self.captions[index], self.images[index]
        if image_path is None:
            self._report(index, "row has no image path (or too few fields)")
            return None
        if not caption.strip():
            self._report(index, f"empty caption for {image_path}")
            return None
        try:
            with Image.open(image_path) as image:
                # The transform's first step converts mode, which forces the full decode inside this try, so
                # truncated files fail here rather than somewhere in a DataLoader worker.
                return self.transform(image), caption
        except Exception as exn:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
            self._report(index, f"cannot read image {image_path}: {type(exn).__name__}: {exn}")
            return None

    def _report(self, index: int, message: str) -> None:
        self.num_unreadable += 1
        n = self.num_unreadable
        if n <= _MAX_LOGGED:
            logger.warning("%s row %d skipped: %s", self.path, index + 2, message)  # +2: 1-based, after header
            if n == _MAX_LOGGED:
                logger.warning("%s: further skipped rows are only counted (Batch.skipped) and logged at powers "
                               "of ten", self.path)
        elif str(n).rstrip("0") == "1":  # 10, 100, 1000, ...
            logger.warning("%s: %d rows skipped so far in this process (last: row %d: %s)", self.path, n,
                           index + 2, message)


def _not_utf8(path: Path, exn: UnicodeDecodeError) -> str:
    """The message for a file that does not decode as UTF-8, naming its first bad line (the decoder's position
    is one within a read-ahead chunk, so the line is found again in the raw bytes)."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as bad:
            return (f"CSV file {path}, line {number}: not UTF-8 ({bad.reason}: byte {line[bad.start:bad.start + 1]!r} "
                    f"at column {bad.start + 1}); save the file as UTF-8 (it may be Latin-1 or Windows-1252)")
    return f"CSV file {path}: not UTF-8 ({exn.reason}); save the file as UTF-8"


def _check_header(path: Path, header: list[str], required: tuple[str, ...], sep: str) -> None:
    missing = [key for key in dict.fromkeys(required) if key not in header]
    if not missing:
        return
    message = (f"CSV file {path} has no column(s) {', '.join(map(repr, missing))}; "
               f"its header has {header} (separator {_SEPARATORS.get(sep, repr(sep))})")
    # A header parsed with the wrong separator is a single field (or a few) that still contains the real one.
    joined = sep.join(header)
    for other, shown in _SEPARATORS.items():
        if other != sep and other in joined and all(key in [h.strip() for h in joined.split(other)]
                                                    for key in required):
            message += f". It looks {shown}-separated: pass --csv-separator {shown}"
            break
    else:
        if len(header) == 1:
            message += ". Only one column was found: is --csv-separator right?"
    raise ValueError(message)
