"""A run folder belongs to one run: a new run into a used folder is refused (unless ``--overwrite``), and the trainer
using a folder holds a lock on it, so that a second trainer fails at once instead of mixing its files in."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
from pathlib import Path

from euclip.runs import RunDir
from euclip.train.config import TrainConfig

log = logging.getLogger("euclip.train")


class RunFolderLock:
    """An exclusive ``flock`` on ``RUN/.lock``, which names its holder (pid and host).

    The lock ends with the holder's process, however it ends (SIGKILL included): nothing stale to clean up. The
    file itself stays (deleting it would let a waiting process lock a file no one else sees).
    """

    def __init__(self, run: RunDir):
        self.run = run
        self._file = None
        self.unsupported = False  # the file system cannot lock

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock, or raise a ValueError naming the folder and the process that holds it."""
        f = open(self.run.lock, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            pid, _, host = holder.partition(" ")
            raise ValueError(f"{self.run.path} is in use by another trainer (pid {pid}{' on ' + host if host else ''}; "
                             f"lock {self.run.lock}): wait for it to end, or choose another --output") from None
        except OSError as e:  # a file system without locks (some network mounts): go on, unprotected
            log.warning("cannot lock %s (%s): a second trainer in this folder would not be stopped", self.run.lock, e)
            f.close()
            self.unsupported = True
            return
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the last descriptor releases the flock
            self._file = None


class RunFolder:
    """The claim of one run on ``cfg.output`` (the main process's job), in two steps around building the run.

    A run without ``--resume`` may not start in a folder that holds a run's files: it would append to its metrics,
    replace its latest checkpoint, and its retention would delete its own step files while keeping the old run's.
    ``--overwrite`` deletes the old run's files first. A folder in use is reported as such (and not cleared), even
    with ``--overwrite``.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.run = cfg, RunDir(cfg.output)
        self.lock = RunFolderLock(self.run)

    def check(self) -> None:
        """Before any work: lock an existing folder, refuse one that holds a run (nothing is created or deleted).

        Raises:
            ValueError: the folder is in use by another trainer, or holds a run and neither ``--resume`` nor
                ``--overwrite`` was given.
        """
        if self.run.path.is_dir():
            self.lock.acquire()
        used = self._used()
        if used and not self.cfg.overwrite:
            self.release()
            raise ValueError(f"{self.run.path} already holds a run ({', '.join(p.name for p in used)}): continue it "
                             f"with --resume latest, replace it with --overwrite (deleting its files), or choose "
                             f"another --output")

    def take(self) -> None:
        """Once the run is built (bad data cannot stop it any more): clear an ``--overwrite``'s old run, create and
        lock the folder. Raises a ValueError if another trainer took it meanwhile."""
        if used := self._used():
            _delete(used)
            log.warning("--overwrite: deleted the previous run's %s in %s", ", ".join(p.name for p in used),
                        self.run.path)
        if not (self.lock.held or self.lock.unsupported):
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()

    def _used(self) -> list[Path]:
        return self.run.run_files() if not self.cfg.resume else []

    def release(self) -> None:
        self.lock.release()


def _delete(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
