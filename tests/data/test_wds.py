"""Webdataset loading on real tar shards: exact epochs, counted bad samples, rank splits, resampling, resume."""

from __future__ import annotations

import io
import itertools
import json
import random
import tarfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from PIL import Image

from euclip.data.batch import Batch, NoReadableDataError
from euclip.data.transforms import image_transform
from euclip.data import wds
from euclip.data.wds import make_wds_loader, write_shards


@pytest.fixture(autouse=True)
def _log_every_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-process logs of bad samples and shards stop naming them after a few: start each test afresh."""
    monkeypatch.setattr(wds._shard_error_log, "count", 0)
    monkeypatch.setattr(wds._bad_sample_log, "count", 0)


def tokenize(captions: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: the tests check the data path, not BPE."""
    return torch.tensor([[len(c)] for c in captions], dtype=torch.long)


def image(i: int) -> Image.Image:
    """Random pixels (seeded by i): on a flat image every crop looks the same and augmentation goes unchecked."""
    width, height = 24 + i % 5, 20
    return Image.frombytes("RGB", (width, height), random.Random(i).randbytes(width * height * 3))


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_bytes(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="PNG")
    return buffer.getvalue()


class Shards:
    """Three shards: two from write_shards (6 + 6 samples), one by hand with 3 good and 2 bad samples."""

    def __init__(self, root: Path):
        self.root = root
        written = write_shards(((image(i), f"written {i}") for i in range(12)), str(root / "w-%03d.tar"), maxcount=6)
        assert [Path(p).name for p in written] == ["w-000.tar", "w-001.tar"]
        self.by_shard = {"w-000.tar": {f"written {i}" for i in range(6)},
                         "w-001.tar": {f"written {i}" for i in range(6, 12)}}
        with tarfile.open(root / "hand.tar", "w") as tar:
            add(tar, "h0.png", png_bytes(100))
            add(tar, "h0.txt", b"hand 0")
            add(tar, "h1.jpg", b"\xff\xd8\xff not really a jpeg")  # corrupt image: skipped, counted
            add(tar, "h1.txt", b"hand corrupt")
            add(tar, "h2.png", png_bytes(102))  # no caption: skipped, counted
            add(tar, "h3.webp", _webp(103))
            add(tar, "h3.txt", b"hand 3")
            add(tar, "h4.jpg", _jpeg(104))
            add(tar, "h4.json", json.dumps({"caption": "hand 4", "width": 28}).encode())
        self.by_shard["hand.tar"] = {"hand 0", "hand 3", "hand 4"}
        self.spec = f"{root}/w-{{000..001}}.tar::{root}/hand.tar"
        self.good = set().union(*self.by_shard.values())


def _jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="JPEG")
    return buffer.getvalue()


def _webp(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="WEBP")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    return Shards(tmp_path_factory.mktemp("shards"))


def run_epoch(loader: Iterable[Batch]) -> tuple[list[str], int, list[Batch]]:
    batches = list(loader)
    return [c for b in batches for c in b.captions], sum(b.skipped for b in batches), batches


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_epoch_yields_every_good_sample_once_and_counts_bad_ones(shards: Shards, num_workers: int) -> None:
    loader = make_wds_loader(shards.spec, image_transform(16, train=True), tokenize, batch_size=4,
                             num_workers=num_workers, shuffle_buffer=8)
    for _ in range(2):  # a second epoch through the same (persistent) workers is complete too
        captions, skipped, batches = run_epoch(loader)
        assert Counter(captions) == Counter(shards.good)
        assert skipped == 2
        assert all(b.images.shape[1:] == (3, 16, 16) for b in batches if len(b))


def test_ranks_read_disjoint_shards(shards: Shards) -> None:
    seen = []
    for rank in (0, 1):
        loader = make_wds_loader(shards.spec, image_transform(8, train=False), tokenize, batch_size=3, rank=rank,
                                 world_size=2, seed=5, epoch=3)
        captions, skipped, _ = run_epoch(loader)
        mine = set(captions)
        assert len(captions) == len(mine)
        # Each rank reads whole shards: its captions are a union of some shards' captions.
        assert mine == set().union(*(c for c in shards.by_shard.values() if c & mine))
        seen.append((mine, skipped))
    (first, skipped0), (second, skipped1) = seen
    assert first and second and not first & second
    assert first | second == shards.good and skipped0 + skipped1 == 2


