"""The layout of a run directory, in one place: every reader and writer of run files goes through :class:`RunDir`.

A run directory (``euclip train --output RUN``) holds::

    RUN/config.json            the resolved TrainConfig
    RUN/command.txt            the command line that started the run
    RUN/version.txt            euclip and torch versions
    RUN/checkpoints/           step_XXXXXXXX.pt files, written atomically, and latest.pt: a relative symlink to the
                               newest (a copy where the file system has no symlinks)
    RUN/.lock                  held (flock) by the trainer using the folder; names its process
    RUN/metrics.jsonl          one JSON line per logged step
    RUN/tensorboard/           the same scalars as TensorBoard events
    RUN/summary.json           the end-of-training summary
    RUN/results.json           the evaluations of the run (euclip.eval.runner), keyed by evaluation name
    RUN/eval_<name>_<data>.json   a single `euclip eval NAME` result

A model can also be a bare checkpoint file. Its *run directory*, where evaluation results are written, is
the folder that holds ``checkpoints/`` when the file lies in one (``RUN/checkpoints/step_10.pt`` → ``RUN``),
else the file's own folder (``/data/models/m.pt`` → ``/data/models``).
"""

from __future__ import annotations

import json
import pickle
import shlex
import sys
import zipfile
from pathlib import Path

__all__ = ["CheckpointError", "RunDir", "checkpoint_path", "command_line", "load_checkpoint_file",
           "newest_intact_checkpoint", "read_json", "set_command_line", "write_json"]

_COMMAND: list[str] | None = None


def set_command_line(words: list[str] | None) -> None:
    """Remember the command being run (``euclip.cli.main`` does, with its arguments), for ``command.txt`` files:
    a sweep's cells and in-process calls of ``main`` would otherwise record their host process's ``sys.argv``."""
    global _COMMAND
    _COMMAND = None if words is None else list(words)


def command_line() -> str:
    """The command being run, shell-quoted: the one :func:`set_command_line` named, else ``sys.argv``."""
    return shlex.join(_COMMAND if _COMMAND is not None else sys.argv)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, damaged, not a checkpoint); the message names the file."""


class RunDir:
    """Paths of one run directory (nothing is created until a writer asks)."""

    CONFIG = "config.json"
    COMMAND = "command.txt"
    VERSION = "version.txt"
    CHECKPOINTS = "checkpoints"
    LATEST = "latest.pt"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"
    SUMMARY = "summary.json"
    RESULTS = "results.json"
    LOCK = ".lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, path: str | Path) -> "RunDir":
        """The run directory of a run directory or of a checkpoint file (see the module docstring)."""
        p = Path(path)
        if p.is_dir():
            return cls(p)
        return cls(p.parent.parent if p.parent.name == cls.CHECKPOINTS else p.parent)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def command(self) -> Path:
        return self.path / self.COMMAND

    @property
    def version(self) -> Path:
        return self.path / self.VERSION

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / self.LATEST

    @staticmethod
    def step_file_name(step: int) -> str:
        return f"step_{step:08d}.pt"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / self.step_file_name(step)

    def step_checkpoints(self) -> list[Path]:
        """The ``step_*.pt`` files, the newest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(self.checkpoints.glob("step_*.pt"), reverse=True)

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    def eval_file(self, name: str, data_tag: str | None = None) -> Path:
        """Where ``euclip eval NAME`` writes its result for data ``data_tag`` (e.g. ``synthetic_test``)."""
        return self.path / (f"eval_{name}_{data_tag}.json" if data_tag else f"eval_{name}.json")

    def eval_files(self, name: str) -> list[Path]:
        """The ``eval_<name>*.json`` files of the run, the synthetic test split's first (comparable across runs)."""
        files = self.path.glob(f"eval_{name}*.json")
        return sorted(files, key=lambda p: ("synthetic_test" not in p.name, p.name))

    def read_config(self) -> dict:
        """The run's resolved config (``{}`` when the folder has none, e.g. a bare checkpoint's folder)."""
        return read_json(self.config) or {}

    def has_checkpoint(self) -> bool:
        # Step files without a usable latest.pt still count: --resume latest falls back to them.
        return self.latest.is_file() or bool(self.step_checkpoints())

    def run_files(self) -> list[Path]:
        """The files (and folders) of a run that exist here: what a new run would mix with, and --overwrite clears."""
        names = [self.CONFIG, self.COMMAND, self.VERSION, self.CHECKPOINTS, self.METRICS, self.TENSORBOARD,
                 self.SUMMARY, self.RESULTS]
        found = [self.path / n for n in names if (self.path / n).exists()]
        return found + sorted(self.path.glob("eval_*.json")) if self.path.is_dir() else found

    def final_min_radius(self, default: float = 0.1) -> float:
        """The entailment cones' ``K`` the run ended training with (``min_radius_final`` if scheduled)."""
        config = self.read_config()
        return float(config.get("min_radius_final") or config.get("min_radius") or default)


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file a model path names: a run directory's latest checkpoint, or the file itself."""
    p = Path(path)
    checkpoint = RunDir(p).latest if p.is_dir() else p
    if not checkpoint.is_file():
        hint = " (is this a run directory?)" if p.is_dir() else ""
        if p.is_dir() and (steps := RunDir(p).step_checkpoints()):
            hint = f"; the newest step checkpoint is {steps[0]}: name it instead of the run folder"
        raise FileNotFoundError(f"no checkpoint at {checkpoint}{hint}")
    return checkpoint


# What torch.load raises for a file that is not (or no longer) a whole checkpoint.
_DAMAGE = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def load_checkpoint_file(path: str | Path, map_location="cpu", mmap: bool = False) -> object:
    """``torch.load`` of a checkpoint (which holds RNG states and configs: ``weights_only=False``), or a
    :class:`CheckpointError` naming the file. ``mmap``: map the tensors instead of reading them (cheap when only
    the config is wanted, and still fails on a truncated file: its zip directory, at the end, is gone)."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        damaged = isinstance(e, _DAMAGE) or "PytorchStreamReader" in message or "zip" in message.lower()
        hint = "; the file is truncated or damaged (an interrupted write or copy, a full disk?)" if damaged else ""
        name = f"{path} (a link to {path.resolve().name})" if path.is_symlink() else str(path)
        raise CheckpointError(f"cannot read checkpoint {name} ({type(e).__name__}: {message}){hint}") from e


def newest_intact_checkpoint(run: RunDir, exclude: Path | None = None) -> Path | None:
    """The newest ``step_*.pt`` of ``run`` that loads (tensors mapped, not read), other than ``exclude``'s file."""
    skip = exclude.resolve() if exclude is not None and exclude.exists() else None
    for candidate in run.step_checkpoints():
        if skip is not None and candidate.resolve() == skip:
            continue
        try:
            load_checkpoint_file(candidate, mmap=True)
        except CheckpointError:
            continue
        return candidate
    return None


def read_json(path: str | Path) -> dict | list | None:
    """The JSON content of ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(data: dict | list, path: str | Path) -> Path:
    """Write ``data`` as indented JSON (NaN allowed: undefined correlations are NaN), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=True, default=str) + "\n")
    return path
