"""Evaluation on bad input: unreadable images are skipped and counted (as in training), bad templates and output
paths are named before any work."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

import euclip.eval.embed
import euclip.model
from euclip.cli import build_parser
from euclip.eval.folders import check_template
from euclip.model import GeometricCLIP
from euclip.train.config import resolve_config

FAST = ["--batch-size", "4", "--device", "cpu", "--no-progress"]


def run_cli(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    return args


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An untrained tiny run directory in the trainer's checkpoint and config formats."""
    run = tmp_path_factory.mktemp("runs") / "clip"
    cfg = resolve_config({"preset": "clip", "output": str(run), "steps": 1, "model": "tiny"})
    torch.manual_seed(0)
    model = GeometricCLIP(cfg.model)
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": {"model": asdict(cfg.model)}}, run / "checkpoints" / "latest.pt")
    cfg.save(run / "config.json")
    return run


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Two classes of three good images, and in them a text file named .jpg, a zero-byte .png, a truncated .png."""
    root = tmp_path / "classes"
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 24), (80 * c, 40 * i, 0)).save(root / name / f"{i}.png")
    (root / "cat" / "bad.jpg").write_bytes(b"not an image at all")
    (root / "dog" / "zero.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    (root / "dog" / "cut.png").write_bytes(buffer.getvalue()[:60])
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_in_a_class_folder_are_skipped_and_counted(run, folder, tmp_path, caplog, capsys,
                                                                     workers):
    out = tmp_path / "zeroshot.json"
    run_cli(["eval", "zeroshot", str(run), "--data", str(folder), "--workers", str(workers), "--output", str(out),
             *FAST])
    result = json.loads(out.read_text())
    assert result["num_samples"] == 6 and result["skipped_images"] == 3
    assert "skipped 3 unreadable image(s)" in capsys.readouterr().out
    if workers == 0:  # (workers log in their own processes)
        assert all(name in caplog.text for name in ("bad.jpg", "zero.png", "cut.png")), caplog.text


@pytest.mark.parametrize("template, wrong", [("a {} {} photo", "2 placeholders"), ("a {} {photo}", "{photo}"),
                                             ("a photo", "0 placeholders"), ("a {", "not a format string")])
def test_bad_templates_are_named_before_any_work(run, folder, tmp_path, monkeypatch, template, wrong):
    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded the images before checking the templates")

    monkeypatch.setattr(euclip.eval.embed, "embed", no_embedding)
    templates = tmp_path / "templates.txt"
    templates.write_text(f"a photo of a {{}}.\n{template}\n")
    with pytest.raises(ValueError) as info:
        run_cli(["eval", "zeroshot", str(run), "--data", str(folder), "--templates", str(templates), *FAST])
    assert str(info.value).startswith(f"{templates}:2: template {template!r}") and wrong in str(info.value)


def test_good_templates_pass():
    for template in ("a photo of a {}.", "a {c} in the wild", "{{literally}} a {}"):
        check_template(template)


def test_output_into_a_missing_folder_is_created(run, tmp_path):
    out = tmp_path / "new" / "deeper" / "retrieval.json"
    run_cli(["eval", "retrieval", str(run), "--num-samples", "8", "--output", str(out), *FAST])
    assert json.loads(out.read_text())["num_images"] == 8


@pytest.mark.parametrize("kind", ["file-in-the-way", "a-folder"])
def test_an_unwritable_output_is_named_before_any_work(run, tmp_path, monkeypatch, kind):
    def no_model(*args, **kwargs):
        raise AssertionError("loaded the model before checking --output")

    monkeypatch.setattr(euclip.model, "load_model", no_model)
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "x.json" if kind == "file-in-the-way" else tmp_path
    for command in (["eval", "retrieval"], ["eval", "all"]):
        with pytest.raises(ValueError, match=f"--output {out}"):
            run_cli([*command, str(run), "--num-samples", "8", "--output", str(out), *FAST])
