"""``euclip train``: flags generated from :class:`~euclip.train.config.TrainConfig` and :class:`~euclip.model.ModelConfig`."""

from __future__ import annotations

import argparse
import json

from euclip.cli.flags import add_config_flags, given

GROUPS = {"geometry": "geometry and loss (defaults: EuCLIP's, or the preset's)", "data": "data",
          "run": "run", "optimisation": "optimisation", "performance": "performance",
          "validation": "validation during training", "model": "model", "bookkeeping": "bookkeeping"}

EXAMPLES = """examples:
  euclip train --preset euclip --steps 2000                    # synthetic data, EuCLIP
  euclip train --geometry hyperbolic --logit squared --final-ln --entailment-weight 0.2 --steps 2000
  euclip train --dataset-type csv --train-data pairs.tsv --val-data val.tsv --preset meru --epochs 5
  euclip train --output runs/meru --resume latest              # continue a run from its folder

A plain --geometry NAME is also a paper-code alias: 'euclidean' and 'hyperbolic' mean the negative-distance logit
there (add --logit squared for EuCLIP's); the resolved settings are printed before training starts."""


def register(subparsers) -> None:
    from euclip.train.config import TrainConfig

    p = subparsers.add_parser("train", help="train a model", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Train a GeometricCLIP: OpenCLIP towers with any embedding geometry, logit, "
                                          "final-LayerNorm setting and entailment loss.")
    groups = add_config_flags(p, [TrainConfig], GROUPS)
    groups["geometry"].add_argument("--siglip", action="store_true", default=None,
                                    help="OpenCLIP's --siglip: the sigmoid loss, with log t = log 10 and bias −10 at "
                                         "initialisation")
    groups["run"].add_argument("--no-eval", action="store_true",
                               help="skip the zero-shot evaluation after training (synthetic data)")
    p.set_defaults(func=run)


def default_output(options: dict) -> str:
    name = options.get("preset") or options.get("geometry") or "euclip"
    return f"runs/{name}"


def run(args: argparse.Namespace) -> int:
    from euclip.train.config import TrainConfig, resolve_config
    from euclip.train.distributed import is_main_process
    from euclip.train.loop import train

    options = {**given(args, TrainConfig), "siglip": args.siglip}
    options.setdefault("output", default_output(options))
    if options.get("steps") is None and options.get("epochs") is None:
        options["epochs"] = 1
    cfg = resolve_config(options)
    main = is_main_process()  # under torchrun every rank runs this
    if main:
        print(f"[train] {cfg.describe()} → {cfg.output}", flush=True)
    summary = train(cfg)
    if main and not args.no_eval and cfg.dataset_type == "synthetic":
        from euclip.data.sources import DataSpec
        from euclip.eval.runner import evaluate_run

        spec = DataSpec(num_samples=cfg.zeroshot_samples)
        results = evaluate_run(cfg.output, names=["zeroshot"], spec=spec, device=cfg.device, progress=cfg.progress)
        summary.update({k: v for k, v in results["metrics"].items() if k.startswith("zeroshot.")})
    if main:
        print(json.dumps(summary, indent=2))
    return 0
