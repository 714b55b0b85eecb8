"""The per-step schedules of the entailment loss (weight warm-up, min-radius ramp) reach the loss, as logged."""

from __future__ import annotations

import pytest

from euclip.cli import main
from euclip.train.config import resolve_config


def test_entailment_weight_ramps_over_its_warmup():
    cfg = resolve_config({"preset": "meru", "steps": 10, "entailment_warmup": 4})
    assert [cfg.entailment_weight_at(s) for s in range(6)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    paper = resolve_config({"preset": "meru", "steps": 10})  # the preset itself has no warm-up: MERU's recipe
    assert paper.entailment_warmup == 0 and paper.entailment_weight_at(0) == 0.2


def test_logged_schedules_follow_the_flags(tmp_path, th):
    run = tmp_path / "run"
    args = th.base_args(preset="meru", steps=4, batch_size=8, entailment_warmup=2, min_radius=0.1,
                        min_radius_final=0.4, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    rows = th.metrics(run)
    assert [r["entailment_weight"] for r in rows] == pytest.approx([0.1, 0.2, 0.2, 0.2])
    assert [r["min_radius"] for r in rows] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # The penalty is computed (and so logged non-zero) at every step whose weight is positive.
    assert all(r["entailment"] > 0 for r in rows)