def test_resampled_stream_is_endless(shards: Shards) -> None:
    loader = make_wds_loader(shards.spec, image_transform(8, train=True), tokenize, batch_size=5, resampled=True,
                             shuffle_buffer=4)
    with pytest.raises(TypeError):
        len(loader)
    batches = list(itertools.islice(loader, 20))  # 100 raw samples from a 17-sample dataset
    captions = Counter(c for b in batches for c in b.captions)
    assert len(batches) == 20 and sum(captions.values()) + sum(b.skipped for b in batches) == 100
    assert set(captions) <= shards.good and max(captions.values()) > 1


def test_num_samples_fixes_the_epoch_length(shards: Shards) -> None:
    loader = make_wds_loader(shards.spec, image_transform(8, train=True), tokenize, batch_size=4, num_workers=2,
                             num_samples=30)
    assert len(loader) == 8 and loader.num_samples == 32  # ceil(ceil(30 / 4) / 2) = 4 batches per worker
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 8 and all(len(b) + b.skipped == 4 for b in batches)


def test_passes_of_a_sized_epoch_are_shuffled_separately(shards: Shards) -> None:
    # 17 raw samples per pass, num_samples = 3 passes: every pass yields each sample once, in its own order. (A
    # shuffle buffer spanning passes would pull samples of the next pass forward: repeats and misses in a pass.)
    loader = make_wds_loader(shards.spec, image_transform(8, train=True), tokenize, batch_size=1,
                             num_samples=3 * 17, shuffle_buffer=100)
    per_pass, skipped = [], []
    batches = list(loader)
    for start in range(0, 3 * 17, 17):
        chunk = batches[start:start + 17]
        per_pass.append([c for b in chunk for c in b.captions])
        skipped.append(sum(b.skipped for b in chunk))
    assert all(Counter(p) == Counter(shards.good) for p in per_pass) and skipped == [2, 2, 2]
    assert len({tuple(p) for p in per_pass}) == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epochs_are_reproducible_and_resume_exactly(shards: Shards, num_workers: int) -> None:
    def make():
        return make_wds_loader(shards.spec, image_transform(12, train=True), tokenize, batch_size=3,
                               num_workers=num_workers, num_samples=24, seed=7, shuffle_buffer=6)

    reference = make()
    epoch0, epoch1 = list(reference), list(reference)  # the second iteration moves on to epoch 1 by itself
    assert [b.captions for b in epoch0] != [b.captions for b in epoch1]
    resumed = make()
    for start in (3, 4):  # resuming on either worker's turn
        resumed.set_epoch(1, start_batch=start)
        tail = list(resumed)
        assert [b.captions for b in tail] == [b.captions for b in epoch1[start:]]
        # Same augmentation too: the crops are seeded per sample, not by how much the RNG was used before.
        assert all(torch.equal(a.images, b.images) for a, b in zip(tail, epoch1[start:]))
    assert resumed.epoch == 1 and len(list(resumed)) == 8  # start_batch held for one iteration: epoch 2 is whole


