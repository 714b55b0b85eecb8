"""Metrics as JSON lines and TensorBoard events (main process only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from euclip.runs import RunDir


class MetricsLogger:
    """Appends one JSON line per logged step to ``metrics.jsonl`` and the same scalars to TensorBoard.

    Args:
        run_dir: the run directory.
        enabled: False on every process but the main one.
        resume_step: when resuming from a checkpoint of this step, the lines of later steps (logged by
            the interrupted run after its last checkpoint, and about to be logged again) are dropped, and
            TensorBoard purges its events from the step after it.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = RunDir(run_dir).metrics
        if resume_step is not None and path.is_file():
            _truncate_after(path, resume_step)
        self._file = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = {"purge_step": resume_step + 1} if resume_step is not None else {}
            self._writer = SummaryWriter(str(RunDir(run_dir).tensorboard), **purge)
        except ImportError:  # TensorBoard is optional; the JSON lines carry the same numbers
            self._writer = None

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(metrics) + "\n")
        self._file.flush()
        if self._writer is not None:
            step = metrics["step"]
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    # Keys with a section ("val/loss") keep it; the training step's own go under train/.
                    self._writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of ``path`` with ``"step" <= step`` (and any unparsable tail is dropped too)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    tmp.replace(path)
