"""Exact resume after SIGKILL (mid-step and mid-checkpoint-write), SIGTERM checkpoints, atomic checkpoint writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from euclip.cli import main
from euclip.train import checkpoint as ckpt

STEPS = 6


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def test_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    good = {"step": 1, "weights": torch.arange(1000.0)}
    ckpt.atomic_save(good, path)
    before = path.read_bytes()
    # A real serialisation failure, after the tensors before it were already handed to the writer...
    with pytest.raises(Exception, match="refuses to be pickled"):
        ckpt.atomic_save({"step": 2, "weights": torch.zeros(10_000), "bad": Unpicklable()}, path)
    assert path.read_bytes() == before
    # ...and a write that fails after some bytes reached the file (a full disk).
    def partial_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", partial_then_fail)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and torch.equal(ckpt.load_checkpoint(path)["weights"], good["weights"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temporary file left behind


def test_latest_is_the_newest_step_and_old_steps_are_pruned(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "step_00000002.pt", "step_00000003.pt"]
    assert ckpt.load_checkpoint(tmp_path / "latest.pt")["step"] == 3
    # A killed write leaves its temporary file; the trainer removes it at start-up.
    (tmp_path / ".step_00000004.pt.tmp-12345").write_bytes(b"torn")
    assert [p.name for p in ckpt.remove_stale_temporaries(tmp_path)] == [".step_00000004.pt.tmp-12345"]


@pytest.fixture(scope="module")
def synthetic_reference(tmp_path_factory, th):
    """An uninterrupted run: meru (curvature, α, entailment), SGD-like so any difference shows in the weights."""
    run = tmp_path_factory.mktemp("reference") / "run"
    args = th.base_args(preset="meru", batch_size=8, steps=STEPS, save_every_steps=100, lr=0.05, eps=1.0, wd=0.0,
                        output=run)
    assert main(["train", "--no-eval", *args]) == 0
    return run, args


@pytest.mark.slow
def test_sigkill_mid_step_then_resume_is_exact(tmp_path, th, synthetic_reference):
    reference, args = synthetic_reference
    run = tmp_path / "run"
    args = [*args, "--output", str(run), "--save-every-steps", "2"]  # the later --output wins
    th.run_killed(args, "step:4")  # dies inside step 4: steps 1-3 logged, last checkpoint at step 2
    assert [m["step"] for m in th.metrics(run)] == [1, 2, 3]
    assert ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert main(["train", "--no-eval", *args, "--resume", "latest"]) == 0
    # Bitwise: one process on a CPU in deterministic mode.
    for name, value in th.model_state(run).items():
        assert torch.equal(value, th.model_state(reference)[name]), name
    assert [m["step"] for m in th.metrics(run)] == list(range(1, STEPS + 1))  # step 3 logged once
    assert th.losses(run) == th.losses(reference)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, th):
    run = tmp_path / "run"
    # Long enough never to finish first; checkpoints only every 1000 steps: SIGTERM's is the only one.
    args = th.base_args(preset="euclip", batch_size=8, steps=1000, save_every_steps=1000, output=run)
    env = {**os.environ, **th.same_threads()}
    proc = subprocess.Popen([sys.executable, "-m", "euclip.cli", "train", "--no-eval", *args], env=env, cwd=th.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    state = ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert f"SIGTERM: checkpoint written at step {state['step']}; exiting" in stderr
    # The checkpoint is of the last finished step: every logged step, nothing beyond.
    assert state["step"] >= 2 and [m["step"] for m in th.metrics(run)] == list(range(1, state["step"] + 1))
    assert state["counters"]["last_finite_loss"] == th.losses(run)[-1]


@pytest.mark.slow
def test_csv_sigkill_during_checkpoint_write_then_resume_is_exact(tmp_path, th):
    # 20 rows, batch 8: 2 steps per epoch, so the 4 steps cross 2 epochs of freshly seeded random crops.
    csv = th.write_csv_dataset(tmp_path / "data", 20)
    args = th.base_args(dataset_type="csv", train_data=csv, batch_size=8, steps=4, save_every_steps=2, lr=0.05,
                        eps=1.0, wd=0.0)
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", "--no-eval", *args, "--output", str(reference)]) == 0
    # Dies after writing part of the second checkpoint (step 4, the last): the step-2 checkpoint must survive.
    th.run_killed([*args, "--output", str(run)], "save:2")
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files[1:] == ["latest.pt", "step_00000002.pt"] and files[0].startswith(".step_00000004.pt.tmp-"), files
    assert ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert main(["train", "--no-eval", *args, "--output", str(run), "--resume", "latest"]) == 0
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]  # the torn file was removed
    for name, value in th.model_state(run).items():
        assert torch.equal(value, th.model_state(reference)[name]), name
    assert th.losses(run) == th.losses(reference)
