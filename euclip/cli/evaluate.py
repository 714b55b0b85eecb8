"""``euclip eval NAME RUN`` for every registered evaluation, ``euclip eval all``, ``euclip traverse``, ``euclip report``.

The sub-commands, their flags and their printed summaries come from the evaluation registry
(:mod:`euclip.eval.registry`): a newly registered evaluation gets its command here without an edit.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import fields

from euclip.cli.flags import add_config_flags, given

_FORMATTER = argparse.RawDescriptionHelpFormatter


def describe(*paragraphs: str, examples: tuple[str, ...] = ()) -> str:
    """A help description: paragraphs wrapped at 100 columns, then the example command lines as they are."""
    text = "\n\n".join(textwrap.fill(p, 100) for p in paragraphs)
    if examples:
        text += "\n\nExample" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
    return text


def _common_flags(p: argparse.ArgumentParser, settings: tuple[str, ...] | None) -> None:
    from euclip.data.sources import DataSpec
    from euclip.eval.registry import EvalSettings

    p.add_argument("run", help="run directory (its checkpoints/latest.pt) or a checkpoint file")
    groups = add_config_flags(p, [DataSpec], {"data": "data (default: the synthetic test split)"}, "data")
    if settings is None or settings:
        skip = {f.name for f in fields(EvalSettings)} - set(settings) if settings is not None else ()
        add_config_flags(p, [EvalSettings], {"settings": "evaluation settings"}, "settings", skip=skip)
    run = groups["data"]
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.add_argument("--output", help="JSON file to write (default: RUN/eval_<name>_<data>.json; all: "
                                      "RUN/results.json)")


def register(subparsers) -> None:
    from euclip.eval.registry import evaluations

    p = subparsers.add_parser("eval", help="evaluate a trained model (zero-shot, retrieval, hierarchy, geometry, ...)")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="EVALUATION")
    for name, e in evaluations().items():
        q = esub.add_parser(name, help=e.summary, formatter_class=_FORMATTER,
                            description=describe(e.description, f"Writes RUN/eval_{name}_<data>.json and prints a "
                                                                "summary.", examples=e.examples))
        _common_flags(q, e.settings)
        q.set_defaults(func=run_one, evaluation=name)
    q = esub.add_parser("all", help="every evaluation that applies to the data, into RUN/results.json",
                        formatter_class=_FORMATTER,
                        description=describe("Runs every registered evaluation that applies to the data ("
                                             + ", ".join(evaluations()) + ") with the images embedded once, and "
                                             "writes them, with a flat table of their headline metrics, into "
                                             "RUN/results.json (merged with earlier evaluations of the same data).",
                                             examples=("euclip eval all runs/meru --num-samples 2000",)))
    _common_flags(q, None)
    q.set_defaults(func=run_all)

    traversal = evaluations()["traversal"]
    q = subparsers.add_parser("traverse", help=traversal.summary + " (= euclip eval traversal)",
                              formatter_class=_FORMATTER,
                              description=describe(traversal.description, examples=traversal.examples[1:]))
    _common_flags(q, traversal.settings)
    q.set_defaults(func=run_one, evaluation="traversal")
    _register_report(subparsers)


def _spec(args: argparse.Namespace, evaluation: str | None = None):
    from euclip.data.sources import DataSpec, infer_source

    options = given(args, DataSpec)
    options.setdefault("dataset_type", infer_source(options.get("data")))
    if options["dataset_type"] == "synthetic" and "num_samples" not in options:
        # A traversal alone walks its images: embed just those.
        images = getattr(args, "traversal_images", None)
        options["num_samples"] = images if evaluation == "traversal" and images \
            else 1000
    options.setdefault("num_samples", None)
    return DataSpec(**options)


def check_output(path: str | None) -> None:
    """Make sure ``--output`` can be written before anything is computed: its folder is created (as writing it
    would), and a folder in the way, a file where a folder should be or a read-only folder is named now."""
    import os
    from pathlib import Path

    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--output {path} is a folder; give a file name, e.g. {target / 'results.json'}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--output {path}: a file is in the way of its folder {target.parent}") from None
    except PermissionError:
        raise ValueError(f"--output {path}: cannot create its folder {target.parent} (permission denied)") from None
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"--output {path}: not writable")


def _settings(args: argparse.Namespace):
    from euclip.eval.registry import EvalSettings

    return EvalSettings(**given(args, EvalSettings))


def run_one(args: argparse.Namespace) -> int:
    from euclip.eval.registry import get_evaluation
    from euclip.eval.runner import evaluate, model_record
    from euclip.model import load_model, resolve_device
    from euclip.runs import RunDir, write_json

    evaluation = get_evaluation(args.evaluation)
    check_output(args.output)
    spec = _spec(args, evaluation.name)
    device = resolve_device(args.device)
    model = load_model(args.run, device)
    run = RunDir.of(args.run)
    out = evaluate(model, spec, [evaluation.name], _settings(args), device, args.progress, run)
    result = out["evaluations"][evaluation.name]
    record = {**result, "model": model_record(args.run, model), "data": out["data"],
              "settings": {k: out["settings"][k] for k in (*evaluation.settings, "min_radius")
                           if k in out["settings"]}, "seconds": out["seconds"][evaluation.name]}
    path = write_json(record, args.output or run.eval_file(evaluation.name, spec.tag))
    print(f"{evaluation.name} of {args.run} ({model.geometry}/{model.logit}) on {spec.tag}:")
    print(_metric_lines(evaluation, result))
    for line in evaluation.details(result) if evaluation.details else []:
        print("  " + line)
    if result.get("skipped_images"):
        print(f"  skipped {result['skipped_images']} unreadable image(s) (the warnings above name the first ones)")
    print(f"written to {path}")
    return 0


def run_all(args: argparse.Namespace) -> int:
    from euclip.eval.registry import evaluations
    from euclip.eval.runner import evaluate_run
    from euclip.runs import RunDir, write_json

    check_output(args.output)
    out = evaluate_run(args.run, spec=_spec(args), settings=_settings(args), device=args.device,
                       progress=args.progress)
    for name, result in out["evaluations"].items():
        print(f"{name}:")
        print(_metric_lines(evaluations()[name], result))
    path = RunDir.of(args.run).results if not args.output else write_json(out, args.output)
    print(f"written to {path}")
    return 0


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if fmt == "pct":
        return f"{100 * value:.1f} %"
    if fmt == "int":
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric_lines(evaluation, result: dict) -> str:
    rows = [(m.label, _fmt(m.value(result), m.fmt)) for m in evaluation.metrics if m.value(result) is not None]
    return "\n".join(f"  {label}: {value}" for label, value in rows)


def _register_report(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="an HTML page comparing runs side by side", formatter_class=_FORMATTER,
        description=describe(
            "A self-contained HTML report (inline CSS, PNG figures next to it, no scripts, opens offline) that puts "
            "runs side by side: a metrics table with a section per registered evaluation, training curves, norm "
            "histograms, 2-D embedding views (and the Poincaré disk for hyperbolic runs), cone satisfaction and "
            "traversal examples; also report.json. Runs without results.json are evaluated first on the synthetic "
            "test split (see --evaluate).",
            examples=("euclip report runs/demo/clip runs/demo/euclip runs/demo/meru --output runs/report",)))
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--output", default="report", help="folder for index.html, report.json and the figures")
    p.add_argument("--title", help="page title")
    p.add_argument("--evaluate", choices=["missing", "always", "never"], default="missing",
                   help="run every evaluation (euclip eval all) for runs without results.json, for all, or never")
    p.add_argument("--num-samples", type=int, default=512, help="synthetic samples for that evaluation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from euclip.data.sources import DataSpec
    from euclip.eval.report import write_report
    from euclip.eval.runner import evaluate_run
    from euclip.runs import RunDir

    for path in args.runs:
        run = RunDir.of(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"no such run directory: {path}")
        if not run.has_checkpoint() and not Path(path).is_file():
            # Nothing to evaluate (e.g. only metrics were copied): the report shows what the folder holds.
            print(f"[report] {path}: no checkpoint; reporting its existing files only")
            continue
        if args.evaluate == "always" or (args.evaluate == "missing" and not run.results.is_file()):
            print(f"[report] evaluating {run.path} on {args.num_samples} synthetic samples")
            evaluate_run(path, spec=DataSpec(num_samples=args.num_samples), device=args.device,
                         progress=args.progress)
    page = write_report([RunDir.of(r).path for r in args.runs], args.output, title=args.title)
    print(f"report: {page}")
    return 0
