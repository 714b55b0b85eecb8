"""The signals that ask a run to stop, and who handles them.

Schedulers and terminals signal a whole process group: SLURM's preemption and ``scancel`` (SIGTERM, then SIGKILL
after ``KillWait``), ``timeout`` (SIGTERM), SLURM's ``--signal=USR1@SECONDS`` warning before a time limit, and
Ctrl-C (SIGINT). DataLoader workers are in that group. If they died of the signal, the main process could only
crash (PyTorch raises "DataLoader worker ... is killed by signal" wherever the main process happens to be, e.g.
inside backward). So the workers ignore these signals from anyone but their parent (:func:`ignore_stop_signals`,
their ``worker_init_fn``; the trainer starts them in :func:`stop_signals_blocked`) and only the main process acts
on them: it checkpoints the last finished step, exits with :func:`exit_code`, and its DataLoader shuts the
workers down on the way out.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STOP_SIGNALS", "exit_code", "ignore_stop_signals", "stop_signals_blocked"]

# SIGHUP and the like are left at their default (they end the process): no scheduler uses them to preempt.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum`` (SIGTERM: 143, SIGINT: 130, SIGUSR1: 138)."""
    return 128 + int(signum)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block :data:`STOP_SIGNALS` in this thread meanwhile (those that arrive are delivered at the end).

    Start DataLoader workers inside it: a forked worker inherits the mask from its first instruction, so none of
    its threads, not even those started before its ``worker_init_fn`` runs, can be the one that receives a signal
    sent to the process group (the kernel hands a process's signal to any thread that does not block it).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores :data:`STOP_SIGNALS` unless its parent sends them.

    Not a plain ``SIG_IGN``: the parent itself ends workers with SIGTERM (``Process.terminate()``, e.g. at
    interpreter exit), and a worker deaf to it would hang its parent's exit. A handler cannot tell who sent a
    signal, ``sigwaitinfo`` can: the signals are blocked in the worker and one thread waits for them, ending the
    worker (as PyTorch's own handler does) when its parent sent one, and dropping any other.
    """
    parent = _parent_pid()
    # Inherited by the threads the worker starts from now on; a worker forked inside stop_signals_blocked has them
    # blocked in every thread already (started under spawn, it has only this one so far).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_wait_for_stop_signals, args=(parent,), name="euclip-stop-signals", daemon=True).start()


def _parent_pid() -> int:
    parent = multiprocessing.parent_process()  # the process that started this one, under fork, spawn or forkserver
    return parent.pid if parent is not None and parent.pid is not None else os.getppid()


def _wait_for_stop_signals(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == parent:
            os._exit(0)
