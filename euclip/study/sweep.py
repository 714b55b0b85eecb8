"""Running a sweep: every cell an ordinary run directory, resumable, in parallel locally or on a cluster.

A sweep folder holds ``sweep.json`` (the grid, the recipe and the ``--set`` values), one run directory per
cell (named by its settings, see :class:`~euclip.study.grid.Cell`), and what :mod:`euclip.study.results`
collects. Running the same command again skips the finished cells and resumes the interrupted ones from their
checkpoints. Every cell runs ``euclip train`` and then ``euclip eval all`` in a child process, which dies with
the sweep (a killed sweep leaves no orphan training behind).

Launchers: ``local`` (``--jobs N`` cells at a time; on a multi-GPU node each cell gets its own GPU),
``slurm`` (one submitit array job for the whole sweep) and ``submitit-local`` (submitit's local executor, the
same code path as slurm without a cluster).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

from tqdm.auto import tqdm

from euclip.runs import RunDir, read_json, write_json
from euclip.study.grid import EVAL_SAMPLES, Cell, Grid

__all__ = ["CellStatus", "LAUNCHERS", "Sweep", "cell_status", "run_cell"]

MANIFEST = "sweep.json"
ERROR = "error.txt"
LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class Sweep:
    """A sweep folder and what it runs: ``grid``, and the grids of the earlier commands it ``--extend``-ed
    (``extends``, read back from the folder by :func:`load_sweep`), whose cells its tables include."""

    root: Path
    grid: Grid
    recipe: dict
    sets: dict = field(default_factory=dict)
    eval_samples: int = EVAL_SAMPLES
    extends: tuple[Grid, ...] = ()

    def manifest(self) -> dict:
        return {"grid": self.grid.to_dict(), "recipe": self.recipe, "sets": self.sets,
                "eval_samples": self.eval_samples}

    def cells(self) -> list[Cell]:
        """Every cell of the earlier grids, then this grid's (each once)."""
        return list(dict.fromkeys(c for grid in (*self.extends, self.grid) for c in grid.cells()))

    def run_dir(self, cell: Cell) -> Path:
        return self.root / cell.name

    def job(self, cell: Cell) -> dict:
        """Everything a child process needs to run one cell (plain JSON, so it pickles to any launcher)."""
        return {"run": str(self.run_dir(cell)), "train": cell.train_options(self.recipe, self.sets),
                "eval_samples": self.eval_samples}

    def prepare(self, extend: bool = False) -> None:
        """Create the folder, or check that it was made by this grid (``extend``: by a part of it)."""
        path = self.root / MANIFEST
        previous = read_json(path)
        mine = json.loads(json.dumps(self.manifest()))  # as JSON reads it back (tuples → lists)
        if previous is not None and {k: v for k, v in previous.items() if k != "extended_from"} == mine:
            return  # the same command again (resuming): the folder's history stays as it is
        if previous is not None and previous != mine:
            if previous.get("recipe") != mine["recipe"] or previous.get("sets") != mine["sets"] or \
                    previous.get("eval_samples") != mine["eval_samples"] or not extend:
                raise ValueError(f"{self.root} holds a sweep of another grid or recipe ({_differences(previous, mine)}); "
                                 "use another --output, or --extend to add cells with the same recipe")
            mine = {**mine, "extended_from": previous}
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(mine, path)


def _differences(a: dict, b: dict) -> str:
    keys = [k for k in ("grid", "recipe", "sets", "eval_samples") if a.get(k) != b.get(k)]
    return "different " + ", ".join(keys)


# ----------------------------------------------------------------------------------------------------------------
# One cell
# ----------------------------------------------------------------------------------------------------------------

CellStatus = str  # "done", "resume" (has a checkpoint), "todo", "failed"


def cell_status(run: Path) -> CellStatus:
    r = RunDir(run)
    if (read_json(r.results) or {}).get("evaluations") and r.summary.is_file():
        return "done"
    if (r.path / ERROR).is_file():
        return "failed"
    return "resume" if r.has_checkpoint() else "todo"


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the sweep process dies (Linux), so no orphan trains on."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(job: dict, log, env: dict) -> None:
    """Run :func:`train_and_evaluate` in a child process (``python -m euclip.study.sweep JOB``)."""
    command = [sys.executable, "-m", "euclip.study.sweep", json.dumps(job)]
    proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if proc.returncode != 0:
        raise RuntimeError(f"the cell's process exited with {proc.returncode} (see {job['run']}/sweep.log)")


