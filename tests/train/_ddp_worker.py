"""Runs a list of training jobs in every process of one ``torchrun`` launch (not collected by pytest).

    torchrun --nproc_per_node 2 tests/train/_ddp_worker.py JOBS.json RESULTS.json

Each job is ``{"name", "options"}``, the options of :func:`euclip.train.config.resolve_config`, or
``{"name", "cli"}``, arguments of ``euclip`` (:func:`euclip.cli.main`, evaluation included), plus optionally ``"sigterm_rank"``/``"sigterm_after_steps"``: that process sends itself SIGTERM after that
many training steps. The process group is created once, here, so that ``train`` reuses it and the
imports are paid once for all jobs. Rank 0 writes ``{name: outcome}`` to RESULTS.json, where an
outcome is ``"ok"``, ``"exit <code>"`` (SystemExit, or the CLI's return code) or ``"<ExceptionType>: <message>"``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

torch.set_num_threads(1)  # two processes on a two-core machine

import euclip.cli as cli  # noqa: E402
import euclip.train.loop as loop  # noqa: E402
from euclip.train.config import resolve_config  # noqa: E402


def run(job: dict) -> str:
    rank = dist.get_rank()
    original = loop.train_step
    if job.get("sigterm_rank") == rank:
        calls = [0]

        def step_then_sigterm(*args, **kwargs):
            out = original(*args, **kwargs)
            calls[0] += 1
            if calls[0] == job["sigterm_after_steps"]:
                os.kill(os.getpid(), signal.SIGTERM)  # only this process: the others must follow it
            return out

        loop.train_step = step_then_sigterm
    try:
        if "cli" in job:
            return f"exit {cli.main(job['cli'])}"
        loop.train(resolve_config(dict(job["options"])))
        return "ok"
    except SystemExit as e:
        return f"exit {e.code}"
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        loop.train_step = original


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    outcomes = {}
    for job in jobs:
        outcome = run(job)
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, outcome)
        outcomes[job["name"]] = gathered
    if dist.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(outcomes, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
