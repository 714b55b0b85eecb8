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
  euclip train --output runs/meru --resume latest --lr 1e-4    # ...with a lower learning rate (logged)
  euclip train --output runs/meru --overwrite --preset meru    # start that folder's run over

A plain --geometry NAME is also a paper-code alias: 'euclidean' and 'hyperbolic' mean the negative-distance logit
there (add --logit squared for EuCLIP's); the resolved settings are printed before training starts.

A stop signal (SIGTERM, SIGINT, SIGUSR1), sent to the trainer or to its whole process group as schedulers do,
checkpoints the last finished step and exits with 128 + the signal's number (SIGTERM: 143); resume with
--resume latest. A run folder is locked while a trainer uses it."""


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


def _resumed_config(options: dict):
    """On ``--resume``, the config the checkpoint was trained with: the flags not given keep its values (not the
    defaults'), so that ``--resume latest --lr 1e-4`` changes the learning rate and nothing else."""
    if not options.get("resume"):
        return None
    from euclip.train.checkpoint import resume_checkpoint
    from euclip.train.config import TrainConfig

    _, checkpoint = resume_checkpoint(options["resume"], options["output"], mmap=True)  # the config, not the tensors
    return TrainConfig.from_dict(checkpoint["config"])


def run(args: argparse.Namespace) -> int:
    from euclip.train.config import TrainConfig, resolve_config
    from euclip.train.distributed import is_main_process
    from euclip.train.loop import train

    options = {**given(args, TrainConfig), "siglip": args.siglip}
    options.setdefault("output", default_output(options))
    base = _resumed_config(options)
    if base is None and options.get("steps") is None and options.get("epochs") is None:
        options["epochs"] = 1
    cfg = resolve_config(options, base)
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
