"""Training-data and loss options reach the trainer: the synthetic caption mix, and the per-step schedules of
the entailment loss (weight warm-up, min-radius ramp), as logged."""

from __future__ import annotations

import re

import pytest
import torch

from euclip.cli import main
from euclip.data.synthetic import COLOR_SYNONYMS, COLORS, SHAPE_SYNONYMS
from euclip.train.config import resolve_config
from euclip.data.sources import StreamPosition, get_source


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


def test_synthetic_caption_levels_reach_the_training_stream():
    cfg = resolve_config({"steps": 2, "batch_size": 32, "workers": 0, "synthetic_caption_levels": (0, 0, 1, 0, 0)})
    data = get_source("synthetic").train_stream(cfg.data_options(), lambda captions: torch.zeros(len(captions), 1,
                                                dtype=torch.long), 32, StreamPosition())
    captions = next(iter(data.loader)).captions
    shape_words = [w for synonyms in SHAPE_SYNONYMS.values() for w in synonyms]
    assert len(captions) == 32
    assert all(any(w in c for w in shape_words) and not any(f" {col}" in c for col in COLORS) for c in captions)


def test_synthetic_colour_captions_reach_the_training_stream():
    # One epoch of 32 samples: the first batch names shapes, the second (epoch 1) colours only.
    cfg = resolve_config({"steps": 2, "batch_size": 32, "workers": 0, "train_num_samples": 32,
                          "synthetic_caption_levels": (0, 0, 1, 0, 0), "synthetic_color_captions": (0, 1)})
    data = get_source("synthetic").train_stream(cfg.data_options(), lambda captions: torch.zeros(len(captions), 1,
                                                dtype=torch.long), 32, StreamPosition())
    batches = iter(data.loader)
    first, second = next(batches).captions, next(batches).captions

    def names(caption: str, synonyms: dict) -> bool:
        return any(re.search(rf"\b{re.escape(w)}\b", caption) for words in synonyms.values() for w in words)

    assert all(names(c, SHAPE_SYNONYMS) and not names(c, COLOR_SYNONYMS) for c in first)
    assert all(names(c, COLOR_SYNONYMS) and not names(c, SHAPE_SYNONYMS) for c in second)
