"""The layout of a run directory, in one place: every reader and writer of run files goes through :class:`RunDir`.

A run directory (``euclip train --output RUN``) holds::

    RUN/config.json            the resolved TrainConfig
    RUN/command.txt            the command line that started the run
    RUN/version.txt            euclip and torch versions
    RUN/checkpoints/           step_XXXXXXXX.pt files and latest.pt (the newest), written atomically
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
from pathlib import Path

__all__ = ["RunDir", "checkpoint_path", "read_json", "write_json"]


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
        return self.latest.is_file()

    def final_min_radius(self, default: float = 0.1) -> float:
        """The entailment cones' ``K`` the run ended training with (``min_radius_final`` if scheduled)."""
        config = self.read_config()
        return float(config.get("min_radius_final") or config.get("min_radius") or default)


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file a model path names: a run directory's latest checkpoint, or the file itself."""
    p = Path(path)
    checkpoint = RunDir(p).latest if p.is_dir() else p
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}" + (" (is this a run directory?)" if p.is_dir() else ""))
    return checkpoint


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
