"""CsvDataset on real files: TSV/CSV parsing, path resolution, bad samples counted, header validation."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from euclip.data.batch import Collate
from euclip.data.csv import CsvDataset
from euclip.data.transforms import image_transform


def tokenize(captions: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: the tests check the data path, not BPE."""
    return torch.tensor([[len(c), sum(map(ord, c)) % 1000] for c in captions], dtype=torch.long)


def write_rows(path: Path, rows: list[list[str]], sep: str = "\t") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=sep).writerows(rows)
    return path


@pytest.fixture()
def tsv(tmp_path: Path) -> tuple[Path, set[str]]:
    """A TSV with 6 good rows (PNG, JPEG, grey, RGBA, absolute path, quoted caption) + a missing + a corrupt image."""
    images = tmp_path / "images"
    images.mkdir()
    good: list[tuple[str, str]] = []
    for i, (mode, ext) in enumerate([("RGB", "png"), ("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("RGB", "jpg")]):
        name = f"img{i}.{ext}"
        Image.new(mode, (40 + i, 30), 100 + 20 * i).save(images / name)
        good.append((f"images/{name}", f"a picture number {i}"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (20, 50), (1, 2, 3)).save(elsewhere / "abs.jpg")
    good.append((str(elsewhere / "abs.jpg"), 'an absolute\tpath, with "quotes"'))  # needs csv quoting
    (images / "corrupt.jpg").write_bytes(os.urandom(2048))
    rows = [["filepath", "caption"], *map(list, good), ["images/missing.jpg", "gone"],
            ["images/corrupt.jpg", "broken"]]
    return write_rows(tmp_path / "pairs.tsv", rows), {caption for _, caption in good}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loads_good_rows_and_counts_bad_ones(tsv: tuple[Path, set[str]], num_workers: int) -> None:
    path, good = tsv
    dataset = CsvDataset(path, image_transform(16, train=True))
    assert len(dataset) == 8
    loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, collate_fn=Collate(tokenize))
    captions, skipped = [], 0
    for batch in loader:
        if len(batch):  # the last batch holds only the two bad rows: Collate makes it empty
            assert batch.images.shape[1:] == (3, 16, 16) and batch.images.dtype == torch.float32
            assert batch.tokens.shape == (len(batch), 2)
        captions += batch.captions
        skipped += batch.skipped
    assert sorted(captions) == sorted(good)
    assert skipped == 2


def test_eval_transform_is_deterministic(tsv: tuple[Path, set[str]]) -> None:
    dataset = CsvDataset(tsv[0], image_transform(24, train=False))
    first, second = dataset[0], dataset[0]
    assert first is not None and second is not None
    assert first[0].shape == (3, 24, 24) and torch.equal(first[0], second[0])


def test_bad_samples_are_logged_a_few_times_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    rows = [["filepath", "caption"], ["ok.png", "fine"], ["ok.png", "  "]] + [[f"no{i}.jpg", "x"] for i in range(30)]
    dataset = CsvDataset(write_rows(tmp_path / "many.tsv", rows), image_transform(8, train=False))
    with caplog.at_level(logging.WARNING, logger="euclip.data.csv"):
        results = [dataset[i] for i in range(len(dataset))]
    assert results[0] is not None and results[0][1] == "fine"
    assert all(r is None for r in results[1:])  # the blank caption and the 30 missing files
    assert dataset.num_unreadable == 31
    assert "no0.jpg" in caplog.text and "no29.jpg" not in caplog.text
    assert len(caplog.records) <= 8  # 5 individual lines, the "only counted" note, the count at 10


def test_comma_separated(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10), 7).save(tmp_path / "a.jpg")
    path = write_rows(tmp_path / "pairs.csv", [["caption", "filepath"], ["one, two", "a.jpg"]], sep=",")
    dataset = CsvDataset(path, image_transform(8, train=False), sep=",")
    sample = dataset[0]
    assert sample is not None and sample[1] == "one, two"


def test_wrong_columns_name_the_file_and_its_columns(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "cols.tsv", [["image", "text", "extra"], ["a.jpg", "b", "c"]])
    with pytest.raises(ValueError) as info:
        CsvDataset(path, image_transform(8, train=False))
    message = str(info.value)
    assert "cols.tsv" in message and "'filepath'" in message and "'caption'" in message
    assert all(name in message for name in ("image", "text", "extra"))
    # Naming the columns that exist fixes it.
    assert len(CsvDataset(path, image_transform(8, train=False), img_key="image", caption_key="text")) == 1


def test_wrong_separator_hints_at_csv_separator(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "commas.csv", [["filepath", "caption"], ["a.jpg", "b"]], sep=",")
    with pytest.raises(ValueError, match="--csv-separator ','") as info:
        CsvDataset(path, image_transform(8, train=False))  # default tab separator
    assert "commas.csv" in str(info.value) and "filepath,caption" in str(info.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.tsv"):
        CsvDataset(tmp_path / "nothere.tsv", image_transform(8, train=False))
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.tsv.*empty"):
        CsvDataset(tmp_path / "empty.tsv", image_transform(8, train=False))
    (tmp_path / "header.tsv").write_text("filepath\tcaption\n")
    with pytest.raises(ValueError, match="no data rows"):
        CsvDataset(tmp_path / "header.tsv", image_transform(8, train=False))


@pytest.mark.parametrize("rows_before", [1, 3000])  # the bad byte in the decoder's first read-ahead chunk, or later
def test_a_non_utf8_file_is_named_with_its_line(tmp_path: Path, rows_before: int) -> None:
    lines = [b"filepath\tcaption"] + [b"a.jpg\ta plain caption %d" % i for i in range(rows_before)]
    lines.append("b.jpg\tun caf\u00e9 cr\u00e8me".encode("latin-1"))  # 0xe9: not UTF-8
    (tmp_path / "latin1.tsv").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError) as info:
        CsvDataset(tmp_path / "latin1.tsv", image_transform(8, train=False))
    message = str(info.value)
    assert f"latin1.tsv, line {rows_before + 2}: not UTF-8" in message and "column 13" in message
    assert "save the file as UTF-8" in message
