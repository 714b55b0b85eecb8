"""The sweep's grid: which cells exist, their names, their settings, and what is refused before any training."""

from __future__ import annotations

import pytest
import torch

from euclip.cli import main
from euclip.model import GeometricCLIP
from euclip.study.grid import GRIDS, RECIPE, Cell, Grid, parse_set
from euclip.train.config import resolve_config


def test_the_paper_grid_has_every_valid_cell():
    cells = Grid(seeds=(0,)).cells()
    assert len(cells) == 30  # elliptic 3 logits × 2 LN; euclidean, hyperbolic 3 × 2 × entailment 0 / 0.2
    assert not any(c.geometry == "elliptic" and c.entailment > 0 for c in cells)
    assert len({c.name for c in Grid(seeds=(0, 1)).cells()}) == 60
    headline = Grid(seeds=(0, 1, 2), **GRIDS["headline"]).cells()
    assert sorted({(c.geometry, c.logit, c.final_ln, c.entailment) for c in headline}) == [
        ("elliptic", "inner", True, 0.0), ("euclidean", "squared", False, 0.0), ("hyperbolic", "distance", True, 0.2)]
    assert len(headline) == 9


def test_cells_differ_only_in_what_the_paper_varies():
    clip, euclip, meru = (Cell(*s, seed=3) for s in (("elliptic", "inner", True, 0.0),
                                                       ("euclidean", "squared", False, 0.0),
                                                       ("hyperbolic", "distance", True, 0.2)))
    configs = [resolve_config({**c.train_options(RECIPE, {"lr": 0.002}), "output": "x"}) for c in (clip, euclip, meru)]
    varied = {"model", "entailment_weight"}
    for field in vars(configs[0]):
        if field not in varied:
            assert len({repr(getattr(c, field)) for c in configs}) == 1, field
    # The paper's initial logit scale per logit type: ln(1/0.07) for inner/distance, 0 for squared.
    assert [round(c.model.init_logit_scale, 3) for c in configs] == [2.659, 0.0, 2.659]
    assert resolve_config(Cell("euclidean", "squared", False, 0.2, 0).train_options(RECIPE, {})).model.init_logit_scale \
        == -1.0
    assert configs[0].lr == 0.002 and configs[0].seed == 3


def test_paired_seeds_give_the_same_initial_towers():
    a = GeometricCLIP(resolve_config(Cell("euclidean", "squared", True, 0.0, 5).train_options(RECIPE, {})).model)
    torch.manual_seed(5)
    b = GeometricCLIP(resolve_config(Cell("hyperbolic", "distance", True, 0.2, 5).train_options(RECIPE, {})).model)
    # The trainer seeds before building the model (euclip.train.setup.build_model): same seed, same towers.
    torch.manual_seed(5)
    a = GeometricCLIP(a.config)
    sa, sb = a.towers.state_dict(), b.towers.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("flags,message", [
    (["--geometries", "spherical"], "unknown geometry 'spherical'; valid geometries: euclidean, elliptic, hyperbolic"),
    (["--logits", "cosine"], "unknown logit 'cosine'; valid logits: inner, distance, squared"),
    (["--geometries", "elliptic", "--entailment", "0.2"], "entailment 0.2 requested on the elliptic geometry"),
    (["--geometries", "euclidean,elliptic", "--entailment", "0.2"], "requested on the elliptic geometry"),
    (["--final-ln", "maybe"], "expected on,off, got 'maybe'"),
    (["--set", "geometry=elliptic"], "the sweep varies geometry itself"),
    (["--set", "learning_rate=1"], "--set learning_rate: unknown train flag"),
    (["--set", "lr"], "expected FLAG=VALUE"),
    (["--set", "lr=fast"], "--set lr=fast: not a valid float"),
    (["--entailment", "-1"], "--entailment values must be >= 0"),
    (["--jobs", "0"], "expected auto or a positive number of cells at a time, got '0'"),
    (["--grid", "headline", "--logits", "inner", "--geometries", "euclidean"], "the grid has no valid cell"),
])
def test_bad_grids_fail_before_any_training(tmp_path, capsys, flags, message):
    try:
        code = main(["sweep", "--output", str(tmp_path / "s"), "--quick", *flags])
    except SystemExit as exit_:  # argparse's own type errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_parse_set_types():
    assert parse_set(["lr=0.002", "multi_positive=off", "synthetic_caption_levels=0,0,1,0,0", "--wd=0"]) == {
        "lr": 0.002, "multi_positive": False, "synthetic_caption_levels": (0.0, 0.0, 1.0, 0.0, 0.0), "wd": 0.0}
