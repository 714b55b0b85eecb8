"""A new evaluation is one function and one registration: it then appears in results.json, as `euclip eval NAME`,
in `euclip eval all` and in the report's table."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from euclip.cli import main
from euclip.eval.registry import EVALUATIONS, Metric, evaluations, register_evaluation
from euclip.eval.report import load_run, metrics_table
from euclip.model import GeometricCLIP, ModelConfig


@pytest.fixture
def registered():
    """Registers 'image_norm' (the mean distance of the images from the origin) for one test."""
    evaluations()  # the built-in ones first

    @register_evaluation("image_norm", title="Image norms", requires=("captions",), summary="mean image norm",
                         metrics=(Metric("mean", "mean image norm", ("mean",), "num", None),))
    def image_norm(ctx):
        emb = ctx.embeddings()
        return {"mean": emb.image.norm(dim=1).mean().item(), "num_images": emb.num_images}

    yield image_norm
    EVALUATIONS.pop("image_norm")


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    model = GeometricCLIP(ModelConfig(model="tiny"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": {"model": asdict(model.config)}},
               tmp_path / "run" / "checkpoints" / "latest.pt")
    return tmp_path / "run"


def test_a_registered_evaluation_appears_everywhere(registered, run, capsys):
    fast = ["--num-samples", "6", "--batch-size", "6", "--device", "cpu", "--no-progress"]
    assert main(["eval", "image_norm", str(run), *fast]) == 0
    single = json.loads((run / "eval_image_norm_synthetic_test.json").read_text())
    assert single["num_images"] == 6 and single["mean"] > 0
    assert "mean image norm:" in capsys.readouterr().out
    assert main(["eval", "all", str(run), *fast, "--num-images", "2", "--steps", "2"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["evaluations"]["image_norm"]["mean"] == pytest.approx(single["mean"], rel=1e-6)
    assert results["metrics"]["image_norm.mean"] == results["evaluations"]["image_norm"]["mean"]
    assert {"zeroshot", "retrieval", "hierarchy", "geometry", "traversal"} < set(results["evaluations"])
    table = metrics_table(load_run(run))
    assert table["Image norms"]["mean image norm"] == (results["evaluations"]["image_norm"]["mean"], "num")


def test_evaluations_declare_what_they_need(run):
    from euclip.data.sources import DataSpec
    from euclip.eval.runner import applicable

    synthetic = DataSpec(num_samples=4)
    assert applicable(None, synthetic) == list(evaluations())
    with pytest.raises(ValueError, match="evaluation 'traversal' needs data with attributes"):
        applicable(["traversal"], DataSpec("csv", data=str(run / "checkpoints" / "latest.pt")))
    with pytest.raises(ValueError, match="unknown evaluation 'nope'; valid: zeroshot, retrieval"):
        applicable(["nope"], synthetic)
    with pytest.raises(ValueError, match="unknown settings"):
        register_evaluation("bad", title="", summary="", settings=("no_such_setting",))
