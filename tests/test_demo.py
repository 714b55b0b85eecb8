"""`euclip demo` end to end (a few steps per model): table, figure and report are written."""

import json

import pytest

from euclip.cli import main

pytestmark = pytest.mark.slow


def test_demo_writes_table_figure_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--steps", "3", "--output", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["preset"] for r in rows] == ["clip", "euclip", "meru"]
    assert [(r["geometry"], r["logit"], r["final_ln"]) for r in rows] == [
        ("elliptic", "inner", True), ("euclidean", "squared", False), ("hyperbolic", "distance", True)]
    for r in rows:
        assert r["steps"] == 3 and 0 <= r["zeroshot.top1"] <= 1 and 0 <= r["zeroshot.color_top1"] <= 1
        evaluations = json.loads((out / r["preset"] / "results.json").read_text())["evaluations"]
        assert {"zeroshot", "retrieval", "hierarchy", "geometry", "traversal"} <= set(evaluations)
    table = (out / "results.md").read_text()
    assert table.count("\n") == 5 and "| euclip | euclidean | squared | no |" in table
    assert (out / "report" / "norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table" in (out / "report" / "index.html").read_text()
    assert "results.md" in capsys.readouterr().out
    # Running the demo again replaces its runs (their folders are not refused as used ones).
    assert main(["demo", "--quick", "--steps", "2", "--presets", "euclip", "--output", str(out), "--no-progress"]) == 0
    assert json.loads((out / "euclip" / "summary.json").read_text())["steps"] == 2
