"""The HTML report: built from run directories, self-contained, and rendered by headless Chromium without network."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from euclip import geometry as geom
from euclip.eval.diagnostics import geometry_diagnostics
from euclip.eval.embed import Embeddings
from euclip.eval.report import load_run, metrics_table, write_report
from euclip.eval.retrieval import retrieval_metrics

GEOMETRIES = {"clip": ("elliptic", "inner"), "euclip": ("euclidean", "squared"), "meru": ("hyperbolic", "distance")}


def fake_embeddings(geometry: str, logit: str, n: int = 60, d: int = 8) -> Embeddings:
    g = torch.Generator().manual_seed(len(geometry))
    directions = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    levels = torch.arange(n) % 5
    image_f = 2.0 * directions + 0.3 * torch.randn(n, d, generator=g)
    text_f = (0.4 + 0.15 * levels[:, None]) * directions
    image, text = geom.project(image_f, geometry), geom.project(text_f, geometry)
    return Embeddings(image=image, text=text, text_to_image=torch.arange(n), image_tower_norm=image_f.norm(dim=1),
                      text_tower_norm=text_f.norm(dim=1), captions=[f"c{i}" for i in range(n)], geometry=geometry,
                      logit=logit, curvature=1.0, caption_levels=levels)


def make_run(root: Path, preset: str) -> Path:
    """A run directory as the trainer and `euclip eval all` leave it, with made-up numbers."""
    geometry, logit = GEOMETRIES[preset]
    run = root / preset
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": preset, "batch_size": 32, "steps": 30,
                                                 "entailment_weight": 0.2 if preset == "meru" else 0.0,
                                                 "model": {"geometry": geometry, "logit": logit,
                                                           "final_ln": preset != "euclip"}}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 4 - s / 20 + 0.1 * len(preset), "logit_scale": 10 + s / 10,
                    "norm_image": 1 + s / 60, "norm_text": 1 - s / 120}) + "\n" for s in range(10, 40, 10)))
    (run / "summary.json").write_text(json.dumps({"steps": 30, "final_loss": 2.5, "logit_scale": 13.0}))
    emb = fake_embeddings(geometry, logit)
    walk = [{"caption": "a red triangle", "level": 3, "node": "triangle", "on_path": True},
            {"caption": "a circle", "level": 2, "node": "circle", "on_path": False},
            {"caption": "a shape", "level": 0, "node": "shape", "on_path": True}]
    evaluation = {
        "zeroshot": {"top1": 0.5, "top5": 0.75, "tasks": {"heldout_shape": {"top1": 0.25}}},
        "retrieval": retrieval_metrics(emb.image, emb.text, emb.text_to_image, geometry, logit),
        "hierarchy": {"top1": 0.4, "num_samples": 60, "tree": "shapes",
                      "conventions": {"hycoclip": {"top1": 0.4, "tie": 1.9, "lca": 1.5, "jaccard": 0.7,
                                                   "hier_precision": 0.7, "hier_recall": 0.7},
                                      "inclusive": {"top1": 0.4, "tie": 1.9, "lca": 0.9, "jaccard": 0.5,
                                                    "hier_precision": 0.6, "hier_recall": 0.6}}},
        "geometry": geometry_diagnostics(emb, 0.1, view_points=60),
        "traversal": {"on_path": 0.6, "monotone": 0.5, "reaches_root": 0.25, "starts_on_leaf": 0.5,
                      "mean_length": 3.0, "num_walks": 4, "root": "origin",
                      "examples": [{"image": {"shape": "triangle", "color": "red"}, "walk": walk}]},
    }
    (run / "results.json").write_text(json.dumps({"evaluations": evaluation}))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    runs = [make_run(root / "runs", p) for p in GEOMETRIES]
    return write_report(runs, root / "out", title="test <report>")


def img_sources(page: str) -> list[str]:
    return re.findall(r"<img[^>]*\ssrc=['\"]([^'\"]+)['\"]", page)


def test_report_files(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "test &lt;report&gt;" in page  # escaped
    # Self-contained: no scripts, nothing fetched from the network.
    assert "<script" not in page.lower() and not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    sources = img_sources(page)
    assert {"curves.png", "norms.png", "levels_cones.png", "views_meru.png", "views_clip.png"} <= set(sources)
    for name in sources:
        with Image.open(report.parent / name) as im:  # every figure exists and is a valid PNG
            im.verify()
            assert im.format == "PNG"
    data = json.loads((report.parent / "report.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["clip", "euclip", "meru"]
    cone = "images inside their caption's entailment cone"
    assert data["runs"][2]["metrics"]["Geometry"][cone] is not None
    assert data["runs"][0]["metrics"]["Geometry"][cone] is None  # elliptic: no cones
    assert data["runs"][0]["sources"]["retrieval"] == "results.json"


def test_table_values(report, tmp_path):
    run = load_run(report.parent.parent / "runs" / "meru")
    table = metrics_table(run)
    assert table["Run"]["geometry"] == ("hyperbolic", "str")
    zeroshot = table["Zero-shot classification"]
    assert zeroshot["top-1 (shapes on synthetic data)"] == (0.5, "pct")
    assert zeroshot["shape top-1, held-out combinations"] == (0.25, "pct")
    assert table["Hierarchy (top-1 zero-shot predictions)"]["LCA error, inclusive ↓"] == (0.9, "num")
    assert table["Retrieval"]["image→text R@1"][0] == run["evaluations"]["retrieval"]["image_to_text"]["R@1"]
    page = report.read_text()
    assert "50.0 %" in page and "a red triangle" in page and "class='off'" in page


def test_missing_files_leave_blanks(tmp_path):
    (tmp_path / "bare").mkdir()
    page = write_report([tmp_path / "bare"], tmp_path / "out").read_text()
    assert "<table" in page and "–" in page and "<img" not in page
    with pytest.raises(FileNotFoundError):
        write_report([tmp_path / "nope"], tmp_path / "out2")
    with pytest.raises(ValueError):
        write_report([], tmp_path / "out3")


def test_poincare_view_points_inside_disk(report):
    views = json.loads((report.parent.parent / "runs" / "meru" / "results.json").read_text())
    views = views["evaluations"]["geometry"]["views"]
    points = views["poincare"]["image"] + views["poincare"]["text"]
    assert points and max(math.hypot(x, y) for x, y in points) < 1


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to check that the report renders offline, and none is installed: "
                "run `apt-get install -y chromium` (Debian; CI installs it)")


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = find_chromium()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], check=False, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<table class=\"metrics\">" in dom.stdout and "Traversal examples" in dom.stdout
    sources = img_sources(dom.stdout.replace('"', "'"))
    assert len(sources) >= 5
    for name in sources:
        with Image.open(report.parent / name) as im:
            im.verify()
    shot = tmp_path / "shot.png"
    result = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,4000", "--hide-scrollbars", url],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1200)
    assert pixels.std() > 10  # not a blank page
    # The figures' coloured pixels (blue images, orange texts, ...) made it onto the page, not just black text.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 80).mean() > 0.002
