"""Checkpoints written atomically: an interrupted write never replaces the last good checkpoint."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from euclip.runs import CheckpointError, RunDir, load_checkpoint_file

log = logging.getLogger("euclip.train")


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


def _point_latest(target: Path) -> Path:
    """Make ``latest.pt`` beside ``target`` name it, atomically: a relative symlink (no second copy of a checkpoint
    that may be GBs; still valid in a copied run folder), or a copy where the file system has no symlinks.

    Not a hard link: a link is the same file, so a damaged latest.pt would leave no separate way to the step it
    names; a symlink that cannot be read is recognisably a pointer, and resuming falls back to the step files.
    """
    latest = target.parent / RunDir.LATEST
    tmp = _tmp_path(latest)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.symlink(target.name, tmp)
        except OSError:  # no symlinks here (some network and FUSE file systems)
            shutil.copyfile(target, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, latest)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(latest.parent)
    return latest


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
    """Write ``step_XXXXXXXX.pt`` atomically, point ``latest.pt`` at it; keep the newest ``keep`` step files.

    ``latest.pt`` is a symlink to (or a copy of) the step file, so the state is serialised once.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / RunDir.step_file_name(step)
    atomic_save(state, path)
    _point_latest(path)
    for old in sorted(checkpoint_dir.glob("step_*.pt"))[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return path


def resume_checkpoint(resume: str, output: str | Path, mmap: bool = False) -> tuple[Path, dict]:
    """Resolve and load ``--resume``: ``latest`` (in the run directory ``output``), a run directory, or a file.

    In a run directory, a ``latest.pt`` that cannot be read gives way to the newest step file that can, with a
    warning: a requeued job should continue, from a step it will redo, rather than fail. A named file that cannot
    be read is an error naming it. ``mmap``: map the tensors instead of reading them (to read the config alone).

    Raises:
        FileNotFoundError: no checkpoint where ``resume`` says.
        CheckpointError: none of the candidates can be read (each is named).
    """
    p = Path(resume)
    if resume != "latest" and not p.is_dir():
        if not p.is_file():
            raise FileNotFoundError(f"--resume {resume}: no checkpoint found (looked for {p})")
        return p, load_checkpoint(p, mmap=mmap)
    run = RunDir(output if resume == "latest" else p)
    candidates = ([run.latest] if run.latest.is_file() else []) + run.step_checkpoints()
    if not candidates:
        raise FileNotFoundError(f"--resume {resume}: no checkpoint found (looked for {run.latest} and "
                                f"{run.checkpoints / 'step_*.pt'})")
    errors, tried = [], set()
    for candidate in candidates:
        if candidate.resolve() in tried:  # latest.pt's own step file: it failed already
            continue
        tried.add(candidate.resolve())
        try:
            checkpoint = load_checkpoint(candidate, mmap=mmap)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors and not mmap:  # the mapped read only peeks at the config; the full read warns
            log.warning("%s; resuming from %s (step %s), the newest intact checkpoint", "; ".join(errors),
                        candidate, checkpoint.get("step"))
        return candidate, checkpoint
    raise CheckpointError(f"--resume {resume}: no intact checkpoint in {run.checkpoints}: " + "; ".join(errors))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """A euclip checkpoint, or a :class:`~euclip.runs.CheckpointError` naming a file that cannot be read."""
    return load_checkpoint_file(path, map_location=map_location, mmap=mmap)
