"""Gradient accumulation: ``--accum-freq 2 --batch-size B`` trains exactly like ``--batch-size 2B``."""

from __future__ import annotations

import pytest

from euclip.train.config import resolve_config
from euclip.data.sampling import GlobalBatchSampler
from euclip.train.loop import train

# SGD-like AdamW (eps far above the gradients): equal parameters then mean equal gradients; see test_distributed.
SGD_LIKE = dict(lr=0.05, eps=1.0, wd=0.0)


def test_accumulated_micro_batches_are_the_big_batch_in_order():
    big = iter(GlobalBatchSampler(100, 16, seed=1, start_step=4))
    small = iter(GlobalBatchSampler(100, 8, seed=1, start_step=4, accum_freq=2))
    for _ in range(10):  # crosses epoch boundaries (6 steps per epoch)
        assert next(small) + next(small) == next(big)
    # Accumulation and processes together: micro-batch m of process r is slice r of the m-th W·B chunk.
    procs = [iter(GlobalBatchSampler(100, 4, seed=1, rank=r, world_size=2, start_step=4, accum_freq=2))
             for r in range(2)]
    big = iter(GlobalBatchSampler(100, 16, seed=1, start_step=4))
    for _ in range(10):
        micro = [[next(p) for p in procs] for _ in range(2)]
        assert micro[0][0] + micro[0][1] + micro[1][0] + micro[1][1] == next(big)


@pytest.mark.slow
def test_accumulation_equals_one_big_batch(tmp_path, th):
    # meru: besides the towers, the logit scale and the curvature enter the loss directly, and the α scales
    # and the entailment loss are there too. (test_distributed runs accumulation across processes as well.)
    common = {**th.BASE_OPTIONS, **SGD_LIKE, "preset": "meru", "steps": 3, "save_every_steps": 100}
    big = train(resolve_config({**common, "batch_size": 16, "output": str(tmp_path / "big")}))
    accum = train(resolve_config({**common, "batch_size": 8, "accum_freq": 2, "output": str(tmp_path / "accum")}))
    assert big["samples_seen"] == accum["samples_seen"] == 48
    got, want = th.losses(tmp_path / "accum"), th.losses(tmp_path / "big")
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-5, (got, want)
    assert th.max_abs_diff(th.model_state(tmp_path / "accum"), th.model_state(tmp_path / "big")) <= 1e-5
