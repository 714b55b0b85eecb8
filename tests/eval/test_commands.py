"""The evaluation commands end to end on untrained tiny models: JSON written, data and settings recorded."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from euclip.cli import build_parser
from euclip.data.sources import DataSpec
from euclip.eval.registry import EvalSettings
from euclip.eval.runner import evaluate_run
from euclip.model import GeometricCLIP
from euclip.runs import RunDir
from euclip.train.config import resolve_config

FAST = ["--batch-size", "8", "--device", "cpu", "--no-progress"]


def run_cli(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    return args


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One untrained tiny run directory per preset, in the trainer's checkpoint and config formats."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for preset in ("clip", "euclip", "meru"):
        run = root / preset
        cfg = resolve_config({"preset": preset, "output": str(run), "steps": 1, "model": "tiny"})
        torch.manual_seed(0)
        model = GeometricCLIP(cfg.model)
        (run / "checkpoints").mkdir(parents=True)
        torch.save({"model": model.state_dict(), "config": {"model": asdict(cfg.model)}},
                   run / "checkpoints" / "latest.pt")
        cfg.save(run / "config.json")
        out[preset] = run
    return out


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_evaluate_run_writes_every_evaluation(runs):
    settings = EvalSettings(traversal_images=6, traversal_steps=4)
    out = evaluate_run(runs["meru"], spec=DataSpec(num_samples=24), settings=settings, device="cpu", progress=False)
    saved = read(runs["meru"] / "results.json")
    assert saved["evaluations"]["retrieval"] == out["evaluations"]["retrieval"]
    assert set(saved["evaluations"]) == {"zeroshot", "retrieval", "hierarchy", "geometry", "traversal"}
    assert saved["model"]["path"] == str(runs["meru"]) and saved["model"]["config"]["geometry"] == "hyperbolic"
    assert saved["data"] == {"dataset_type": "synthetic", "split": "test", "num_samples": 24, "seed": 0,
                             "batch_size": 128, "workers": 0}
    assert saved["settings"]["min_radius"] == 0.1 and saved["settings"]["traversal_images"] == 6
    saved = saved["evaluations"]
    assert saved["retrieval"]["num_images"] == 24 and set(saved["retrieval"]["image_to_text"]) == {"R@1", "R@5",
                                                                                                    "R@10"}
    assert set(saved["hierarchy"]["conventions"]) == {"hycoclip", "inclusive"}
    assert saved["hierarchy"]["num_samples"] == 24
    # The hierarchy metrics score the zero-shot evaluation's own predictions.
    assert saved["hierarchy"]["top1"] == saved["zeroshot"]["top1"]
    geo = saved["geometry"]
    assert 0 <= geo["cones"]["fraction"] <= 1 and 0 <= geo["separation_auc"] <= 1
    assert set(geo["levels"]["per_level"]) <= {"0", "1", "2", "3", "4"}
    assert saved["traversal"]["num_walks"] == 6 and len(saved["traversal"]["examples"]) == 6
    assert all(step["caption"] for ex in saved["traversal"]["examples"] for step in ex["walk"])


def test_retrieval_synthetic(runs, capsys):
    run_cli(["eval", "retrieval", str(runs["euclip"]), "--num-samples", "8", *FAST])
    saved = read(runs["euclip"] / "eval_retrieval_synthetic_test.json")
    assert saved["num_images"] == saved["num_texts"] == 8
    assert saved["data"]["num_samples"] == 8 and saved["geometry"] == "euclidean" and saved["logit"] == "squared"
    assert saved["model"]["checkpoint"].endswith("checkpoints/latest.pt") and saved["chunk"] == 1024
    assert "image→text R@1" in capsys.readouterr().out


def _image(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (20, 24), color).save(path)
    return path


def test_retrieval_csv_groups_captions_by_image(runs, tmp_path):
    for name, color in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0)), ("c.png", (0, 0, 255))):
        _image(tmp_path / name, color)
    rows = [["filepath", "title"], ["a.png", "a red square"], ["b.png", "a green square"], ["a.png", "red"],
            ["c.png", "a blue square"], ["missing.png", "not there"], ["b.png", "green"]]
    with open(tmp_path / "pairs.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows(rows)
    out = tmp_path / "r.json"
    run_cli(["eval", "retrieval", str(runs["clip"] / "checkpoints" / "latest.pt"), "--dataset-type", "csv", "--data",
             str(tmp_path / "pairs.tsv"), "--csv-caption-key", "title", "--output", str(out), *FAST])
    saved = read(out)
    # 4 distinct paths -> 3 readable images with 2 + 2 + 1 captions; the missing image and its caption are skipped.
    assert (saved["num_images"], saved["num_texts"], saved["skipped_images"]) == (3, 5, 1)
    assert saved["data"]["dataset_type"] == "csv" and saved["data"]["csv_caption_key"] == "title"
    assert saved["model"]["run_dir"] == str(runs["clip"])


def test_retrieval_webdataset(runs, tmp_path):
    from euclip.data.wds import write_shards

    samples = [(Image.new("RGB", (16, 16), (40 * i, 0, 0)), f"caption {i}") for i in range(6)]
    write_shards(samples, str(tmp_path / "shards" / "%05d.tar"), maxcount=4)
    out = tmp_path / "w.json"
    run_cli(["eval", "retrieval", str(runs["clip"]), "--dataset-type", "webdataset", "--data",
             str(tmp_path / "shards" / "{00000..00001}.tar"), "--num-samples", "5", "--output", str(out), *FAST])
    saved = read(out)
    assert saved["num_images"] == saved["num_texts"] == 5
    assert saved["data"]["dataset_type"] == "webdataset" and "split" not in saved["data"]


def test_geometry_command(runs, capsys):
    run_cli(["eval", "geometry", str(runs["clip"]), "--num-samples", "8", *FAST])
    saved = read(runs["clip"] / "eval_geometry_synthetic_test.json")
    assert saved["norm_used"] == "tower" and saved["cones"] is None  # elliptic: no cones, tower norms
    assert saved["effective_rank"]["dim"] == 128 and saved["model"]["config"]["geometry"] == "elliptic"
    run_cli(["eval", "geometry", str(runs["euclip"]), "--num-samples", "8", "--min-radius", "0.3", *FAST])
    saved = read(runs["euclip"] / "eval_geometry_synthetic_test.json")
    assert saved["cones"]["min_radius"] == 0.3 and saved["norm_used"] == "manifold"
    assert "entailment cone" in capsys.readouterr().out


def test_hierarchy_synthetic(runs):
    run_cli(["eval", "hierarchy", str(runs["clip"]), "--num-samples", "8", *FAST])
    saved = read(runs["clip"] / "eval_hierarchy_synthetic_test.json")
    assert saved["tree"] == "shapes" and saved["num_samples"] == 8
    assert set(saved["conventions"]["inclusive"]) == {"top1", "tie", "lca", "jaccard", "hier_precision",
                                                      "hier_recall"}
    assert saved["conventions"]["inclusive"]["top1"] == saved["top1"]


def _class_folder(root: Path, classes: list[str]) -> Path:
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(2):
            _image(root / name / f"{j}.png", (60 * i, 100 * j, 0))
    return root


def test_hierarchy_folder_with_edges_file(runs, tmp_path):
    data = _class_folder(tmp_path / "images", ["circle", "triangle"])
    (tmp_path / "tree.txt").write_text("# parent child\nshape polygon\nshape round\npolygon triangle\nround circle\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    out = tmp_path / "h.json"
    run_cli(["eval", "hierarchy", str(runs["meru"]), "--data", str(data), "--tree", str(tmp_path / "tree.txt"),
             "--templates", str(tmp_path / "templates.txt"), "--output", str(out), *FAST])
    saved = read(out)
    assert saved["num_samples"] == 4 and saved["classes"] == ["circle", "triangle"]
    # Two classes in different families: each sample is right (TIE 0) or four edges off.
    assert saved["conventions"]["hycoclip"]["tie"] == pytest.approx(4 * (1 - saved["top1"]))


def test_hierarchy_folder_with_wordnet(runs, tmp_path):
    from euclip.eval.wordnet import wordnet_available

    if not wordnet_available():
        pytest.skip("WordNet 3.0 is not installed (apt-get install -y wordnet-base)")
    data = _class_folder(tmp_path / "imagenet", ["n01440764", "n02102040"])  # tench, English springer
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    out = tmp_path / "wn.json"
    run_cli(["eval", "hierarchy", str(runs["clip"]), "--data", str(data), "--templates",
             str(tmp_path / "templates.txt"), "--output", str(out), *FAST])
    saved = read(out)
    assert saved["tree"] == "wordnet" and saved["classnames"] == ["tench", "English springer"]


def test_traverse_command(runs, capsys):
    run_cli(["traverse", str(runs["meru"]), "--num-images", "4", "--steps", "3", "--examples", "2", *FAST])
    saved = read(runs["meru"] / "eval_traversal_synthetic_test.json")
    assert saved["num_walks"] == 4 and len(saved["examples"]) == 2 and saved["root"] == "origin"
    assert saved["model"]["config"]["geometry"] == "hyperbolic" and saved["steps"] == 3
    assert "→" in capsys.readouterr().out or all(len(ex["walk"]) == 1 for ex in saved["examples"])


def test_report_command_evaluates_missing_runs(runs, tmp_path):
    out = tmp_path / "report"
    run_cli(["report", str(runs["euclip"]), str(runs["meru"]), "--output", str(out), "--num-samples", "12",
             "--device", "cpu", "--no-progress"])
    assert "traversal" in read(runs["euclip"] / "results.json")["evaluations"]
    page = (out / "index.html").read_text()
    assert "<table" in page and "euclip" in page and "meru" in page
    report = read(out / "report.json")
    assert [r["label"] for r in report["runs"]] == ["euclip", "meru"]


@pytest.mark.parametrize("argv", [["eval", "zeroshot"], ["eval", "retrieval"], ["eval", "hierarchy"],
                                  ["eval", "geometry"], ["eval", "traversal"], ["eval", "all"], ["traverse"],
                                  ["report"]])
def test_help_explains_with_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Example" in text and "euclip " + " ".join(argv) + " runs/" in text


def test_bad_inputs(runs, tmp_path):
    with pytest.raises(ValueError, match="--data is required"):
        run_cli(["eval", "retrieval", str(runs["clip"]), "--dataset-type", "csv", *FAST])
    with pytest.raises(FileNotFoundError, match="no such CSV"):
        run_cli(["eval", "geometry", str(runs["clip"]), "--dataset-type", "csv", "--data", str(tmp_path / "x.tsv"),
                 *FAST])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_cli(["traverse", str(tmp_path), *FAST])


def test_run_dir_of_a_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert RunDir.of(tmp_path).path == tmp_path
    assert RunDir.of(tmp_path / "checkpoints" / "latest.pt").path == tmp_path
    assert RunDir.of(tmp_path / "model.pt").path == tmp_path


def test_results_of_a_bare_checkpoint_go_beside_it(runs, tmp_path):
    # A checkpoint outside any run directory (/data/models/m.pt): its results are written in /data/models, for
    # every command alike (zero-shot used to write into /data).
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    checkpoint = models / "m.pt"
    checkpoint.write_bytes((runs["euclip"] / "checkpoints" / "latest.pt").read_bytes())
    run_cli(["eval", "zeroshot", str(checkpoint), "--num-samples", "8", *FAST])
    run_cli(["eval", "retrieval", str(checkpoint), "--num-samples", "8", *FAST])
    assert sorted(p.name for p in models.iterdir()) == ["eval_retrieval_synthetic_test.json",
                                                        "eval_zeroshot_synthetic_test.json", "m.pt"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["models"]
    assert read(models / "eval_zeroshot_synthetic_test.json")["model"]["run_dir"] == str(models)
