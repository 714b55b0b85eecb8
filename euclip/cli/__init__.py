"""The ``euclip`` command: train, eval, demo, report, bench, models.

Flags follow OpenCLIP's names where the concept is the same (``--train-data``, ``--batch-size``,
``--lr``, ``--wd``, ``--warmup``, ``--precision``, ``--local-loss``, ...), plus the geometry flags.
Flags are parsed into typed configs here, at the edge; nothing below sees ``argparse``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from euclip import geometry as geom
from euclip.data.synthetic import LEVEL_PROBS
from euclip.presets import PRESETS

# Modules that add top-level subcommands: each has ``register(subparsers)``, which adds its parser(s) and sets
# ``func`` (taking the parsed arguments, returning the exit code). Imported only when the parser is built.
COMMAND_MODULES: tuple[str, ...] = ("euclip.cli.index",)

GEOMETRY_CHOICES = list(dict.fromkeys(list(geom.GEOMETRIES) + list(geom.ALIASES)))


def _add_geometry_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("geometry (defaults: EuCLIP, or the preset's)")
    g.add_argument("--preset", choices=list(PRESETS),
                   help="the paper's headline models: clip (elliptic, cosine, final LN), euclip (euclidean, "
                        "negative squared distance, no final LN), meru (hyperbolic, negative distance, final LN, "
                        "entailment 0.2). Explicit flags override the preset.")
    g.add_argument("--geometry", metavar="NAME",
                   help=f"embedding geometry or a paper-code alias: {', '.join(GEOMETRY_CHOICES)} "
                        "(default: euclidean)")
    g.add_argument("--logit", choices=list(geom.LOGITS),
                   help="softmax logit: inner product, negative distance or negative squared distance "
                        "(default: the alias's, else squared)")
    g.add_argument("--final-ln", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the towers' final LayerNorm (vision ln_post, text ln_final); default: off")
    g.add_argument("--entailment-weight", type=float, help="weight of the entailment-cone loss (0 = off; MERU: 0.2)")
    g.add_argument("--entailment-warmup", type=int,
                   help="ramp the entailment weight linearly from 0 over this many steps (default 0: MERU's full "
                        "weight from the first step; short, small-batch runs can collapse the text embeddings "
                        "onto the origin, where every cone is a half-space)")
    g.add_argument("--min-radius", type=float, help="K, the entailment cones' min radius (start of training; "
                                                    "default 0.1)")
    g.add_argument("--min-radius-final", type=float, help="K at the end of training (linear schedule, e.g. 0.3 → 0.1)")
    g.add_argument("--init-logit-scale", type=float,
                   help="initial log t; default ln(1/0.07) for inner/distance, 0 for squared (−1 with entailment)")
    g.add_argument("--max-logit-scale", type=float, help="t is clamped to [1, this] (default 100)")
    g.add_argument("--curvature", type=float, help="initial c of the hyperbolic geometry (curvature −c; default 1)")
    g.add_argument("--learn-curvature", action=argparse.BooleanOptionalAction, default=None,
                   help="learn c (clamped to [0.1, 10]); default on")
    g.add_argument("--no-multi-positive", dest="multi_positive", action="store_false", default=None,
                   help="treat identical captions in a batch as negatives (plain InfoNCE) instead of shared positives")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run")
    r.add_argument("--output", "--logs", dest="output", help="run directory (default runs/<preset or geometry>)")
    r.add_argument("--seed", type=int)
    r.add_argument("--device", help="auto (default), cpu, cuda")
    r.add_argument("--resume", help="'latest' (in --output), a run directory, or a checkpoint file")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    d = p.add_argument_group("data")
    d.add_argument("--dataset-type", choices=["synthetic", "csv", "webdataset"],
                   help="synthetic (built in, default), csv (OpenCLIP's CsvDataset format) or webdataset shards")
    d.add_argument("--train-data", help="CSV/TSV file, or shard pattern(s) like 'data/{00000..00099}.tar' "
                                        "(several joined with ::)")
    d.add_argument("--val-data")
    d.add_argument("--csv-img-key", help="image path column (default filepath)")
    d.add_argument("--csv-caption-key", help="caption column (default caption)")
    d.add_argument("--csv-separator", help="column separator (default tab)")
    d.add_argument("--train-num-samples", type=int,
                   help="samples per epoch (webdataset: required; synthetic: default 50000)")
    d.add_argument("--synthetic-render-size", type=int,
                   help="synthetic: render images this many pixels wide and resize them to the model's size on the "
                        "device (a 224 px ViT on a GPU: render at 32-64 px, the CPU workers cannot draw 224 px "
                        "fast enough)")
    d.add_argument("--synthetic-caption-levels", type=_floats, metavar="P0,P1,P2,P3,P4",
                   help="synthetic: relative frequency of the caption levels 0 (\"a shape\"), 1 (family), 2 (shape), "
                        "3 (colour + shape), 4 (every attribute); default "
                        + ",".join(f"{p:g}" for p in LEVEL_PROBS))
    d.add_argument("--dataset-resampled", action="store_true", default=None,
                   help="webdataset: sample shards with replacement (infinite stream)")
    d.add_argument("--workers", type=int, help="data-loading worker processes per training process (default 2)")
    d.add_argument("--batch-size", type=int, help="batch size per process (default 128)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int)
    o.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    o.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    o.add_argument("--wd", type=float, help="AdamW weight decay (default 0.2; never on gains, biases, scalars)")
    o.add_argument("--warmup", type=int, help="linear warmup steps (default 100), then cosine decay")
    o.add_argument("--beta1", type=float)
    o.add_argument("--beta2", type=float)
    o.add_argument("--eps", type=float)
    o.add_argument("--grad-clip-norm", type=float, help="clip the global gradient norm")
    o.add_argument("--accum-freq", type=int, help="micro-batches per step; the loss uses the whole accumulated batch")
    f = p.add_argument_group("performance")
    f.add_argument("--precision", choices=["fp32", "amp_bf16", "amp", "pure_bf16"],
                   help="fp32 (default; use it on CPUs), amp_bf16 on GPUs. The geometry and loss always run in float32")
    f.add_argument("--torchcompile", action="store_true", default=None)
    f.add_argument("--grad-checkpointing", action="store_true", default=None)
    f.add_argument("--local-loss", action="store_true", default=None,
                   help="under torchrun: each process computes its rows against all columns")
    f.add_argument("--gather-with-grad", action="store_true", default=None,
                   help="differentiable all-gather of features (exact gradients across processes)")
    f.add_argument("--deterministic", action="store_true", default=None, help="torch deterministic algorithms")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="euclip config (tiny, small) or any OpenCLIP model name (ViT-B-16, ...)")
    m.add_argument("--image-size", type=int, help="override the model's image size")
    b = p.add_argument_group("bookkeeping")
    b.add_argument("--save-every-steps", type=int, help="checkpoint interval (default 500; also at the end)")
    b.add_argument("--keep-checkpoints", type=int)
    b.add_argument("--log-every-steps", type=int)
    b.add_argument("--zeroshot-samples", type=int, help="synthetic test samples for the final zero-shot evaluation")
    b.add_argument("--nonfinite-limit", type=int,
                   help="non-finite steps skipped before the run stops with an error (default 5; 0: stop at once)")
    _add_geometry_flags(p)


def _train_options(args: argparse.Namespace) -> dict:
    skip = {"command", "func", "verbose", "no_eval"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def cmd_train(args: argparse.Namespace) -> int:
    from euclip.train.config import resolve_config
    from euclip.train.distributed import is_main_process
    from euclip.train.loop import train
    from euclip.train.runs import default_output, evaluate_run

    options = _train_options(args)
    if options.get("output") is None:
        options["output"] = default_output(options)
    if options.get("steps") is None and options.get("epochs") is None:
        options["epochs"] = 1
    cfg = resolve_config(options)
    summary = train(cfg)
    if not args.no_eval:
        summary.update(evaluate_run(cfg.output, progress=cfg.progress))
    if is_main_process():  # under torchrun every rank runs this; one summary is enough
        print(json.dumps(summary, indent=2))
    return 0


def cmd_eval_zeroshot(args: argparse.Namespace) -> int:
    from euclip.train.runs import zeroshot_command

    results = zeroshot_command(args)
    print(json.dumps({k: v for k, v in results.items() if k not in ("per_class", "predictions", "labels")}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from euclip.demo import run_demo

    run_demo(output=args.output, quick=args.quick, budget_seconds=args.budget_seconds, steps=args.steps,
             presets=args.presets, progress=not args.no_progress)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from euclip.configs import available_models

    print("\n".join(available_models()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from euclip import bench

    return bench.main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    from euclip.eval.commands import add_eval_subcommands, add_top_level_subcommands

    parser = argparse.ArgumentParser(
        prog="euclip", description="Contrastive language-image pre-training under Euclidean, elliptic and "
                                   "hyperbolic geometries (CLIP, EuCLIP, MERU).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a GeometricCLIP. Example: euclip train --preset euclip --steps 500")
    _add_train_flags(p)
    p.add_argument("--no-eval", action="store_true", help="skip the zero-shot evaluation after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run")
    esub = p.add_subparsers(dest="eval_command", required=True)
    z = esub.add_parser("zeroshot", help="zero-shot classification (synthetic test split or an image folder)",
                        description="Zero-shot top-1/top-5 and per-class accuracy, written as JSON. With no --data, "
                                    "the synthetic test split (and held-out colour-shape combinations).")
    z.add_argument("run", help="run directory or checkpoint file")
    z.add_argument("--data", help="folder with one sub-folder of images per class (ImageNet layout)")
    z.add_argument("--classnames", help="file with one class name per line, in sorted-folder order; or 'imagenet' "
                                        "for OpenCLIP's ImageNet-1k names (default: the folder names)")
    z.add_argument("--templates", help="file with one prompt template per line containing {}; or 'openai' for "
                                       "OpenCLIP's 80 ImageNet templates (default: the synthetic templates)")
    z.add_argument("--split", default="test", choices=["test", "heldout"], help="synthetic split")
    z.add_argument("--num-samples", type=int, default=2000, help="synthetic samples to evaluate")
    z.add_argument("--batch-size", type=int, default=256)
    z.add_argument("--workers", type=int, default=0)
    z.add_argument("--device", default="auto")
    z.add_argument("--output", help="JSON file to write (default RUN/eval_zeroshot_<split>.json)")
    z.set_defaults(func=cmd_eval_zeroshot)
    add_eval_subcommands(esub)

    p = sub.add_parser("demo", help="train and compare clip, euclip and meru on the built-in data",
                       description="Trains the clip, euclip and meru presets on the synthetic dataset with the same "
                                   "budget, evaluates each and writes a results table, figures and a report.")
    p.add_argument("--output", default="runs/demo", help="demo folder")
    p.add_argument("--quick", action="store_true", help="a smaller version that runs in about a minute")
    p.add_argument("--steps", type=int, help="training steps per model (default: 450, --quick: 60)")
    p.add_argument("--budget-seconds", type=float, help="stop each model's training after this many seconds")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list model names")
    p.set_defaults(func=cmd_models)

    add_top_level_subcommands(sub)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)

    p = sub.add_parser("bench", help="benchmarks (see euclip bench geometry --help)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # euclip's own messages at INFO; other libraries' (OpenCLIP logs every tokenizer lookup) only from WARNING.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("euclip").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback from deep inside the library (--verbose keeps it).
        if args.verbose:
            raise
        print(f"euclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("euclip: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        # A diverged run (NonFiniteLossError) is one clear line too, with its own exit code; other
        # runtime errors are bugs and keep their traceback.
        from euclip.train.loop import NonFiniteLossError

        if not isinstance(e, NonFiniteLossError):
            raise
        print(f"euclip: training diverged: {e}", file=sys.stderr)
        return 3
