"""``euclip demo``, ``euclip models`` and ``euclip bench``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from euclip.presets import PRESETS

    p = subparsers.add_parser("demo", help="train and compare clip, euclip and meru on the built-in data",
                              description="Trains the clip, euclip and meru presets on the synthetic dataset with the "
                                          "same budget, evaluates each and writes a results table, figures and a "
                                          "report.")
    p.add_argument("--output", default="runs/demo", help="demo folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller version that runs in about a minute")
    p.add_argument("--steps", type=int, help="training steps per model (default: 450, --quick: 60)")
    p.add_argument("--budget-seconds", type=float, help="stop each model's training after this many seconds")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS),
                   help="the models to train (default: all three)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)

    p = subparsers.add_parser("models", help="list model names")
    p.set_defaults(func=run_models)

    p = subparsers.add_parser("bench", help="benchmarks (see euclip bench geometry --help)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_bench)


def run_demo(args: argparse.Namespace) -> int:
    from euclip.demo import run_demo as demo

    demo(output=args.output, quick=args.quick, budget_seconds=args.budget_seconds, steps=args.steps,
         presets=args.presets, progress=not args.no_progress)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from euclip.configs import available_models

    print("\n".join(available_models()))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from euclip import bench

    return bench.main(args.bench_args)
