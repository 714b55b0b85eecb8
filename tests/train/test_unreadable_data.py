"""Training on data that cannot be read at all stops with an error naming the data, instead of spinning forever or
"succeeding" with an untrained model; data that is only partly bad is still skipped and counted."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from euclip.cli import main
from euclip.data.wds import write_shards

pytestmark = pytest.mark.slow


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _garbage_shards(root: Path, n: int = 4) -> str:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"{i:03d}.tar").write_bytes(random.Random(i).randbytes(8192))  # not tar files
    return f"{root}/{{000..{n - 1:03d}}}.tar"


def _assert_no_result(run: Path) -> None:
    """Nothing that passes for a finished run: no final checkpoint, no summary."""
    assert not (run / "summary.json").exists()
    assert not (run / "checkpoints" / "latest.pt").exists()


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--workers", "2", "--dataset-resampled"]],
                         ids=["one-pass-main-process", "resampled-workers"])
def test_all_shards_unreadable_stops_the_process(tmp_path, th, flags):
    # Used to log "no readable samples" forever at full CPU (and ignore SIGTERM): a real process, bounded in time,
    # so that a regression fails instead of hanging the suite.
    spec, run = _garbage_shards(tmp_path / "allgarb"), tmp_path / "run"
    args = [*th.base_args(dataset_type="webdataset", train_data=spec, train_num_samples=40, batch_size=8,
                          output=run, workers=None), *flags]
    proc = subprocess.Popen([sys.executable, "-m", "euclip.cli", "train", "--no-eval", *args], cwd=th.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **th.same_threads()})
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the DataLoader workers too
        _, err = proc.communicate()
        pytest.fail(f"training on unreadable shards did not stop within 120 s; log tail:\n{err[-2000:]}")
    assert proc.returncode == 2, err[-3000:]
    # (Workers may still log a line after it.)
    (line,) = [line for line in err.splitlines() if line.startswith("euclip: error:")]
    assert line.startswith("euclip: error: webdataset: ") and "000.tar" in line, line
    assert "shard-level read error" in line and "Traceback" not in err
    assert len(err.splitlines()) < 200  # a few warnings, not a log that grows until the disk is full
    _assert_no_result(run)


def test_shards_without_captions_stop_the_run(tmp_path, th, capsys):
    root = tmp_path / "nocap"
    root.mkdir()
    for shard in range(2):
        with tarfile.open(root / f"{shard}.tar", "w") as tar:
            for i in range(10):
                buffer = io.BytesIO()
                from PIL import Image

                Image.new("RGB", (36, 36), (10 * i, 0, 0)).save(buffer, format="PNG")
                info = tarfile.TarInfo(f"{shard}-{i}.png")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
    run = tmp_path / "run"
    args = th.base_args(dataset_type="webdataset", train_data=f"{root}/{{0..1}}.tar", train_num_samples=20,
                        batch_size=4, output=run)
    code, err = _run(["train", "--no-eval", *args], capsys)
    assert code == 2 and "none of the 20 samples" in err and "0.tar" in err and "1.tar" in err, err[-2000:]
    _assert_no_result(run)


def _zero_byte_csv(root: Path, n: int) -> Path:
    (root / "img").mkdir(parents=True)
    rows = ["filepath\tcaption"]
    for i in range(n):
        (root / "img" / f"{i}.jpg").write_bytes(b"")
        rows.append(f"img/{i}.jpg\ta picture {i}")
    (root / "zero.tsv").write_text("\n".join(rows) + "\n")
    return root / "zero.tsv"


@pytest.mark.parametrize("length, read", [({"steps": 2}, "all 8 samples read by the 2 step(s) of this run"),
                                          ({"epochs": 3}, "all 12 samples read in a row")],
                         ids=["steps-within-an-epoch", "epochs"])
def test_a_csv_of_zero_byte_images_stops_the_run(tmp_path, th, capsys, caplog, length, read):
    # 12 rows, batches of 4: 3 steps an epoch. A run shorter than an epoch stops on its last step (every step was
    # empty), before its final checkpoint; a longer one stops after the first epoch of unreadable rows.
    csv, run = _zero_byte_csv(tmp_path / "data", 12), tmp_path / "run"
    args = th.base_args(dataset_type="csv", train_data=csv, batch_size=4, output=run, save_every_steps=100, **length)
    code, err = _run(["train", "--no-eval", *args], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"euclip: error: no readable sample in {csv}: {read} were unreadable"), last
    assert re.search(rf"{re.escape(str(csv))} row \d+ skipped: cannot read image", caplog.text)  # the first named
    _assert_no_result(run)


def test_a_few_bad_rows_are_still_skipped_and_counted(tmp_path, th):
    csv, run = th.write_csv_dataset(tmp_path / "data", 8, bad={1, 6}), tmp_path / "run"
    args = th.base_args(dataset_type="csv", train_data=csv, batch_size=4, steps=2, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_samples"] == 2 and summary["samples_seen"] == 6


def test_a_truncated_shard_is_counted_in_the_summary(tmp_path, th):
    root = tmp_path / "shards"
    from euclip.data.synthetic import SyntheticShapes

    data = SyntheticShapes("train", size=16, seed=0, image_size=36)
    written = write_shards(((data.render(i), data.caption(i)) for i in range(16)), str(root / "%03d.tar"), maxcount=8)
    assert len(written) == 2
    with tarfile.open(written[1]) as tar:
        cut = tar.getmembers()[8].offset  # at a header: tarfile reads on as if the archive ended there
    Path(written[1]).write_bytes(Path(written[1]).read_bytes()[:cut])
    run = tmp_path / "run"
    args = th.base_args(dataset_type="webdataset", train_data=f"{root}/{{000..001}}.tar", train_num_samples=12,
                        batch_size=4, epochs=1, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_samples"] >= 1  # the cut: the 4 samples after it are lost, counted as one error


def test_a_batch_larger_than_the_webdataset_epoch_is_refused_like_csv(tmp_path, th, capsys):
    root = tmp_path / "shards"
    write_shards(((bytes(10), f"caption {i}") for i in range(4)), str(root / "%03d.tar"), maxcount=4)
    run = tmp_path / "run"
    args = th.base_args(dataset_type="webdataset", train_data=f"{root}/000.tar", train_num_samples=40,
                        batch_size=64, steps=1, output=run)
    code, err = _run(["train", "--no-eval", *args], capsys)
    assert code == 2 and ("the global batch (64 per process × 1 process(es) = 64 samples) is larger than the epoch "
                          "(--train-num-samples 40); lower --batch-size or --accum-freq") in err, err
    assert not run.exists()
