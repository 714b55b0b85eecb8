"""``euclip index build|search|info`` end to end on tiny models trained for a few steps through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from euclip import geometry as geom
from euclip.cli import main
from euclip.eval.embed import DataSpec, embed, embed_texts
from euclip.model import load_model

TRAIN = ["--model", "tiny", "--batch-size", "16", "--workers", "0", "--warmup", "1", "--steps", "2",
         "--image-size", "32", "--no-progress", "--no-eval", "--seed", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A MERU and an EuCLIP run, each trained for two steps with ``euclip train``."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for preset in ("meru", "euclip"):
        assert main(["train", "--preset", preset, "--output", str(root / preset), *TRAIN]) == 0
        out[preset] = root / preset
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A TSV of 12 coloured-noise PNG images with captions."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    rows = ["filepath\tcaption"]
    for i in range(12):
        name = list(colours)[i % 3]
        pixels = np.clip(np.array(colours[name]) + rng.normal(0, 25, (36, 36, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append(f"{i}.png\ta {name} square number {i}")
    (root / "pairs.tsv").write_text("\n".join(rows) + "\n")
    (root / "captions.txt").write_text("\n".join(f"a {c} square" for c in colours) + "\na shape\n")
    return root


def run_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
    assert err.startswith("euclip: error: ") and message in err, err


@pytest.mark.parametrize("preset", ["meru", "euclip"])
def test_build_and_search_images(runs, pairs, tmp_path, capsys, preset):
    run = runs[preset]
    out = tmp_path / "index"
    assert main(["index", "build", str(run), "--data", str(pairs / "pairs.tsv"), "--output", str(out),
                 "--batch-size", "5", "--no-progress"]) == 0
    assert "indexed 12 image embeddings" in capsys.readouterr().out
    manifest = run_json(capsys, ["index", "info", str(out)])
    model = load_model(str(run))
    assert (manifest["geometry"], manifest["logit"], manifest["count"]) == (model.geometry, model.logit, 12)
    assert manifest["model"]["path"] == str(run.resolve()) and manifest["data"]["data_type"] == "csv"

    result = run_json(capsys, ["index", "search", str(out), "--text", "a red square", "--image",
                               str(pairs / "4.png"), "-k", "5", "--json"])
    # Independently: the evaluation embedding of the same CSV and the queries, ranked by brute force.
    images = embed(model, DataSpec("csv", str(pairs / "pairs.tsv"), num_samples=None), progress=False).image
    text_query = embed_texts(model, ["a red square"])[0]
    logits = geom.pairwise_logits(torch.cat([text_query, images[4:5]]).double(), images.double(), model.geometry,
                                  model.logit, float(torch.as_tensor(model.curvature).detach()))
    top = logits.topk(5, dim=1)
    for q, entry in enumerate(result["queries"]):
        assert [h["id"] for h in entry["results"]] == [f"{i}.png" for i in top.indices[q].tolist()]
        # atol: an image's float32 distance to itself resolves to ~1e-3, not 0 (FORMULAS.md: float32 geometry).
        np.testing.assert_allclose([h["score"] for h in entry["results"]], top.values[q].numpy(), rtol=1e-4,
                                   atol=2e-3)
    assert result["queries"][1]["results"][0]["id"] == "4.png"  # an indexed image finds itself first
    assert [e["modality"] for e in result["queries"]] == ["text", "image"]

    # The table form names the query and prints k rows.
    capsys.readouterr()
    assert main(["index", "search", str(out), "--text", "a red square", "-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("text query: a red square") and len(table) == 2 + 3
    assert table[2].split()[-1] == result["queries"][0]["results"][0]["id"]


def test_captions_index_with_entailment_filter(runs, pairs, tmp_path, capsys):
    out = tmp_path / "captions"
    assert main(["index", "build", str(runs["meru"]), "--data", str(pairs / "captions.txt"), "--output", str(out),
                 "--factory", "HNSW8", "--no-progress"]) == 0
    manifest = run_json(capsys, ["index", "info", str(out)])
    assert manifest["modality"] == "text" and manifest["metric"] == "l2" and manifest["min_radius"] == 0.1
    plain = run_json(capsys, ["index", "search", str(out), "--image", str(pairs / "0.png"), "-k", "4", "--json"])
    assert len(plain["queries"][0]["results"]) == 4
    coned = run_json(capsys, ["index", "search", str(out), "--image", str(pairs / "0.png"), "-k", "4", "--json",
                              "--cone", "result", "--min-radius", "0.5"])
    # The filter keeps a subsequence of the unfiltered order (all 4 captions are fetched with overfetch 10).
    kept = [h["id"] for h in coned["queries"][0]["results"]]
    assert coned["cone"] == "result" and kept == [h["id"] for h in plain["queries"][0]["results"] if h["id"] in kept]


def test_refuses_another_model_and_bad_input(runs, pairs, tmp_path, capsys):
    out = tmp_path / "meru-index"
    build = ["index", "build", str(runs["meru"]), "--data", str(pairs / "captions.txt"), "--output", str(out),
             "--no-progress"]
    assert main(build) == 0
    fails(capsys, ["index", "search", str(out), "--text", "a shape", "--run", str(runs["euclip"])],
          "holds hyperbolic/distance embeddings, but the model is euclidean/squared")
    fails(capsys, build, "already holds an index; pass --force")
    assert main([*build, "--force"]) == 0
    fails(capsys, ["index", "search", str(out)], "give at least one query")
    fails(capsys, ["index", "search", str(out), "--image", str(pairs / "missing.png")], "no such file")
    fails(capsys, ["index", "search", str(tmp_path / "nowhere"), "--text", "x"], "no index folder")
    (tmp_path / "empty.txt").write_text("\n")
    fails(capsys, ["index", "build", str(runs["meru"]), "--data", str(tmp_path / "empty.txt"), "--output",
                   str(tmp_path / "e"), "--no-progress"], "an empty data set")
    fails(capsys, [*build, "--force", "--factory", "IVF,Nope"], "bad index factory string 'IVF,Nope'")
    fails(capsys, ["index", "search", str(out), "--text", "x", "--cone", "query", "--run", str(runs["meru"]),
                   "--min-radius", "-1"], "min_radius must be positive")
    # A moved run: the manifest's model path is gone, --run names it again.
    moved = tmp_path / "moved-run"
    shutil.copytree(runs["meru"], moved)
    assert main(["index", "build", str(moved), "--data", str(pairs / "captions.txt"), "--output",
                 str(tmp_path / "m"), "--no-progress"]) == 0
    shutil.rmtree(moved)
    fails(capsys, ["index", "search", str(tmp_path / "m"), "--text", "x"], "does not exist (moved?): pass --run")
    assert main(["index", "search", str(tmp_path / "m"), "--text", "x", "--run", str(runs["meru"])]) == 0
