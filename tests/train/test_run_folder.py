"""A run folder is a run's own: a new run into a used folder is refused (unless --overwrite), and a folder in use
is locked against a second trainer."""

from __future__ import annotations

import json
import os
import signal

import pytest

from euclip.cli import main
from euclip.train import checkpoint as ckpt


@pytest.mark.slow
def test_a_new_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path, th, capsys):
    run = tmp_path / "run"
    args = ["--no-eval", *th.base_args(preset="euclip", batch_size=8, steps=3, save_every_steps=1, output=run)]
    assert main(["train", *args]) == 0
    before = {p.name: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    code, err = th.run_cli(["train", *args, "--seed", "1"], capsys)
    assert code == 2 and f"{run} already holds a run" in err and "--resume latest" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before  # untouched
    # --overwrite: the old run's files go first, so retention and metrics are the new run's alone.
    assert main(["train", *args, "--seed", "1", "--steps", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt", "step_00000001.pt",
                                                                        "step_00000002.pt"]
    assert [m["step"] for m in th.metrics(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    code, err = th.run_cli(["train", *args, "--overwrite", "--resume", "latest"], capsys)
    assert code == 2 and "--overwrite and --resume" in err


@pytest.mark.slow
def test_a_second_trainer_on_a_folder_in_use_fails_at_once(tmp_path, th):
    run = tmp_path / "run"
    args = ["--no-eval", *th.base_args(preset="euclip", batch_size=8, steps=1000, save_every_steps=1, output=run)]
    first = th.start_train(args, slow_step=0.1)
    try:
        th.wait_for_steps(first, run, 2)  # a checkpoint exists: --resume latest gets as far as the lock
        for extra in (["--resume", "latest"], ["--overwrite"]):  # neither may touch a folder in use
            second = th.start_train([*args, *extra])
            _, err = second.communicate(timeout=300)
            assert second.returncode == 2, err[-3000:]
            assert f"{run} is in use by another trainer (pid {first.pid}" in err, err[-3000:]
        assert first.poll() is None  # the first run goes on
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err[-3000:]
    # The lock died with its holder: the run resumes.
    step = ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert main(["train", *args, "--resume", "latest", "--steps", str(step + 1)]) == 0
    assert [m["step"] for m in th.metrics(run)] == list(range(1, step + 2))
