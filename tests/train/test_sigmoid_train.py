"""The sigmoid loss (--siglip) trains every preset end to end on the synthetic data, and its bias is learned."""

from __future__ import annotations

import math

import pytest
import torch

from euclip.cli import main
from euclip.model import load_model
from euclip.train.config import resolve_config


@pytest.mark.parametrize("preset", ["clip", "euclip", "meru"])
def test_siglip_trains_every_preset(tmp_path, th, preset):
    run = tmp_path / preset
    assert main(["train", "--no-eval", "--siglip", *th.base_args(preset=preset, steps=6, batch_size=16, output=run)]) == 0
    rows = th.metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 7)) and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    model = load_model(run)
    assert model.config.init_logit_bias == -10.0 and model.config.init_logit_scale == pytest.approx(math.log(10))
    assert "logit_bias" in rows[-1] and rows[-1]["logit_bias"] != -10.0  # learned (and logged)
    assert isinstance(model.logit_bias, torch.nn.Parameter)


def test_siglip_options():
    cfg = resolve_config({"preset": "meru", "siglip": True, "steps": 1})
    assert cfg.loss == "sigmoid" and cfg.model.init_logit_bias == -10.0 and cfg.entailment_weight == 0.2
    explicit = resolve_config({"siglip": True, "init_logit_bias": -5.0, "steps": 1})
    assert explicit.model.init_logit_bias == -5.0  # explicit flags beat --siglip's initialisation
    with pytest.raises(ValueError, match="--loss sigmoid needs a logit bias"):
        resolve_config({"loss": "sigmoid", "steps": 1})
