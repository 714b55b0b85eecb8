"""Numerical guard rails (non-finite steps, empty batches) and bad input named before any work."""

from __future__ import annotations

import json
import math

import pytest
import torch

from euclip.cli import main
from euclip.train import checkpoint as ckpt
from euclip.data.sampling import GlobalBatchSampler


def _run(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors (invalid choice) exit with 2 and print the choices
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_divergence_stops_with_a_named_step_and_keeps_the_checkpoint(tmp_path, th, capsys):
    run = tmp_path / "run"
    # lr 1e30: step 1 is finite, its update makes the weights ~1e29, and every later forward overflows to NaN.
    args = th.base_args(preset="euclip", batch_size=8, steps=8, lr=1e30, nonfinite_limit=2, save_every_steps=1,
                        output=run)
    code, err = _run(["train", "--no-eval", *args], capsys)
    assert code == 3
    line = err.strip().splitlines()[-1]
    assert line.startswith("euclip: training diverged: step 4: non-finite loss (loss nan); 3 non-finite steps "
                           "exceed --nonfinite-limit 2. Last finite loss: "), line
    last_finite = float(line.split("Last finite loss: ")[1].split(";")[0])
    assert math.isfinite(last_finite) and last_finite == th.losses(run)[-1]
    assert [m["step"] for m in th.metrics(run)] == [1]  # the skipped steps are not logged as trained
    state = ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")  # loadable, and only finite numbers
    assert state["counters"]["nonfinite_steps"] == 2 and state["counters"]["last_finite_loss"] == last_finite
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_a_run_that_never_trained_says_its_checkpoint_holds_the_initial_weights(tmp_path, th, capsys, monkeypatch):
    from euclip.model import GeometricCLIP

    forward = GeometricCLIP.forward  # every step non-finite from the first: the checkpoints are of untrained weights
    monkeypatch.setattr(GeometricCLIP, "forward",
                        lambda self, *a, **k: tuple(x * float("nan") for x in forward(self, *a, **k)))
    run = tmp_path / "run"
    args = th.base_args(preset="euclip", batch_size=8, steps=8, nonfinite_limit=2, save_every_steps=1, output=run)
    code, err = _run(["train", "--no-eval", *args], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 3 and "last good checkpoint" not in line, line
    # Steps 1-3 are non-finite; the third stops the run before its checkpoint, so the last one is of step 2.
    assert (f"there is no trained checkpoint: {run / 'checkpoints' / 'latest.pt'} (step 2) holds the initial "
            "weights") in line, line


@pytest.mark.slow
def test_an_empty_batch_is_a_skipped_step_at_its_data_position(tmp_path, th):
    # 8 rows in batches of 4; every row of the first batch (of the seed-0 permutation) is unreadable.
    first = next(iter(GlobalBatchSampler(8, 4, seed=0)))
    csv = th.write_csv_dataset(tmp_path / "data", 8, bad={index for _, index in first})
    run = tmp_path / "run"
    args = th.base_args(dataset_type="csv", train_data=csv, batch_size=4, steps=2, save_every_steps=1, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    # Step 1 had nothing to train on but still counts, so step 2 trains on the epoch's second batch (and a
    # resume from step 1 would start there too).
    assert summary["steps"] == 2 and summary["empty_steps"] == 1
    assert summary["skipped_samples"] == 4 and summary["samples_seen"] == 4
    assert [m["step"] for m in th.metrics(run)] == [2]
    first_checkpoint = ckpt.load_checkpoint(run / "checkpoints" / "step_00000001.pt")
    assert first_checkpoint["counters"]["empty_steps"] == 1 and first_checkpoint["counters"]["skipped_samples"] == 4


BAD_INPUT = {
    "geometry": (["--geometry", "spherical"], "unknown geometry 'spherical'; valid names: ", "euclidean",
                 "elliptic", "hyperbolic"),
    # argparse's choices (quoted or not, depending on the Python version)
    "logit": (["--logit", "cosine"], "invalid choice: 'cosine' (choose from ", "squared", "distance", "inner"),
    "preset": (["--preset", "openai"], "invalid choice: 'openai' (choose from ", "clip", "euclip", "meru"),
    "model": (["--model", "ViT-Z-99"], "unknown model 'ViT-Z-99'; euclip configs: tiny, small"),
    "precision": (["--precision", "fp8"], "invalid choice: 'fp8' (choose from "),
    "csv": (["--dataset-type", "csv", "--train-data", "{tmp}/nope.tsv"], "--train-data: no such file: {tmp}/nope.tsv"),
    "shards": (["--dataset-type", "webdataset", "--train-data", "{tmp}/s/{{00000..00002}}.tar",
                "--train-num-samples", "10"], "3 of 3 shard(s) of '{tmp}/s/{{00000..00002}}.tar' do not exist"),
    "shard": (["--dataset-type", "webdataset", "--train-data", "{tmp}/x.tar"], "1 of 1 shard(s)", "{tmp}/x.tar"),
    "synthetic-batch": (["--train-num-samples", "10", "--batch-size", "16"],
                        "global batch (16 per process × 1 process(es) × 1 accumulated = 16) is larger than the "
                        "synthetic epoch (--train-num-samples 10)"),
    "csv-batch": (["--dataset-type", "csv", "--train-data", "{csv}", "--batch-size", "8", "--accum-freq", "2"],
                  "the global batch (8 per process × 1 process(es) × 2 accumulated micro-batches = 16 samples) is "
                  "larger than the dataset (6 samples)"),
    "resume": (["--resume", "latest"], "--resume latest: no checkpoint found"),
    "steps": (["--steps", "0"], "--steps and --epochs must be >= 1"),
    "entailment-warmup": (["--entailment-warmup", "-1"], "--entailment-warmup must be >= 0, got -1"),
    "render-size": (["--synthetic-render-size", "4"], "--synthetic-render-size must be >= 8, got 4"),
    "caption-levels": (["--synthetic-caption-levels", "1,2"], "--synthetic-caption-levels: caption level "
                       "frequencies must be 5 non-negative numbers"),
    "caption-levels-text": (["--synthetic-caption-levels", "1,a"], "expected comma-separated numbers, got '1,a'"),
    "color-captions": (["--synthetic-color-captions", "0,2"], "--synthetic-color-captions: colour-caption "
                       "fractions must be one or more numbers in [0, 1]"),
    "device-tpu": (["--device", "tpu"], "--device tpu: not a device; use auto, cpu, cuda or cuda:N"),
    "min-radius-final": (["--min-radius-final", "-1"], "--min-radius-final must be positive, got -1"),
    "min-radius": (["--min-radius", "0"], "--min-radius must be positive, got 0"),
    "init-logit-scale": (["--init-logit-scale", "100"], "--init-logit-scale is log t: it must be at most "
                         "ln(--max-logit-scale 100) = 4.605 (t = 100), got 100"),
    "max-logit-scale": (["--max-logit-scale", "1e39"], "--max-logit-scale must be finite in float32"),
    "curvature": (["--preset", "euclip", "--curvature", "2"], "--curvature applies to the hyperbolic geometry only, "
                  "not 'euclidean'"),
    "learn-curvature": (["--geometry", "elliptic", "--no-learn-curvature"], "--no-learn-curvature applies to the "
                        "hyperbolic geometry only, not 'elliptic'"),
    "wd": (["--wd", "-0.1"], "--wd must be >= 0, got -0.1"),
    "lr": (["--lr", "-0.001"], "--lr must be >= 0, got -0.001"),
}
if not torch.cuda.is_available():  # the GPU machine has one; here it is absent
    BAD_INPUT["device-cuda"] = (["--device", "cuda"], "--device cuda: no CUDA GPU is available here")


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_named_before_any_work(tmp_path, th, capsys, case):
    csv = th.write_csv_dataset(tmp_path / "data", 6) if case == "csv-batch" else None
    flags, *messages = BAD_INPUT[case]
    fill = {"tmp": tmp_path, "csv": csv}
    run = tmp_path / "run"
    code, err = _run(["train", "--no-eval", *th.base_args(steps=2, output=run),
                      *[f.format(**fill) for f in flags]], capsys)
    assert code == 2
    assert all(m.format(**fill) in err for m in messages), err
    assert "Traceback" not in err and not run.exists()  # refused before the run directory was made


def test_local_loss_without_gather_is_refused_under_torchrun(tmp_path, th, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before the process group is joined
    code, err = _run(["train", "--no-eval", *th.base_args(steps=2, output=tmp_path / "run"), "--local-loss"], capsys)
    assert code == 2 and "--local-loss needs --gather-with-grad" in err
