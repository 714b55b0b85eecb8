"""Preemption as schedulers do it: a signal to the whole process group (SLURM, ``timeout``), workers included.

The trainer must checkpoint the last finished step, exit with the signal's conventional code, and resume exactly.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from euclip.cli import main
from euclip.train import checkpoint as ckpt

STEPS = 24


@pytest.fixture(scope="module")
def worker_reference(tmp_path_factory, th):
    """An uninterrupted run with DataLoader workers (the preempted runs' twin)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    args = th.base_args(preset="euclip", batch_size=8, steps=STEPS, save_every_steps=100, lr=0.05, eps=1.0, wd=0.0,
                        workers=2, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    return run, args


def _preempt(th, args: list[str], run, sig: signal.Signals, after_steps: int = 3):
    """Start a slowed-down trainer in its own process group, send ``sig`` to the group after ``after_steps``."""
    proc = th.start_train(["--no-eval", *args], slow_step=0.25)
    th.wait_for_steps(proc, run, after_steps)
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


@pytest.mark.slow
def test_sigterm_to_the_process_group_checkpoints_and_resumes_exactly(tmp_path, th, worker_reference):
    reference, args = worker_reference
    run = tmp_path / "run"
    args = [*args, "--output", str(run)]
    code, stderr = _preempt(th, args, run, signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert "is killed by signal" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    state = ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert 3 <= state["step"] < STEPS
    assert f"SIGTERM: checkpoint written at step {state['step']}; exiting" in stderr
    assert [m["step"] for m in th.metrics(run)] == list(range(1, state["step"] + 1))
    assert main(["train", "--no-eval", *args, "--resume", "latest"]) == 0
    for name, value in th.model_state(run).items():
        assert torch.equal(value, th.model_state(reference)[name]), name
    assert th.losses(run) == th.losses(reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_other_scheduler_signals_to_the_group_checkpoint_too(tmp_path, th, sig, code):
    # Ctrl-C reaches the terminal's whole foreground process group; SLURM's --signal=USR1@T warns every process
    # of a job step before its time limit.
    run = tmp_path / "run"
    args = th.base_args(preset="euclip", batch_size=8, steps=1000, save_every_steps=1000, workers=2, output=run)
    returncode, stderr = _preempt(th, args, run, sig, after_steps=2)
    assert returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    state = ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert f"{sig.name}: checkpoint written at step {state['step']}; exiting" in stderr
    assert [m["step"] for m in th.metrics(run)] == list(range(1, state["step"] + 1))
