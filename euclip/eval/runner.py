"""Running registered evaluations on a model or a run directory, and the results they write.

:func:`evaluate` runs evaluations (all that apply to the data, or the named ones) with one shared
:class:`~euclip.eval.registry.EvalContext`, so the images are embedded once. :func:`evaluate_run` does that for a
run directory and writes ``RUN/results.json``::

    {"model": {...}, "data": {...}, "settings": {...},
     "evaluations": {"zeroshot": {...}, "retrieval": {...}, ...},   # each evaluation's full result
     "metrics": {"zeroshot.top1": 0.93, "retrieval.image_to_text_R@1": 0.1, ...},   # every registered Metric
     "seconds": {"zeroshot": 1.2, ...}}

A later call merges its evaluations into an existing ``results.json`` of the same data, so ``euclip train``'s
zero-shot evaluation and a later ``euclip eval all`` end up in one file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from euclip.data.sources import DataSpec
from euclip.eval.registry import EvalContext, EvalSettings, NotApplicable, evaluations, get_evaluation
from euclip.model import load_model, resolve_device
from euclip.runs import RunDir, checkpoint_path, read_json, write_json

__all__ = ["evaluate", "evaluate_run", "flat_metrics", "model_record"]

log = logging.getLogger(__name__)


def model_record(path: str | Path | None, model) -> dict:
    """What identifies the evaluated model in every JSON result."""
    from euclip.eval.embed import curvature_of

    record = {"config": model.config_dict(), "curvature": curvature_of(model),
              "logit_scale": float(model.logit_scale.detach())}
    if path is not None:
        run = RunDir.of(path)
        # Another code's run directory (converted on loading) has no checkpoints/latest.pt: the folder identifies it.
        checkpoint = checkpoint_path(path) if Path(path).is_file() or run.has_checkpoint() else Path(path)
        record = {"path": str(path), "checkpoint": str(checkpoint), "run_dir": str(run.path), **record}
    return record


def applicable(names: Sequence[str] | None, spec: DataSpec) -> list[str]:
    """The evaluations to run on ``spec``: the named ones (each must apply), or every one that applies."""
    if names is None:
        return [name for name, e in evaluations().items() if e.applies_to(spec)]
    for name in names:
        evaluation = get_evaluation(name)
        if not evaluation.applies_to(spec):
            has = spec.source.capabilities(spec)
            raise ValueError(f"evaluation {name!r} needs data with {', '.join(sorted(evaluation.requires - has))}; "
                             f"--dataset-type {spec.dataset_type} ({spec.data}) has {', '.join(sorted(has))}")
    return list(names)


def evaluate(model, spec: DataSpec | None = None, names: Sequence[str] | None = None,
             settings: EvalSettings | None = None, device: torch.device | str = "cpu", progress: bool = True,
             run: RunDir | None = None) -> dict:
    """Run evaluations of ``model`` on ``spec``; returns ``{"evaluations", "metrics", "seconds", "data",
    "settings"}``.

    Args:
        model: a GeometricCLIP in eval mode.
        spec: the data (default: 1,000 synthetic test samples).
        names: registered evaluation names (default: every evaluation that applies to the data).
        settings: evaluation settings.
        device: the model's device.
        progress: progress bars.
        run: the model's run directory (for settings that default to the run's, e.g. the cones' K).
    """
    spec = spec or DataSpec()
    ctx = EvalContext(model, spec, settings or EvalSettings(), torch.device(device), progress, run)
    results, seconds = {}, {}
    for name in applicable(names, spec):
        start = time.perf_counter()
        try:
            results[name] = get_evaluation(name).fn(ctx)
        except NotApplicable as exn:
            if names is not None:
                raise
            log.info("%s skipped: %s", name, exn)
            continue
        seconds[name] = time.perf_counter() - start
    return {"data": spec.describe(), "settings": {**asdict(ctx.settings), "min_radius": ctx.min_radius},
            "evaluations": results, "metrics": flat_metrics(results), "seconds": seconds}


def flat_metrics(results: dict[str, dict]) -> dict[str, object]:
    """``{"<evaluation>.<metric key>": value}`` of every registered metric that ``results`` defines."""
    registry = evaluations()
    flat = {}
    for name, result in results.items():
        if name not in registry:
            continue
        for metric in registry[name].metrics:
            value = metric.value(result)
            if value is not None:
                flat[f"{name}.{metric.key}"] = value
    return flat


def evaluate_run(path: str | Path, names: Sequence[str] | None = None, spec: DataSpec | None = None,
                 settings: EvalSettings | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Evaluate the model of a run directory (or checkpoint) and write ``RUN/results.json``; returns its content.

    Evaluations of the same data already in ``results.json`` are kept unless evaluated again.
    """
    dev = resolve_device(device)
    model = load_model(path, dev)
    run = RunDir.of(path)
    spec = spec or DataSpec()
    out = evaluate(model, spec, names, settings, dev, progress, run)
    previous = read_json(run.results) or {}
    if previous.get("data") == out["data"] and isinstance(previous.get("evaluations"), dict):
        out["evaluations"] = {**previous["evaluations"], **out["evaluations"]}
        out["seconds"] = {**previous.get("seconds", {}), **out["seconds"]}
        out["metrics"] = flat_metrics(out["evaluations"])
    out = {"model": model_record(path, model), **out}
    write_json(out, run.results)
    return out