def train_and_evaluate(job: dict) -> int:
    """In the child: ``euclip train`` (resumed if the run has a checkpoint) and ``euclip eval all`` of one cell."""
    from euclip.cli import main
    from euclip.data.sources import DataSpec
    from euclip.eval.runner import evaluate_run

    run = RunDir(job["run"])
    if not run.summary.is_file():
        # Without a checkpoint, what an interrupted attempt left (its config, metrics) has nothing to resume.
        resume = ["--resume", "latest"] if run.has_checkpoint() else ["--overwrite"]
        code = main(["train", "--no-eval", "--output", str(run.path), *_flags(job["train"]), *resume])
        if code != 0:
            return code
    evaluate_run(run.path, spec=DataSpec(num_samples=job["eval_samples"]), progress=False)
    return 0


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (tuple, list)):
            flags += [flag, ",".join(map(str, value))]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def run_cell(job: dict, gpu: str | None = None, threads: int | None = None) -> dict:
    """Train (or resume) and evaluate one cell; returns ``{"run", "status", "seconds", "error"}``.

    A failure is recorded in ``RUN/error.txt`` (and returned), not raised: the sweep goes on. A module-level
    function of JSON arguments, so that submitit can pickle it.
    """
    run = Path(job["run"])
    run.mkdir(parents=True, exist_ok=True)
    (run / ERROR).unlink(missing_ok=True)
    start = time.perf_counter()
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:  # parallel cells on a CPU share its cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        with open(run / "sweep.log", "a") as log:
            _child(job, log, env)
        return {"run": str(run), "status": "done", "seconds": time.perf_counter() - start, "error": None}
    except Exception as exn:  # noqa: BLE001 - a failed cell is recorded, the sweep goes on
        tail = (run / "sweep.log").read_text()[-2000:] if (run / "sweep.log").is_file() else ""
        message = f"{exn}\n{tail}" if tail else traceback.format_exc()
        (run / ERROR).write_text(message)
        return {"run": str(run), "status": "failed", "seconds": time.perf_counter() - start, "error": str(exn)}


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


MAX_AUTO_CPU_JOBS = 8  # each CPU cell holds its model, optimiser and data worker in memory


def auto_jobs() -> int:
    """``--jobs auto``: one cell per GPU on a GPU node, else one single-threaded cell per CPU core (at most
    :data:`MAX_AUTO_CPU_JOBS`). The tiny model's small matrices keep a second thread of one cell partly idle: on a
    2-core CPU two cells at once train 1.16× the samples per second of one cell on both cores (``euclip bench
    sweep``)."""
    return _gpu_count() or max(1, min(os.cpu_count() or 1, MAX_AUTO_CPU_JOBS))


