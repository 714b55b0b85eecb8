"""benchmarks/gpu_check.sh keeps working: its CPU fallback trains for real through the same code path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def _rows(stdout: str) -> dict[str, list[str]]:
    """The Markdown table's rows, by run name: ``| meru | contrastive | 2 | 16 | ... |``."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 4 and cells[0] not in ("run",) and not cells[0].startswith("---"):
            rows[cells[0]] = cells
    return rows


def test_cpu_fallback_runs(th):
    # PYTHON: this interpreter (a worktree has no .venv of its own).
    env = {**os.environ, **th.same_threads(), "PYTHON": sys.executable, "DEVICE": "cpu", "STEPS": "2", "MODEL": "tiny", "PRESETS": "meru",
           "LOSS_BATCH": "256", "LOSS_ROWS": "contrastive: MERU,sigmoid: MERU"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], env=env, cwd=th.REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("gpu_check OK")
    rows = _rows(proc.stdout)
    assert rows["meru"][1:4] == ["contrastive", "2", "16"]  # loss, steps, global batch
    assert float(rows["meru"][5]) > 0  # steady samples/s
    assert rows["meru/sigmoid"][1:4] == ["sigmoid", "2", "16"]
    # The loss benchmark's table: the OpenCLIP baselines and the two rows asked for, each with its ratios.
    for label in ("OpenCLIP ClipLoss (baseline)", "contrastive: MERU: hyperbolic + distance + entailment 0.2",
                  "OpenCLIP SigLipLoss (baseline)", "sigmoid: MERU: hyperbolic + distance + entailment 0.2"):
        assert label in rows and float(rows[label][2]) > 0, label  # "B=256 time ×"
