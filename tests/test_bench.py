"""`euclip bench sweep`: real training processes, one cell on every core against single-threaded cells at once."""

from __future__ import annotations

import pytest

from euclip import bench

pytestmark = pytest.mark.slow


def test_sweep_benchmark_trains_the_cells_and_prints_ratios_against_one_cell(capsys, monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    bench.main(["sweep", "--steps", "2", "--batch-size", "16", "--jobs", "2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    header, one, two = lines
    assert header.startswith("| cells at a time | threads each")
    assert one.startswith("| 1 | 2 |") and "| 1.00× |" in one  # the baseline
    cells, threads, per_cell, total = (float(x) for x in two.strip("|").split("|")[:4])
    assert (cells, threads) == (2, 1) and per_cell > 0 and total == pytest.approx(2 * per_cell, abs=1)
