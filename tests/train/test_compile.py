"""``--torchcompile``: a compiled tiny model trains, is killed, resumes through the CLI, and matches the eager model."""

from __future__ import annotations

import pytest
import torch

from euclip.cli import main
from euclip.train import checkpoint as ckpt

# torch.compile of even the tiny model takes about a minute of CPU on this machine (seconds with a warm
# inductor cache); the killed run compiles again in its own process.
pytestmark = pytest.mark.slow
STEPS = 4


def test_compiled_model_trains_and_resumes_like_the_eager_one(tmp_path, th):
    # SGD-like AdamW (eps far above the gradients): the weights follow the gradients, so a difference between
    # the compiled and the eager model's gradients would show in them.
    args = th.base_args(preset="meru", batch_size=4, steps=STEPS, save_every_steps=2, lr=0.05, eps=1.0, wd=0.0)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(["train", "--no-eval", *args, "--output", str(eager)]) == 0

    compiled_args = ["--no-eval", *args, "--torchcompile", "--output", str(compiled)]
    th.run_killed(compiled_args, "step:3")  # SIGKILL inside step 3: steps 1-2 logged, checkpoint at step 2
    assert [m["step"] for m in th.metrics(compiled)] == [1, 2]
    assert ckpt.load_checkpoint(compiled / "checkpoints" / "latest.pt")["step"] == 2
    assert main(["train", *compiled_args, "--resume", "latest"]) == 0
    assert [m["step"] for m in th.metrics(compiled)] == list(range(1, STEPS + 1))

    # The checkpoint holds the model's own parameter names, not those of the compiled wrapper.
    assert th.model_state(compiled).keys() == th.model_state(eager).keys()
    # Compiled kernels may fuse and reorder floating-point operations: equal to float32 rounding, not bitwise.
    torch.testing.assert_close(torch.tensor(th.losses(compiled)), torch.tensor(th.losses(eager)), rtol=1e-5, atol=0)
    assert th.max_abs_diff(th.model_state(compiled), th.model_state(eager)) <= 1e-5
    assert th.max_abs_diff(th.model_state(compiled), th.model_state(compiled, "step_00000002.pt")) > 1e-3
