"""Checkpoints written atomically: an interrupted write never replaces the last good checkpoint."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

LATEST = "latest.pt"


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename over ``path``.

    ``os.replace`` is atomic on POSIX: a reader sees the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ``step_XXXXXXXX.pt`` and ``latest.pt`` atomically; keep the newest ``keep`` step files."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / f"step_{step:08d}.pt"
    atomic_save(state, path)
    atomic_save(state, checkpoint_dir / LATEST)
    for old in sorted(checkpoint_dir.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def find_checkpoint(resume: str, output: str | Path) -> Path:
    """Resolve ``--resume``: ``latest`` (in the run directory), a run directory, or a checkpoint file."""
    candidates = []
    if resume == "latest":
        candidates.append(Path(output) / "checkpoints" / LATEST)
    else:
        p = Path(resume)
        candidates += [p / "checkpoints" / LATEST, p] if p.is_dir() else [p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"--resume {resume}: no checkpoint found (looked for {', '.join(map(str, candidates))})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) that euclip wrote itself.
    return torch.load(path, map_location=map_location, weights_only=False)
