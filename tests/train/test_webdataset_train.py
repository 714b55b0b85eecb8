"""Training on real webdataset shards (JPEG and PNG bytes in tar files), with a corrupt and a caption-less sample."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from euclip.cli import main
from euclip.data.synthetic import SyntheticShapes
from euclip.data.transforms import image_transform
from euclip.data.wds import make_wds_loader, write_shards
from euclip.train import checkpoint as ckpt
from euclip.train import loop

pytestmark = pytest.mark.slow


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Three shards, 32 raw samples: 20 JPEG + 10 PNG pairs, one corrupt JPEG and one PNG without a caption."""
    root = tmp_path_factory.mktemp("shards")
    data = SyntheticShapes("train", size=30, seed=0, image_size=40)
    pairs = [(data.render(i), data.caption(i)) for i in range(30)]
    assert len(write_shards(pairs[:20], str(root / "%05d.tar"), maxcount=10, image_format="jpg")) == 2
    (png,) = write_shards(pairs[20:], str(root / "png-%05d.tar"), maxcount=10, image_format="png")
    Path(png).rename(root / "00002.tar")
    with tarfile.open(root / "00002.tar", "a") as tar:
        _add(tar, "corrupt.jpg", b"\xff\xd8\xff\xe0 this is not a JPEG")
        _add(tar, "corrupt.txt", b"a corrupt image")
        buffer = io.BytesIO()
        data.render(0).save(buffer, format="PNG")
        _add(tar, "uncaptioned.png", buffer.getvalue())
    return f"{root}/{{00000..00002}}.tar"


def _skipped_in_epoch(spec: str, num_samples: int, batch_size: int) -> int:
    """What the data pipeline itself reports for epoch 0, read outside the trainer (the ground truth)."""
    loader = make_wds_loader(spec, image_transform(32, train=True), lambda c: torch.zeros(len(c), 1, dtype=torch.long),
                             batch_size, num_workers=0, num_samples=num_samples, seed=0)
    return sum(batch.skipped for batch in loader)


def test_training_counts_the_bad_samples_the_pipeline_skips(tmp_path, th, shards):
    run = tmp_path / "run"
    args = th.base_args(dataset_type="webdataset", train_data=shards, train_num_samples=32, batch_size=16,
                        epochs=1, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    expected = _skipped_in_epoch(shards, 32, 16)
    assert summary["steps"] == 2 and expected > 0 and summary["skipped_samples"] == expected
    assert summary["samples_seen"] == 32 - expected and th.metrics(run)[-1]["skipped_samples"] == expected


def test_an_epoch_of_the_shard_total_is_one_pass(shards):
    assert _skipped_in_epoch(shards, 32, 16) == 2  # the corrupt image and the caption-less sample, once each


class Interrupted(Exception):
    pass


def test_interrupted_then_resumed_is_exact(tmp_path, th, shards, monkeypatch):
    # Batches of 8: 4 steps per epoch; 5 steps cross into the second epoch (a new shard and sample order).
    # The interruption is an exception in step 3 (test_resume kills real processes; here the point is that
    # the webdataset stream resumes at the right sample, mid-epoch).
    args = th.base_args(dataset_type="webdataset", train_data=shards, train_num_samples=32, batch_size=8, steps=5,
                        save_every_steps=2, lr=0.05, eps=1.0, wd=0.0)
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", "--no-eval", *args, "--output", str(reference)]) == 0
    calls, original = [0], loop.train_step

    def step_or_die(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            raise Interrupted
        return original(*a, **k)

    monkeypatch.setattr(loop, "train_step", step_or_die)
    with pytest.raises(Interrupted):
        main(["train", "--no-eval", *args, "--output", str(run)])
    monkeypatch.undo()
    assert ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert main(["train", "--no-eval", *args, "--output", str(run), "--resume", "latest"]) == 0
    for name, value in th.model_state(run).items():
        assert torch.equal(value, th.model_state(reference)[name]), name
    assert th.losses(run) == th.losses(reference)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, reference)]
    assert summaries[0]["skipped_samples"] == summaries[1]["skipped_samples"] > 0
