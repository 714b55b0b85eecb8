"""Validation during training (--val-data): the run's loss and retrieval recall on held-out pairs, logged as val/*."""

from __future__ import annotations

import math

import pytest
import torch

from euclip.cli import main
from euclip.data.sources import DataSpec
from euclip.eval.embed import embed
from euclip.eval.retrieval import retrieval_from_embeddings
from euclip.losses import contrastive_loss
from euclip.model import load_model


def test_csv_validation_is_logged_and_equals_an_independent_computation(tmp_path, th):
    train = th.write_csv_dataset(tmp_path / "train", 16)
    val = th.write_csv_dataset(tmp_path / "val", 10)
    run = tmp_path / "run"
    args = th.base_args(preset="meru", dataset_type="csv", train_data=train, val_data=val, batch_size=8, steps=4,
                        val_every_steps=2, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    rows = [m for m in th.metrics(run) if "val/loss" in m]
    assert [m["step"] for m in rows] == [2, 4]
    assert [m["step"] for m in th.metrics(run) if "loss" in m] == [1, 2, 3, 4]  # training lines unchanged
    last = rows[-1]
    assert last["val/pairs"] == 10 and math.isfinite(last["val/loss"])
    # The same numbers from the final model, computed here from the library's parts: batches of 8 pairs.
    model = load_model(run)
    emb = embed(model, DataSpec("csv", data=str(val), num_samples=None), progress=False)
    recall = retrieval_from_embeddings(emb)
    assert last["val/image_to_text_R@1"] == recall["image_to_text"]["R@1"]
    assert last["val/text_to_image_R@5"] == recall["text_to_image"]["R@5"]
    image, text = emb.image[emb.text_to_image], emb.text
    with torch.no_grad():
        losses = [contrastive_loss(image[lo:lo + 8], text[lo:lo + 8], "hyperbolic", "distance", model.logit_scale,
                                   model.curvature, entailment_weight=0.2).total * len(text[lo:lo + 8])
                  for lo in range(0, 10, 8)]
    assert last["val/loss"] == pytest.approx((sum(losses) / 10).item(), rel=1e-5)


def test_synthetic_validation_needs_no_file(tmp_path, th):
    run = tmp_path / "run"
    args = th.base_args(steps=2, batch_size=8, val_dataset_type="synthetic", val_num_samples=12, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    rows = [m for m in th.metrics(run) if "val/loss" in m]
    assert [m["step"] for m in rows] == [2] and rows[0]["val/pairs"] == 12  # the end of training (epoch is longer)


def test_validation_flags_without_data_are_refused(tmp_path, th, capsys):
    code = main(["train", "--no-eval", *th.base_args(steps=2, output=tmp_path / "run"), "--val-every-steps", "1"])
    assert code == 2 and "--val-every-steps / --val-num-samples need --val-data" in capsys.readouterr().err
    code = main(["train", "--no-eval", *th.base_args(steps=2, output=tmp_path / "run"), "--val-data",
                 str(tmp_path / "missing.tsv")])
    assert code == 2 and "no such CSV file" in capsys.readouterr().err
