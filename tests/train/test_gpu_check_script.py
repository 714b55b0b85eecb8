"""benchmarks/gpu_check.sh keeps working: its CPU fallback trains for real through the same code path."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def test_cpu_fallback_runs(th):
    env = {**os.environ, **th.same_threads(), "DEVICE": "cpu", "STEPS": "2", "MODEL": "tiny", "PRESETS": "meru"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], env=env, cwd=th.REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("gpu_check OK")
    row = next(line for line in lines if line.startswith("meru "))
    assert row.split()[1:3] == ["2", "16"]  # steps, global batch
