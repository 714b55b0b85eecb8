"""Checkpoints written atomically: an interrupted write never replaces the last good checkpoint."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from euclip.runs import RunDir


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename over ``path``.

    ``os.replace`` is atomic on POSIX: a reader sees the old file or the new one, never a torn one.
    If serialising or writing fails, the temporary file is removed and ``path`` is untouched; a
    process killed mid-write leaves its temporary file behind (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _atomic_link(source: Path, path: Path) -> None:
    """Make ``path`` an atomic copy of ``source``: a hard link (free) where the file system allows, else a copy."""
    tmp = _tmp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FUSE file systems)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed mid-write; returns what it deleted.

    Call only while no other process writes into ``checkpoint_dir`` (the trainer does, at start-up).
    """
    stale = sorted(Path(checkpoint_dir).glob(".*.tmp-*")) if Path(checkpoint_dir).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
    """Write ``step_XXXXXXXX.pt`` and ``latest.pt`` atomically; keep the newest ``keep`` step files.

    ``latest.pt`` is a hard link to (or a copy of) the step file, so the state is serialised once.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / RunDir.step_file_name(step)
    atomic_save(state, path)
    _atomic_link(path, checkpoint_dir / RunDir.LATEST)
    for old in sorted(checkpoint_dir.glob("step_*.pt"))[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return path


def find_checkpoint(resume: str, output: str | Path) -> Path:
    """Resolve ``--resume``: ``latest`` (in the run directory), a run directory, or a checkpoint file."""
    candidates = []
    if resume == "latest":
        candidates.append(RunDir(output).latest)
    else:
        p = Path(resume)
        candidates += [RunDir(p).latest, p] if p.is_dir() else [p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"--resume {resume}: no checkpoint found (looked for {', '.join(map(str, candidates))})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) that euclip wrote itself.
    return torch.load(path, map_location=map_location, weights_only=False)