def test_samples_without_image_or_caption_text_are_counted(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        add(tar, "a.txt", b"a caption without an image")
        add(tar, "b.png", png_bytes(1))
        add(tar, "b.json", json.dumps({"caption": ""}).encode())  # empty caption
        add(tar, "c.png", png_bytes(2))
        add(tar, "c.json", json.dumps({"text": "wrong field"}).encode())
        add(tar, "d.jpg", _jpeg(3))
        add(tar, "d.txt", "ünïcode ✓".encode())
    loader = make_wds_loader(str(tmp_path / "odd.tar"), image_transform(8, train=False), tokenize, batch_size=8)
    captions, skipped, _ = run_epoch(loader)
    assert captions == ["ünïcode ✓"] and skipped == 3


def garbage_shards(root: Path, n: int) -> str:
    """``n`` files named like shards that are not tar files; returns their brace spec."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{i:03d}.tar").write_bytes(random.Random(i).randbytes(4096))
    return f"{root}/{{000..{n - 1:03d}}}.tar"


def truncated_shard(path: Path, cut: str) -> None:
    """A shard of 8 good samples (16 members) cut short: in a member's data, at a header, or inside a header."""
    written = write_shards(((image(200 + i), f"cut {i}") for i in range(8)), str(path.parent / "tmp-%03d.tar"),
                           maxcount=8)
    data = Path(written[0]).read_bytes()
    Path(written[0]).unlink()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        header = tar.getmembers()[8].offset  # the 5th sample's first file
    at = {"data": header + 512 + 100, "header": header, "in-header": header + 100}[cut]
    path.write_bytes(data[:at])


def test_unreadable_shards_are_logged_counted_not_fatal(shards: Shards, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "garbage.tar").write_bytes(random.Random(0).randbytes(4096))
    garbage = str(tmp_path / "garbage.tar")
    loader = make_wds_loader(f"{shards.spec}::{garbage}", image_transform(8, train=False), tokenize, batch_size=4)
    captions, skipped, _ = run_epoch(loader)
    # The unreadable shard counts as one skipped sample (at least one was lost; how many is unknown).
    assert Counter(captions) == Counter(shards.good) and skipped == 2 + 1 and "garbage.tar" in caplog.text


@pytest.mark.parametrize("cut", ["data", "header", "in-header"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_truncated_shard_is_counted(shards: Shards, tmp_path: Path, num_workers: int, cut: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    # Cut at or inside a header, tarfile ends the archive silently: its later samples used to vanish uncounted.
    truncated_shard(tmp_path / "cut.tar", cut)
    spec = f"{shards.spec}::{tmp_path}/cut.tar"
    loader = make_wds_loader(spec, image_transform(8, train=False), tokenize, batch_size=4, num_workers=num_workers)
    captions, skipped, _ = run_epoch(loader)
    assert set(captions) == shards.good | {f"cut {i}" for i in range(4)}
    assert skipped == 2 + 1  # the hand shard's two bad samples, and the cut as one
    if num_workers == 0:  # (workers log in their own processes)
        assert "cut.tar" in caplog.text


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("resampled", [False, True])
def test_all_shards_unreadable_is_an_error_naming_them(tmp_path: Path, num_workers: int, resampled: bool) -> None:
    # A sized epoch (or a resampled stream) over nothing readable used to reread the shards forever.
    spec = garbage_shards(tmp_path / "garbage", 4)
    loader = make_wds_loader(spec, image_transform(8, train=False), tokenize, batch_size=4, num_workers=num_workers,
                             num_samples=40, resampled=resampled)
    with pytest.raises(NoReadableDataError, match="no sample") as info:
        list(loader)
    message = str(info.value)
    assert "000.tar" in message and "shard-level read error" in message and "Traceback" not in message


def test_shards_without_captions_are_an_error_naming_them(tmp_path: Path) -> None:
    for shard in range(2):
        with tarfile.open(tmp_path / f"{shard}.tar", "w") as tar:
            for i in range(5):
                add(tar, f"s{shard}-{i}.png", png_bytes(i))  # an image, but no txt/json
    loader = make_wds_loader(f"{tmp_path}/{{0..1}}.tar", image_transform(8, train=False), tokenize, batch_size=4,
                             num_samples=40)
    with pytest.raises(NoReadableDataError, match="none of the 10 samples") as info:
        list(loader)
    assert "0.tar" in str(info.value) and "1.tar" in str(info.value)


def test_some_unusable_shards_are_not_an_error(shards: Shards, tmp_path: Path) -> None:
    # One bad shard among good ones, read by its own worker pass alongside good shards: skipped and counted.
    spec = f"{shards.spec}::{garbage_shards(tmp_path / 'g', 1)}"
    loader = make_wds_loader(spec, image_transform(8, train=False), tokenize, batch_size=4, num_samples=40)
    batches = list(loader)
    assert len(batches) == 10 and sum(b.skipped for b in batches) > 0


def test_too_few_shards_names_the_flags(shards: Shards) -> None:
    with pytest.raises(ValueError, match=r"--workers.*--dataset-resampled \(resampled=True\)"):
        make_wds_loader(shards.spec, image_transform(8, train=False), tokenize, batch_size=2, num_workers=4,
                        num_samples=8)


def test_missing_shard_is_named(shards: Shards) -> None:
    spec = f"{shards.root}/w-{{000..003}}.tar"
    with pytest.raises(FileNotFoundError, match="w-002.tar") as info:
        make_wds_loader(spec, image_transform(8, train=False), tokenize, batch_size=2)
    assert "w-003.tar" in str(info.value) and "w-000.tar" not in str(info.value)


def test_start_batch_needs_a_sized_epoch(shards: Shards) -> None:
    loader = make_wds_loader(shards.spec, image_transform(8, train=False), tokenize, batch_size=2)
    with pytest.raises(ValueError, match=r"num_samples \(--train-num-samples\) or resampled=True "
                                         r"\(--dataset-resampled\)"):
        loader.set_epoch(0, start_batch=1)
