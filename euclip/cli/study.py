"""``euclip sweep`` (the paper's grid, resumable, local or on a cluster) and ``euclip claims`` (its verdicts)."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

from euclip.cli.evaluate import describe
from euclip.runs import command_line

SWEEP_EXAMPLES = (
    "euclip sweep --grid headline --seeds 0,1,2 --output runs/headline",
    "euclip sweep --output runs/paper                       # the paper grid, 30 cells × seeds 0,1",
    "euclip sweep --geometries euclidean,hyperbolic --logits squared,distance --final-ln off --seeds 0,1,2,3",
    "euclip sweep --grid headline --embed-dims 64,128 --set lr=0.002 --jobs 1     # one cell at a time",
    "euclip sweep --launcher slurm --partition gpu --time 120 --output /scratch/sweep",
    "euclip sweep --output runs/paper --dry-run              # list the cells, their state, the time left",
)


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _bools(text: str) -> tuple[bool, ...]:
    table = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}
    try:
        return tuple(table[w.lower()] for w in _words(text))
    except KeyError as exn:
        raise argparse.ArgumentTypeError(f"expected on,off, got {exn.args[0]!r}") from None


def _numbers(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(w) for w in _words(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number of cells at a time, got {text!r}")
    return jobs


def register(subparsers) -> None:
    from euclip.study.grid import GRIDS
    from euclip.study.sweep import LAUNCHERS, MAX_AUTO_CPU_JOBS

    p = subparsers.add_parser(
        "sweep", help="the paper's comparison: a grid of runs with paired seeds, resumable, in parallel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=describe(
            "Trains and evaluates every cell of a grid of geometry × logit × final LayerNorm × entailment (only "
            "where cones exist) × seed, and axes beyond the paper, with one recipe for all cells and paired seeds "
            "(same seed: same data order, same initial towers); the only per-cell differences are what the paper "
            "varies and its initial logit scale per logit type. Every cell is an ordinary run directory named by "
            "its settings. Running the command again skips finished cells and resumes interrupted ones; a failed "
            "cell records its error and the sweep goes on. Writes results.csv/json (a row per run), "
            "aggregate.csv/json (mean, std, 95 % interval over seeds), claims.json and report/index.html.",
            examples=SWEEP_EXAMPLES))
    g = p.add_argument_group("the grid")
    g.add_argument("--grid", choices=list(GRIDS), default="paper",
                   help="paper: every valid cell (30); headline: CLIP, EuCLIP and MERU (default: paper)")
    g.add_argument("--geometries", type=_words, help="comma-separated (default: all three)")
    g.add_argument("--logits", type=_words, help="comma-separated (default: inner,distance,squared)")
    g.add_argument("--final-ln", type=_bools, help="on,off (default: both)")
    g.add_argument("--entailment", type=_numbers(float), help="weights, e.g. 0,0.2 (default: 0,0.2)")
    g.add_argument("--seeds", type=_numbers(int), help="comma-separated (default: 0,1)")
    g.add_argument("--embed-dims", type=_numbers(int), help="axis: embedding dimensions")
    g.add_argument("--models", type=_words, help="axis: tower models (tiny, small, OpenCLIP names)")
    g.add_argument("--dataset-sizes", type=_numbers(int), help="axis: synthetic samples per epoch")
    g.add_argument("--steps", type=_numbers(int), help="axis: training steps")
    g.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                   help="any `euclip train` flag, for every cell (repeatable), e.g. --set lr=0.002")
    g.add_argument("--quick", action="store_true", help="a few steps per cell on small data (tests, a first look)")
    r = p.add_argument_group("running")
    r.add_argument("--output", default="runs/sweep", help="the sweep folder (default: runs/sweep)")
    r.add_argument("--extend", action="store_true",
                   help="let a sweep folder of another grid (same recipe) take this grid's cells too")
    r.add_argument("--dry-run", action="store_true", help="list the cells, their state and an estimate of the time")
    r.add_argument("--launcher", choices=list(LAUNCHERS), default="local",
                   help="local processes, a slurm array job (submitit), or submitit's local executor")
    r.add_argument("--jobs", type=_jobs, default="auto",
                   help="local: cells at a time, each on its own GPU or CPU core (default: auto, one per GPU on a "
                        f"GPU node, else one per CPU core, at most {MAX_AUTO_CPU_JOBS})")
    r.add_argument("--partition", help="slurm partition")
    r.add_argument("--gpus", type=int, default=1, help="slurm: GPUs per cell (default: 1)")
    r.add_argument("--cpus", type=int, default=8, help="slurm: CPUs per cell (default: 8)")
    r.add_argument("--mem-gb", type=int, default=32, help="slurm: memory per cell (default: 32)")
    r.add_argument("--time", type=int, default=60, help="slurm/submitit: minutes per cell (default: 60)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_sweep_command)

    c = subparsers.add_parser(
        "claims", help="the paper's claims tested on a sweep: effect, 95 % interval and verdict per claim",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=describe(
            "Each of the paper's claims (C1-C7) as a paired comparison over the sweep's seeds: the mean "
            "difference, its 95 % interval, and a verdict (holds / contradicted / inconclusive) with a tolerance "
            "--margin for 'matches or beats'. Writes SWEEP/claims.json and refreshes SWEEP/report/index.html.",
            examples=("euclip claims runs/headline", "euclip claims runs/paper --markdown docs/results.md")))
    c.add_argument("sweep", help="the sweep folder")
    c.add_argument("--margin", type=float, default=0.01, help="tolerance of 'matches' claims (default: 0.01)")
    c.add_argument("--markdown", help="also write the results page in Markdown (e.g. docs/results.md)")
    c.add_argument("--json", action="store_true", help="print the claims as JSON")
    c.set_defaults(func=run_claims_command)


def build_sweep(args: argparse.Namespace):
    from euclip.study.grid import GRIDS, QUICK_EVAL_SAMPLES, QUICK_RECIPE, RECIPE, AXES, EVAL_SAMPLES, Grid, parse_set
    from euclip.study.sweep import Sweep

    spec = dict(GRIDS[args.grid])
    for flag, key in (("geometries", "geometries"), ("logits", "logits"), ("final_ln", "final_ln"),
                      ("entailment", "entailment"), ("seeds", "seeds")):
        if getattr(args, flag) is not None:
            spec[key] = tuple(getattr(args, flag))
    spec["extra"] = {AXES[a]: tuple(getattr(args, a)) for a in AXES if getattr(args, a)}
    grid = Grid(**spec)
    recipe = QUICK_RECIPE if args.quick else RECIPE
    return Sweep(Path(args.output), grid, dict(recipe), parse_set(args.set),
                 QUICK_EVAL_SAMPLES if args.quick else EVAL_SAMPLES)


def run_sweep_command(args: argparse.Namespace) -> int:
    from euclip.study.sweep import auto_jobs, estimate_seconds, plan, record_command, record_wall_time, run_sweep

    sweep = build_sweep(args)
    cells = plan(sweep)  # validates the grid before anything is written
    jobs = auto_jobs() if args.jobs == "auto" else args.jobs
    if args.dry_run:
        todo = [c for c, status in cells if status != "done"]
        for cell, status in cells:
            print(f"  {status:8s} {cell.name}")
        seconds, basis = estimate_seconds(sweep, todo, jobs)
        print(f"{len(cells)} cells, {len(todo)} to run: about {seconds / 60:.0f} min with {jobs} job(s) at a time "
              f"(from {basis})")
        return 0
    sweep.prepare(extend=args.extend)
    record_command(sweep.root, command_line())
    start = time.perf_counter()
    outcome = run_sweep(sweep, args.launcher, jobs, {"partition": args.partition, "gpus": args.gpus,
                                                          "cpus": args.cpus, "mem_gb": args.mem_gb,
                                                          "time": args.time}, args.progress)
    failed = [r for r in outcome if r["status"] == "failed"]
    if outcome:
        record_wall_time(sweep.root, time.perf_counter() - start, jobs if args.launcher == "local" else len(outcome))
    _finish(sweep.root, args.progress)
    print(f"sweep: {len(cells)} cells, {len(outcome)} run now in {time.perf_counter() - start:.0f} s, "
          f"{len(failed)} failed{': ' + ', '.join(Path(r['run']).name for r in failed if r['run']) if failed else ''}")
    print(f"results: {sweep.root / 'results.csv'}, {sweep.root / 'aggregate.csv'}, {sweep.root / 'report/index.html'}")
    return 1 if failed else 0


def _finish(root: Path, progress: bool = True) -> tuple[list[dict], list[dict]]:
    from euclip.study.claims import evaluate_claims
    from euclip.study.page import write_page
    from euclip.study.results import write_results
    from euclip.study.sweep import load_sweep

    rows, agg = write_results(load_sweep(root))
    claims = evaluate_claims(rows)
    (root / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
    write_page(root, agg, claims)
    return rows, claims


def run_claims_command(args: argparse.Namespace) -> int:
    from euclip.study.claims import evaluate_claims
    from euclip.study.page import markdown, write_page
    from euclip.study.results import write_results
    from euclip.study.sweep import cell_seconds, load_sweep, sweep_commands, wall_time

    root = Path(args.sweep)
    sweep = load_sweep(root)
    rows, agg = write_results(sweep)
    claims = evaluate_claims(rows, args.margin)
    (root / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
    write_page(root, agg, claims)
    if args.json:
        print(json.dumps(claims, indent=2))
    else:
        for c in claims:
            print(f"{c['id']} {c['verdict']:13s} {c['statement']}")
            for m in c["metrics"]:
                print(f"     {m['metric']}: {m['effect']:+.4g} [{m['ci_low']:+.4g}, {m['ci_high']:+.4g}] over "
                      f"{m['pairs']} pairs → {m['verdict']}")
    if args.markdown:
        seeds = sorted({r["seed"] for r in rows})
        Path(args.markdown).write_text(markdown(agg, claims, sweep_commands(root) or ["euclip sweep"],
                                                datetime.date.today().isoformat(),
                                                cell_seconds(sweep), seeds, wall_time(root)))
        print(f"written to {args.markdown}")
    return 0
