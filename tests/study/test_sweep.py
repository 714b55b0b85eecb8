"""`euclip sweep` end to end: a tiny sweep, a SIGKILL mid-cell and the rerun that finishes it, submitit's executor."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from euclip.cli import main
from euclip.study.grid import HEADLINE, QUICK_RECIPE, Grid
from euclip.study import sweep as sweep_module
from euclip.study.sweep import Sweep

pytestmark = pytest.mark.slow

TWO_CELLS = ["--geometries", "euclidean", "--logits", "squared,distance", "--final-ln", "off", "--entailment", "0",
             "--seeds", "0", "--quick", "--set", "steps=12", "--set", "save_every_steps=3", "--no-progress",
             "--jobs", "1"]  # one at a time: the SIGKILL test needs the first cell finished, the second running
TIMING = {"train_seconds", "samples_per_s"}


def table(root: Path) -> list[dict]:
    with open(root / "results.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def snapshot(run: Path) -> dict[str, tuple[float, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference") / "sweep"
    assert main(["sweep", *TWO_CELLS, "--output", str(root)]) == 0
    return root


def test_a_tiny_sweep_writes_runs_results_claims_and_a_page(reference):
    rows = table(reference)
    assert [r["name"] for r in rows] == ["euclidean-squared_noln_ent0_s0", "euclidean-distance_noln_ent0_s0"]
    assert all(r["status"] == "done" and r["steps"] == "12" for r in rows)
    assert 0 <= float(rows[0]["zeroshot.top1"]) <= 1 and "retrieval.image_to_text_R@1" in rows[0]
    assert "hierarchy.tie" in rows[0] and "geometry.separation_auc" in rows[0] and "traversal.on_path" in rows[0]
    aggregate = json.loads((reference / "aggregate.json").read_text())
    assert len(aggregate) == 2 and aggregate[0]["zeroshot.top1.n"] == 1
    claims = {c["id"]: c for c in json.loads((reference / "claims.json").read_text())}
    assert claims["C3"]["metrics"][0]["pairs"] == 1 and claims["C3"]["verdict"] == "inconclusive"  # one seed
    page = (reference / "report" / "index.html").read_text()
    assert "C1" in page and "grid_zeroshot_top1.png" in page
    # Each cell is an ordinary run directory, started by an ordinary command: every euclip command reads it.
    command = (reference / rows[0]["name"] / "command.txt").read_text()
    assert command.startswith("euclip train --no-eval --output ") and "--geometry euclidean --logit squared" in command
    assert main(["eval", "zeroshot", str(reference / rows[0]["name"]), "--num-samples", "8", "--no-progress"]) == 0


def test_the_results_page_gives_the_command_times_grid_and_verdicts(reference, tmp_path):
    wall = json.loads((reference / "wall_time.json").read_text())
    assert wall["jobs"] == [1] and wall["seconds"] > 0
    page = tmp_path / "results.md"
    assert main(["claims", str(reference), "--markdown", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Results of `euclip sweep --geometries euclidean")
    assert "seeds [0]" in text and "min of cell time" in text and "min on the clock (1 cell(s) at a time)" in text
    assert "| euclidean | squared | no | 0 |" in text and "| euclidean | distance | no | 0 |" in text
    assert "| C3 | negative squared distance" in text and "**inconclusive**" in text  # one seed: no verdict


def test_sigkill_mid_cell_then_rerun_resumes_and_equals_the_uninterrupted_sweep(reference, tmp_path):
    root = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "euclip.cli", "sweep", *TWO_CELLS, "--output", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = root / "euclidean-distance_noln_ent0_s0"
    deadline = time.time() + 600
    while not (second / "checkpoints" / "step_00000003.pt").is_file():  # the second cell is a quarter done
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the cell's process dies with the sweep: nothing writes any more
    first = root / "euclidean-squared_noln_ent0_s0"
    before = snapshot(first)
    checkpoints_then = snapshot(second / "checkpoints")
    time.sleep(1.0)
    assert snapshot(second / "checkpoints") == checkpoints_then and not (second / "summary.json").exists()

    assert main(["sweep", *TWO_CELLS, "--output", str(root)]) == 0
    assert snapshot(first) == before  # the finished cell is untouched
    assert "resuming from" in (second / "sweep.log").read_text()
    assert table(root) == table(reference)  # the same numbers as a sweep that was never interrupted


def test_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    root = tmp_path / "sweep"
    one = ["--geometries", "euclidean", "--logits", "squared", "--final-ln", "off", "--entailment", "0", "--seeds", "0",
           "--quick", "--no-progress"]
    assert main(["sweep", *one, "--launcher", "submitit-local", "--output", str(root)]) == 0
    assert [r["status"] for r in table(root)] == ["done"]
    assert list((root / "submitit").glob("*_result.pkl"))  # it ran through submitit


def test_a_sweep_folder_of_another_grid_is_refused_unless_extend(tmp_path, capsys):
    root = tmp_path / "sweep"
    Sweep(root, Grid(seeds=(0,)), dict(QUICK_RECIPE)).prepare()
    with pytest.raises(ValueError, match="another grid or recipe .*--extend"):
        Sweep(root, Grid(seeds=(0, 1)), dict(QUICK_RECIPE)).prepare()
    Sweep(root, Grid(seeds=(0, 1)), dict(QUICK_RECIPE)).prepare(extend=True)
    with pytest.raises(ValueError, match="different recipe"):
        Sweep(root, Grid(seeds=(0, 1)), dict(QUICK_RECIPE, lr=0.1)).prepare(extend=True)
    # The folder's tables take the cells of every grid it was extended with; resuming the last command needs no
    # --extend and keeps that history.
    headline = Grid(geometries=("elliptic", "euclidean", "hyperbolic"), seeds=(2,), cells_filter=HEADLINE)
    Sweep(root, headline, dict(QUICK_RECIPE)).prepare(extend=True)
    Sweep(root, headline, dict(QUICK_RECIPE)).prepare()
    loaded = sweep_module.load_sweep(root)
    assert loaded.grid == headline and len(loaded.extends) == 2
    names = [c.name for c in loaded.cells()]
    assert len(names) == len(set(names)) == 30 * 2 + 3 and names[-1] == "hyperbolic-distance_ln_ent0.2_s2"
    assert main(["sweep", "--grid", "headline", "--seeds", "0,1,2", "--output", str(root / "x"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("todo ") == 9 and "9 cells, 9 to run: about" in out and not (root / "x").exists()


@pytest.mark.parametrize("cores,gpus,expected", [(2, 0, 2), (1, 0, 1), (None, 0, 1), (64, 0, 8), (16, 4, 4)])
def test_auto_jobs_is_one_cell_per_gpu_else_per_cpu_core(monkeypatch, cores, gpus, expected):
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(sweep_module, "_gpu_count", lambda: gpus)
    assert sweep_module.auto_jobs() == expected


def test_the_estimate_counts_rounds_of_parallel_cells(tmp_path):
    sweep = Sweep(tmp_path / "s", Grid(geometries=("euclidean",), logits=("squared",), final_ln=(False,),
                                       entailment=(0.0,), seeds=(0, 1, 2)), dict(QUICK_RECIPE))
    cells = sweep.cells()
    per_cell = QUICK_RECIPE["steps"] * QUICK_RECIPE["batch_size"] / sweep_module.DEFAULT_SAMPLES_PER_S + \
        sweep_module.DEFAULT_EVAL_SECONDS
    assert sweep_module.estimate_seconds(sweep, cells, jobs=1)[0] == pytest.approx(3 * per_cell)
    assert sweep_module.estimate_seconds(sweep, cells, jobs=2)[0] == pytest.approx(2 * per_cell)  # 2 rounds
    assert sweep_module.estimate_seconds(sweep, cells, jobs=8)[0] == pytest.approx(per_cell)
