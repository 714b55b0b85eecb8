"""What a resume may change: optimiser, schedule and bookkeeping settings take effect (and are logged); model and
geometry settings are refused; what is not given is the checkpoint's, not the defaults'."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from euclip.cli import main
from euclip.train import checkpoint as ckpt


def _code(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory, th):
    """A 4-step run with a checkpoint at step 2 (the resumes below start there, each into its own folder)."""
    run = tmp_path_factory.mktemp("four") / "run"
    args = th.base_args(preset="euclip", batch_size=8, steps=4, save_every_steps=2, lr=0.05, eps=1.0, wd=0.0)
    assert main(["train", "--no-eval", *args, "--output", str(run)]) == 0
    return run, args


@pytest.mark.slow
def test_a_new_lr_and_wd_on_resume_take_effect_and_are_logged(tmp_path, th, four_steps, caplog):
    reference, args = four_steps
    run = tmp_path / "run"
    step2 = reference / "checkpoints" / "step_00000002.pt"
    with caplog.at_level(logging.INFO, logger="euclip"):
        assert main(["train", "--no-eval", *args, "--output", str(run), "--resume", str(step2), "--lr", "0.01",
                     "--wd", "0.1"]) == 0
    assert "resume: --lr changed 0.05 → 0.01" in caplog.text and "resume: --wd changed 0 → 0.1" in caplog.text
    # The schedule is the same, at a fifth of the peak: steps 3 and 4 ran at a fifth of the reference's rates.
    old, new = th.metrics(reference), th.metrics(run)
    assert [m["step"] for m in new] == [3, 4]
    for o, n in zip(old[2:], new):
        assert n["lr"] == pytest.approx(o["lr"] / 5, rel=1e-12)
    state = ckpt.load_checkpoint(run / "checkpoints" / "latest.pt")
    decay, no_decay = state["optimizer"]["param_groups"]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["initial_lr"] == 0.01 and state["scheduler"]["base_lrs"] == [0.01, 0.01]
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01  # recorded, and done
    assert th.max_abs_diff(th.model_state(run), th.model_state(reference)) > 0


@pytest.mark.slow
def test_unchanged_settings_resume_bit_exactly_from_an_older_step(tmp_path, th, four_steps):
    reference, args = four_steps
    run = tmp_path / "run"
    assert main(["train", "--no-eval", *args, "--output", str(run), "--resume",
                 str(reference / "checkpoints" / "step_00000002.pt")]) == 0
    for name, value in th.model_state(run).items():
        assert torch.equal(value, th.model_state(reference)[name]), name


@pytest.mark.slow
def test_a_bare_resume_keeps_the_runs_settings(tmp_path, th):
    # Only --output, --resume and --steps: the run's preset, lr and batch size are the checkpoint's, not defaults.
    run = tmp_path / "run"
    args = th.base_args(preset="meru", batch_size=8, steps=2, lr=0.02, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    assert main(["train", "--no-eval", "--output", str(run), "--resume", "latest", "--steps", "3",
                 "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["geometry"] == "hyperbolic" and config["entailment_weight"] == 0.2
    assert config["lr"] == 0.02 and config["batch_size"] == 8 and config["steps"] == 3
    assert [m["step"] for m in th.metrics(run)] == [1, 2, 3]


@pytest.mark.slow
def test_a_preset_or_geometry_change_on_resume_is_refused_with_the_fields(tmp_path, th, capsys):
    run = tmp_path / "run"
    args = th.base_args(preset="euclip", batch_size=8, steps=2, output=run)
    assert main(["train", "--no-eval", *args]) == 0
    config, metrics = (run / "config.json").read_text(), (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _code(["train", "--no-eval", *args, "--steps", "4", "--resume", "latest", "--preset", "meru"]) == 2
    err = capsys.readouterr().err
    assert "cannot change the model or geometry" in err, err
    for field in ("--geometry hyperbolic (the run's: euclidean)", "--logit distance (the run's: squared)",
                  "--final-ln", "--entailment-weight 0.2 (the run's: 0)"):
        assert field in err, err
    assert "Traceback" not in err
    assert (run / "config.json").read_text() == config and (run / "metrics.jsonl").read_text() == metrics
    assert _code(["train", "--no-eval", *args, "--steps", "4", "--resume", "latest", "--embed-dim", "64"]) == 2
    assert "--embed-dim 64 (the run's: None)" in capsys.readouterr().err