def _slots(jobs: int) -> list[tuple[str | None, int | None]]:
    """Per parallel slot, its GPU id (a multi-GPU node: one GPU per cell) or its share of the CPU cores."""
    count = _gpu_count()
    if jobs == 1:
        return [(None, None)]
    if count:
        return [(str(i % count), None) for i in range(jobs)]
    return [(None, max(1, (os.cpu_count() or 1) // jobs))] * jobs


def run_local(jobs: list[dict], parallel: int, progress: bool = True) -> list[dict]:
    """Run the jobs ``parallel`` at a time (a thread per slot waits on its child process)."""
    slots: Queue = Queue()
    for slot in _slots(parallel):
        slots.put(slot)

    def one(job: dict) -> dict:
        slot = slots.get()
        try:
            return run_cell(job, *slot)
        finally:
            slots.put(slot)

    results = []
    with tqdm(total=len(jobs), desc="sweep", unit="cell", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=parallel) as pool:
        pending = {pool.submit(one, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results.append(future.result())
                bar.update(1)
                bar.set_postfix(failed=sum(r["status"] == "failed" for r in results))
    return results


def run_submitit(jobs: list[dict], folder: Path, cluster: str, slurm: dict, progress: bool = True) -> list[dict]:
    """Submit the jobs as one submitit array job (``cluster``: ``slurm`` or ``local``) and wait for them."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    parameters = {"timeout_min": slurm.get("time", 60), "name": "euclip-sweep"}
    if cluster == "slurm":
        parameters.update(slurm_partition=slurm.get("partition"), gpus_per_node=slurm.get("gpus", 1),
                          cpus_per_task=slurm.get("cpus", 8), mem_gb=slurm.get("mem_gb", 32),
                          slurm_array_parallelism=slurm.get("parallelism", 64))
        parameters = {k: v for k, v in parameters.items() if v is not None}
    executor.update_parameters(**parameters)
    submitted = executor.map_array(run_cell, jobs)
    results = []
    with tqdm(total=len(submitted), desc=f"sweep ({cluster})", unit="cell", disable=not progress) as bar:
        waiting = list(submitted)
        while waiting:
            finished = [j for j in waiting if j.done()]
            for j in finished:
                try:
                    results.append(j.result())
                except Exception as exn:  # noqa: BLE001 - the job itself failed (killed, out of time)
                    results.append({"run": None, "status": "failed", "seconds": None, "error": str(exn)})
                bar.update(1)
            waiting = [j for j in waiting if j not in finished]
            if waiting:
                time.sleep(1.0)
    return results


# ----------------------------------------------------------------------------------------------------------------
# The whole sweep
# ----------------------------------------------------------------------------------------------------------------

# The tiny model on one core of a 2-core CPU while a second cell runs on the other (measured: 140 samples/s), and
# its evaluation: for estimates before any cell of the sweep finished.
DEFAULT_SAMPLES_PER_S = 140.0
DEFAULT_EVAL_SECONDS = 20.0


def estimate_seconds(sweep: Sweep, cells: list[Cell], jobs: int = 1) -> tuple[float, str]:
    """Wall-clock seconds the cells still to run will take with ``jobs`` cells at a time: from the finished cells'
    times (measured at whatever parallelism they ran with), else from a default rate."""
    finished = [read_json(sweep.run_dir(c) / "sweep_cell.json") for c in sweep.cells()]
    times = [f["seconds"] for f in finished if f and f.get("seconds")]
    rounds = math.ceil(len(cells) / max(1, jobs))
    if times:
        return sum(times) / len(times) * rounds, f"the {len(times)} finished cell(s)"
    per_cell = [int(c.train_options(sweep.recipe, sweep.sets)["steps"]) * int(
        c.train_options(sweep.recipe, sweep.sets)["batch_size"]) / DEFAULT_SAMPLES_PER_S + DEFAULT_EVAL_SECONDS
        for c in cells]
    return sum(per_cell) / len(per_cell) * rounds if per_cell else 0.0, (
        f"{DEFAULT_SAMPLES_PER_S:.0f} samples/s per cell, the tiny model on one CPU core")


def plan(sweep: Sweep) -> list[tuple[Cell, CellStatus]]:
    return [(cell, cell_status(sweep.run_dir(cell))) for cell in sweep.cells()]


def run_sweep(sweep: Sweep, launcher: str = "local", jobs: int = 1, slurm: dict | None = None,
              progress: bool = True) -> list[dict]:
    """Run every cell that is not done (failed cells are retried); returns the launchers' results."""
    todo = [cell for cell, status in plan(sweep) if status != "done"]
    job_list = [sweep.job(c) for c in todo]
    if not job_list:
        return []
    if launcher == "local":
        results = run_local(job_list, jobs, progress)
    elif launcher in ("slurm", "submitit-local"):
        cluster = "slurm" if launcher == "slurm" else "local"
        results = run_submitit(job_list, sweep.root / "submitit", cluster, slurm or {}, progress)
    else:
        raise ValueError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    for r in results:
        if r.get("run"):
            write_json(r, Path(r["run"]) / "sweep_cell.json")
    return results


def load_sweep(root: str | Path) -> Sweep:
    """The sweep a folder holds (its ``sweep.json``)."""
    manifest = read_json(Path(root) / MANIFEST)
    if not manifest:
        raise FileNotFoundError(f"{root}: not a sweep folder (no {MANIFEST}; run `euclip sweep --output {root}`)")
    grids = []
    entry = manifest
    while entry:  # the newest grid first, then the ones it extended
        grids.append(Grid.from_dict(entry["grid"]))
        entry = entry.get("extended_from")
    return Sweep(Path(root), grids[0], manifest["recipe"], manifest.get("sets", {}), manifest["eval_samples"],
                 extends=tuple(reversed(grids[1:])))


WALL_TIME = "wall_time.json"
COMMANDS = "command.txt"


def record_command(root: Path, command: str) -> None:
    """Add ``command`` to ``ROOT/command.txt`` (one line per command that made or extended the folder), once."""
    commands = sweep_commands(root)
    if command not in commands:
        (root / COMMANDS).write_text("".join(f"{c}\n" for c in [*commands, command]))


def sweep_commands(root: Path) -> list[str]:
    """The ``euclip sweep`` commands that made and extended the folder, oldest first."""
    path = root / COMMANDS
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def record_wall_time(root: Path, seconds: float, jobs: int) -> None:
    """Add one ``euclip sweep`` command's clock time (and its cells at a time) to ``ROOT/wall_time.json``."""
    previous = read_json(root / WALL_TIME) or {"seconds": 0.0, "jobs": []}
    write_json({"seconds": previous["seconds"] + seconds, "jobs": sorted({*previous["jobs"], jobs})},
               root / WALL_TIME)


def wall_time(root: Path) -> dict | None:
    """``{"seconds", "jobs"}``: the clock time of every ``euclip sweep`` command on ``root`` so far, or ``None``."""
    return read_json(root / WALL_TIME)


def cell_seconds(sweep: Sweep) -> float:
    """Seconds the sweep's cells took, summed (training and evaluation, each cell's last run)."""
    return sum((read_json(sweep.run_dir(c) / "sweep_cell.json") or {}).get("seconds") or 0.0 for c in sweep.cells())


if __name__ == "__main__":
    sys.exit(train_and_evaluate(json.loads(sys.argv[1])))
