"""Damaged checkpoints (truncated files, as a full disk or a cut copy leaves them) are named, and the newest intact
one is used (``--resume``) or offered (``euclip eval``)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from euclip.cli import main
from euclip.train import checkpoint as ckpt


def _truncate(path) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # through latest.pt this cuts the file it points to
        f.truncate(size // 2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, th):
    run = tmp_path_factory.mktemp("finished") / "run"
    args = th.base_args(preset="euclip", batch_size=8, steps=4, save_every_steps=2, lr=0.05, eps=1.0, wd=0.0,
                        output=run)
    assert main(["train", "--no-eval", *args]) == 0
    return run, args


def test_latest_is_a_small_relative_pointer_to_the_newest_step(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(folder, step, {"step": step, "w": torch.zeros(1000)}, keep=2)
    latest = folder / "latest.pt"
    # A relative symlink: no second copy of a (GB-sized) checkpoint, and valid in a copied run folder.
    assert latest.is_symlink() and os.readlink(latest) == "step_00000003.pt"
    copy = tmp_path / "copied"
    shutil.copytree(folder, copy, symlinks=True)
    assert ckpt.load_checkpoint(copy / "latest.pt")["step"] == 3


@pytest.mark.slow
def test_resume_latest_falls_back_to_the_newest_intact_step(tmp_path, th, finished, caplog):
    reference, args = finished
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    _truncate(run / "checkpoints" / "latest.pt")
    args = [*args, "--output", str(run)]
    with caplog.at_level(logging.WARNING, logger="euclip"):
        assert main(["train", "--no-eval", *args, "--resume", "latest"]) == 0
    latest, step2 = run / "checkpoints" / "latest.pt", run / "checkpoints" / "step_00000002.pt"
    assert f"cannot read checkpoint {latest}" in caplog.text, caplog.text
    assert f"resuming from {step2} (step 2), the newest intact checkpoint" in caplog.text, caplog.text
    # It resumed from step 2 and retrained steps 3-4 exactly as the first run did.
    for name, value in th.model_state(run).items():
        assert torch.equal(value, th.model_state(reference)[name]), name
    assert [m["step"] for m in th.metrics(run)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_no_intact_checkpoint_names_every_file_tried(tmp_path, th, finished, capsys):
    reference, args = finished
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    for step in (2, 4):
        _truncate(run / "checkpoints" / f"step_0000000{step}.pt")
    code, err = th.run_cli(["train", "--no-eval", *args, "--output", str(run), "--resume", "latest"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "no intact checkpoint" in err and "step_00000002.pt" in err and "step_00000004.pt" in err, err
    # A named file: its name in the error.
    step4 = run / "checkpoints" / "step_00000004.pt"
    code, err = th.run_cli(["train", "--no-eval", *args, "--output", str(tmp_path / "other"), "--resume", str(step4)],
                            capsys)
    assert code == 2 and f"cannot read checkpoint {step4}" in err, err


@pytest.mark.slow
def test_eval_names_the_damaged_file_and_the_intact_one(tmp_path, th, finished, capsys):
    reference, _ = finished
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    _truncate(run / "checkpoints" / "step_00000004.pt")
    code, err = th.run_cli(["eval", "zeroshot", str(run), "--num-samples", "16", "--device", "cpu"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot read checkpoint {run / 'checkpoints' / 'latest.pt'}" in err, err
    intact = run / "checkpoints" / "step_00000002.pt"
    assert f"the newest intact checkpoint is {intact}" in err, err
    # The file itself, named: the error names it.
    code, err = th.run_cli(["eval", "zeroshot", str(run / "checkpoints" / "step_00000004.pt"), "--num-samples", "16",
                      "--device", "cpu"], capsys)
    assert code == 2 and "cannot read checkpoint" in err and "step_00000004.pt" in err, err
    assert main(["eval", "zeroshot", str(intact), "--num-samples", "16", "--device", "cpu"]) == 0
