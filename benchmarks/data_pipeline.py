"""Throughput of the data pipelines: decoded + augmented samples per second, CSV vs webdataset, by worker count.

Generates its own data in a temporary folder (JPEG images, a TSV listing them, webdataset shards holding the
same images), then times whole epochs after one warm-up epoch (which also starts the persistent workers).

    python benchmarks/data_pipeline.py [--images 256] [--workers 0 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from euclip.data.batch import Batch, Collate
from euclip.data.csv import CsvDataset
from euclip.data.transforms import image_transform
from euclip.data.wds import make_wds_loader, write_shards


def synthetic_jpeg(index: int, size: int) -> bytes:
    """A smooth random image (8x8 noise upscaled), so JPEG sizes resemble photos rather than noise."""
    rng = random.Random(index)
    small = Image.frombytes("RGB", (8, 8), rng.randbytes(8 * 8 * 3))
    buffer = io.BytesIO()
    small.resize((size, size), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_data(root: Path, count: int, size: int, shard_size: int) -> tuple[Path, str]:
    """Write ``count`` JPEGs + a TSV listing them, and the same pairs as webdataset shards."""
    images = root / "images"
    images.mkdir()
    pairs = []
    for i in range(count):
        data = synthetic_jpeg(i, size)
        (images / f"{i:05d}.jpg").write_bytes(data)
        pairs.append((data, f"synthetic image number {i}"))
    table = root / "pairs.tsv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "caption"])
        writer.writerows([f"images/{i:05d}.jpg", caption] for i, (_, caption) in enumerate(pairs))
    shards = write_shards(pairs, str(root / "shards" / "%05d.tar"), maxcount=shard_size)
    return table, f"{root}/shards/{{00000..{len(shards) - 1:05d}}}.tar"


def dummy_tokenizer(captions: list[str]) -> torch.Tensor:
    """Constant-cost stand-in, so the numbers measure the image path (open_clip's BPE adds ~20 us/caption)."""
    return torch.zeros(len(captions), 77, dtype=torch.long)


def time_epochs(loader: Iterable[Batch], epochs: int) -> tuple[float, int, int]:
    """Seconds, good samples and skipped samples over ``epochs`` epochs after one warm-up epoch."""
    for _ in loader:  # warm-up: worker start-up, page cache, allocator
        pass
    good = skipped = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            good += len(batch)
            skipped += batch.skipped
    return time.perf_counter() - start, good, skipped


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="number of image-text pairs")
    parser.add_argument("--size", type=int, default=64, help="side of the stored JPEGs")
    parser.add_argument("--image-size", type=int, default=32, help="side after the train transform")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=32, help="samples per webdataset shard")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per configuration")
    parser.add_argument("--open-clip-tokenizer", action="store_true", help="tokenize with ViT-B-32's BPE")
    args = parser.parse_args(argv)

    tokenizer: Callable[[list[str]], torch.Tensor] = dummy_tokenizer
    if args.open_clip_tokenizer:
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-32")
    transform = image_transform(args.image_size, train=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        table, spec = make_data(Path(tmp), args.images, args.size, args.shard_size)
        for workers in args.workers:
            loaders: dict[str, Iterable[Batch]] = {
                "csv": DataLoader(CsvDataset(table, transform), batch_size=args.batch_size, shuffle=True,
                                  num_workers=workers, collate_fn=Collate(tokenizer), persistent_workers=workers > 0),
                "webdataset": make_wds_loader(spec, transform, tokenizer, args.batch_size, num_workers=workers,
                                              shuffle_buffer=args.images),
            }
            for name, loader in loaders.items():
                seconds, good, skipped = time_epochs(loader, args.epochs)
                assert good == args.images * args.epochs and skipped == 0, (name, good, skipped)
                rate = good / seconds
                rows.append((name, workers, rate, rate / max(workers, 1)))
                del loader
    print(f"{args.images} JPEGs {args.size}px -> train transform {args.image_size}px, batch {args.batch_size}, "
          f"{args.epochs} timed epochs, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(f"{'source':<12}{'workers':>8}{'samples/s':>12}{'per worker':>12}")
    for name, workers, rate, per_worker in rows:
        print(f"{name:<12}{workers:>8}{rate:>12.0f}{per_worker:>12.0f}")


if __name__ == "__main__":
    main()
