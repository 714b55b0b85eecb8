"""The ``euclip`` command: train, eval, demo, report, bench, models, ...

Flags follow OpenCLIP's names where the concept is the same (``--train-data``, ``--batch-size``, ``--lr``,
``--wd``, ``--warmup``, ``--precision``, ``--local-loss``, ...), plus the geometry flags. They are generated from
the typed configs (:mod:`euclip.cli.flags`) and parsed into them here, at the edge; nothing below sees argparse.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from euclip.runs import set_command_line

# Modules that add sub-commands: each has ``register(subparsers)``, which adds its parser(s) and sets ``func``
# (taking the parsed arguments, returning the exit code). Imported only when the parser is built.
COMMAND_MODULES: tuple[str, ...] = ("euclip.cli.train", "euclip.cli.evaluate", "euclip.cli.tools", "euclip.cli.interop",
                                  "euclip.cli.study", "euclip.cli.index")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="euclip", description="Contrastive language-image pre-training under Euclidean, elliptic and "
                                   "hyperbolic geometries (CLIP, EuCLIP, MERU).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `euclip bench` hands its arguments to euclip.bench's own parser; argparse's REMAINDER would not take a leading
    # option (`euclip bench -h`), so what no euclip parser knows goes to it.
    args, unknown = parser.parse_known_args(argv)
    set_command_line(["euclip", *(sys.argv[1:] if argv is None else argv)])
    if getattr(args, "bench_args", None) is not None:
        args.bench_args = unknown + args.bench_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
        # A diverged run (NonFiniteLossError) is one clear line too, with its own exit code; other runtime errors
        # are bugs and keep their traceback.
        from euclip.train.log import NonFiniteLossError

        if not isinstance(e, NonFiniteLossError):
            raise
        print(f"euclip: training diverged: {e}", file=sys.stderr)
        return 3
