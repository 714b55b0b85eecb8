"""Helpers for the trainer's scale-out tests: small datasets, run options, killed subprocess runs, comparisons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from euclip.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]

# The smallest real runs: the tiny model at 32 px, deterministic, no DataLoader workers, a metrics line per step.
BASE_OPTIONS = dict(model="tiny", image_size=32, workers=0, warmup=2, log_every_steps=1, progress=False,
                    deterministic=True, seed=0, zeroshot_samples=32)


def base_args(**overrides) -> list[str]:
    """``euclip train`` flags for :data:`BASE_OPTIONS` plus ``overrides`` (``None`` values are dropped)."""
    options = {**BASE_OPTIONS, **overrides}
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":
            args += [] if value else ["--no-progress"]
        elif value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return args


def write_csv_dataset(root: Path, n: int, bad: set[int] = frozenset(), size: int = 36) -> Path:
    """A TSV of ``n`` coloured-noise images (JPEG and PNG); rows in ``bad`` point at missing files."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["filepath\tcaption"]
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
    for i in range(n):
        name = list(colors)[i % 4]
        if i in bad:
            rows.append(f"img/missing-{i}.png\ta missing {name} image")
            continue
        pixels = np.clip(np.array(colors[name]) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        fmt = "png" if i % 2 else "jpg"
        Image.fromarray(pixels).save(root / "img" / f"{i}.{fmt}")
        rows.append(f"img/{i}.{fmt}\ta {name} square number {i}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def model_state(run: Path, name: str = "latest.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a.values(), b.values()))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in metrics(run)]


# Runs `euclip train` in a fresh interpreter that SIGKILLs itself at a chosen point: a real kill, at a
# reproducible moment. KILL_AT="step:N" dies inside the N-th training step (after the checkpoints before it);
# KILL_AT="save:N" dies in the middle of writing the N-th checkpoint file (after some bytes are on disk).
_KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import euclip.train.checkpoint as checkpoint
    import euclip.train.loop as loop
    from euclip.cli import main

    kind, n = os.environ["KILL_AT"].split(":")
    calls = [0]

    def die_at_nth():
        calls[0] += 1
        if calls[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "step":
        original_step = loop.train_step

        def step(*args, **kwargs):
            die_at_nth()
            return original_step(*args, **kwargs)

        loop.train_step = step
    else:
        original_save = checkpoint.torch.save

        class Save:  # only the trainer's torch.save calls go through checkpoint.torch
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def save(obj, f, *args, **kwargs):
                if calls[0] + 1 == int(n):
                    f.write(b"PK partial checkpoint bytes")
                    f.flush()
                die_at_nth()
                return original_save(obj, f, *args, **kwargs)

        checkpoint.torch = Save()
    sys.exit(main(sys.argv[1:]))
""")


def same_threads() -> dict[str, str]:
    """Environment for a subprocess to use this process's thread count: reduction orders, hence the last
    bits of the results, depend on it, and resumed runs are compared bit for bit."""
    return {"OMP_NUM_THREADS": str(torch.get_num_threads())}


def run_killed(args: list[str], kill_at: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``euclip train ARGS`` in a subprocess that SIGKILLs itself at ``kill_at``; asserts it was killed."""
    env = {**os.environ, "KILL_AT": kill_at, **same_threads()}
    proc = subprocess.run([sys.executable, "-c", _KILLER, "train", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


# `euclip train` in a fresh interpreter whose steps each take at least SLOW_STEP seconds (a sleep after the step,
# which changes no number): long enough for a test to signal it mid-run. Signals are real and reach whatever the
# test sends them to (its process group included: start_train starts it in a session of its own).
_SLOW = textwrap.dedent("""
    import os, sys, time
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import euclip.train.loop as loop
    from euclip.cli import main

    original_step, pause = loop.train_step, float(os.environ["SLOW_STEP"])

    def step(*args, **kwargs):
        result = original_step(*args, **kwargs)
        time.sleep(pause)
        return result

    loop.train_step = step
    sys.exit(main(sys.argv[1:]))
""")


def start_train(args: list[str], slow_step: float = 0.0) -> subprocess.Popen:
    """Start ``euclip train ARGS`` in its own session (so that ``os.killpg(proc.pid, ...)`` signals the trainer and
    its DataLoader workers, as a scheduler does); stdout and stderr are pipes."""
    env = {**os.environ, "SLOW_STEP": str(slow_step), **same_threads()}
    return subprocess.Popen([sys.executable, "-c", _SLOW, "train", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_steps(proc: subprocess.Popen, run: Path, n: int, timeout: float = 300) -> None:
    """Wait until ``run``'s metrics.jsonl has ``n`` lines (the trainer still running)."""
    import time

    path, deadline = run / "metrics.jsonl", time.monotonic() + timeout
    while not (path.is_file() and len(path.read_text().splitlines()) >= n):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the trainer ended (or hung) before step {n}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.02)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``euclip ARGS`` in this process: its exit code (also when it raises SystemExit) and what it wrote to stderr."""
    from euclip.cli import main

    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def th() -> SimpleNamespace:
    """The helpers above (test modules cannot import a conftest under ``--import-mode=importlib``)."""
    return SimpleNamespace(REPO=REPO, BASE_OPTIONS=BASE_OPTIONS, base_args=base_args,
                           write_csv_dataset=write_csv_dataset, model_state=model_state, max_abs_diff=max_abs_diff,
                           metrics=metrics, losses=losses, run_killed=run_killed,
                           same_threads=same_threads, start_train=start_train, wait_for_steps=wait_for_steps,
                           run_cli=run_cli)
