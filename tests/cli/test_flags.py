"""`euclip train --help` is generated from the typed configs: each option once, with its real default."""

from __future__ import annotations

import dataclasses
import re

import pytest

from euclip.cli import build_parser, main
from euclip.cli.flags import config_fields
from euclip.model import ModelConfig
from euclip.train.config import TrainConfig


def train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return capsys.readouterr().out


def test_every_option_has_one_flag_with_help_and_its_real_default(capsys):
    text = train_help(capsys)
    assert "(default: None)" not in text and "default: None" not in text
    fields = config_fields(TrainConfig)
    assert {f.name for f, _ in fields} >= {f.name for f in dataclasses.fields(ModelConfig) if f.metadata["cli"]}
    for f, _ in fields:
        flag = (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0]
        assert len(re.findall(rf"^  {re.escape(flag)}(?=[ ,\n])", text, re.M)) == 1, flag
    # Defaults come from the dataclasses, so they cannot drift from what a run gets.
    for name, shown in [("lr", "0.0005"), ("wd", "0.2"), ("warmup", "100"), ("batch-size", "128"),
                        ("min-radius", "0.1"), ("max-logit-scale", "100"), ("keep-checkpoints", "2")]:
        field = next(f for f, _ in fields if f.name == name.replace("-", "_"))
        assert field.default == float(shown)
        block = text.split(f"  --{name} ")[1].split("\n  --")[0]
        assert f"(default: {shown})" in " ".join(block.split()), name


def test_geometry_flags_come_first(capsys):
    text = train_help(capsys)
    sections = re.findall(r"^(\S[^\n]*):$", text, re.M)
    assert sections[1].startswith("geometry and loss"), sections  # after argparse's own "options"
    geometry = text.split(sections[1])[1].split(sections[2])[0]
    for flag in ("--preset", "--geometry", "--logit", "--final-ln", "--entailment-weight", "--siglip"):
        assert flag in geometry


def test_the_resolved_settings_are_printed_before_training(tmp_path, capsys):
    assert main(["train", "--no-eval", "--steps", "1", "--batch-size", "4", "--workers", "0", "--no-progress",
                 "--output", str(tmp_path / "run"), "--geometry", "euclidean"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    # A plain 'euclidean' is the paper code's negative-distance model, with its logit scale: now said up front.
    assert first.startswith("[train] geometry euclidean, logit distance, final LN off, loss contrastive, "
                            "entailment 0, log t 2.66 (t = 14.3)"), first
