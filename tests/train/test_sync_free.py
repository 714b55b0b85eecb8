"""No host synchronisation in a training step: statistics stay on the device until a logging step reads them.

On a GPU every tensor → Python conversion (``.item()``, ``float()``, ``bool()``, ``.tolist()``) waits for the
device to finish its queue. Here (CPU) the conversions themselves are counted, per optimizer step, through the
real CLI; on CUDA ``torch.cuda.set_sync_debug_mode("error")`` makes any synchronisation in a step an error.
"""

from __future__ import annotations

import pytest
import torch

import euclip.train.loop as loop
from euclip.cli import main

CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


@pytest.fixture
def counted(monkeypatch):
    """Per optimizer step (from one train_step call to the next), the tensor → Python conversions made."""
    per_step: list[list[str]] = []
    for name in CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            if per_step:
                per_step[-1].append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    original_step = loop.train_step

    def step(*args, **kwargs):
        per_step.append([])
        return original_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    return per_step


@pytest.mark.parametrize("preset", ["clip", "euclip", "meru"])
def test_only_logging_steps_read_the_device(tmp_path, th, counted, preset):
    args = th.base_args(preset=preset, steps=8, batch_size=8, log_every_steps=4, save_every_steps=100,
                        output=tmp_path / "run")
    assert main(["train", "--no-eval", *args]) == 0
    assert len(counted) == 8
    logging_steps = {4, 8}
    for step, conversions in enumerate(counted, start=1):
        if step in logging_steps:
            assert conversions, f"step {step} logs, so it reads its statistics"
        else:
            assert conversions == [], f"step {step} synchronised: {conversions}"
    assert [m["step"] for m in th.metrics(tmp_path / "run")] == [4, 8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: sync debug mode exists only there")
def test_no_cuda_synchronisation_in_a_step(tmp_path, th, monkeypatch):
    original_step = loop.train_step

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original_step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(loop, "train_step", strict)
    args = th.base_args(preset="meru", steps=4, batch_size=8, log_every_steps=4, device="cuda", deterministic=False,
                        output=tmp_path / "run")
    assert main(["train", "--no-eval", *args]) == 0
