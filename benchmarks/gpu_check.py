"""Short real training runs on one GPU: throughput, peak memory and loss trend per preset and loss (see gpu_check.sh).

Each euclip run trains ``--model`` on the synthetic data in this process, through
:func:`euclip.train.loop.train` (the trainer ``euclip train`` runs). Synthetic images are rendered at
``--render-size`` by the DataLoader workers and upsampled to the model's size on the GPU: rendering at 224 px
runs at ~200 samples/s per core, too slow to feed a ViT-B/16 on an H200 (thousands of samples/s), while
64 px renders ~7x faster. ``data`` is the share of the run spent waiting for batches: well above a few
percent means the numbers measure the data pipeline, not the GPU.

The plan, in order of priority (a run that would start after ``--time-budget`` seconds is skipped and listed
as such, so that the table always comes out):

1. every preset with the contrastive loss;
2. the baseline: OpenCLIP's own trainer (``open_clip_train.main``, compiled, synthetic data, the same model,
   batch and precision; ``--openclip``), via ``benchmarks/trainer_vs_openclip.py``;
3. every preset with the sigmoid loss (``--siglip``);
4. ``euclip bench loss`` at ``--loss-batch`` pairs (the losses' time and memory against OpenCLIP's);
5. ``--compile``: the euclip preset with ``--torchcompile``;
6. ``--extra-steps``: the euclip preset in the other precisions (amp fp16, pure bf16, fp32).

Prints one table of the training runs (samples/s at steady state, the first third of the steps left out, and
as a ratio to the OpenCLIP baseline), then the loss benchmark's own table.

Exit status: 0 when every run that started finished with finite losses, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from euclip.train.config import resolve_config
from euclip.train.loop import train

REPO = Path(__file__).resolve().parents[1]
# Rough seconds a run needs beyond its steps (model build, workers, first-step kernels); compilation more.
START_UP_S, COMPILE_S = 20.0, 150.0


def run_one(name: str, options: dict, out: Path, cleanup: bool) -> dict:
    """Train once; returns the summary plus the loss trend and the steady-state throughput."""
    run_dir = out / name.replace("/", "-")
    start = time.perf_counter()
    summary = train(resolve_config({**options, "output": str(run_dir), "overwrite": True}))  # a rerun replaces it
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    steady = [m["samples_per_s"] for m in metrics[len(metrics) // 3:]]  # past warm-up (cuDNN, allocator, compile)
    if cleanup:
        shutil.rmtree(run_dir, ignore_errors=True)  # a ViT-B/16 checkpoint with AdamW state is ~1.8 GB
    return {**summary, "name": name, "wall_s": time.perf_counter() - start, "first_loss": losses[0],
            "last_loss": losses[-1], "steady_samples_per_s": statistics.median(steady) if steady else float("nan"),
            "data_share": summary["data_wait_seconds"] / max(summary["train_seconds"], 1e-9)}


def run_openclip(args: argparse.Namespace, out: Path) -> dict:
    """OpenCLIP's trainer, compiled, on its synthetic data (``benchmarks/trainer_vs_openclip.py``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import trainer_vs_openclip

    options = argparse.Namespace(steps=args.steps, skip_steps=args.steps // 3, batch_size=args.batch_size,
                                 model=args.openclip_model or args.model, image_size=args.image_size or 224,
                                 precision=args.precision, device=args.device, workers=args.workers, lr=5e-4, wd=0.2,
                                 warmup=max(args.steps // 5, 1), threads=None, timeout=args.time_budget)
    start = time.perf_counter()
    r = trainer_vs_openclip.run_openclip(options, out, compile_=True)
    return {"name": "OpenCLIP (compiled)", "loss_name": "contrastive", "steps": args.steps,
            "global_batch_size": args.batch_size, "steady_samples_per_s": r["samples_per_s"],
            "data_share": r["data_share"], "wall_s": time.perf_counter() - start}


def run_loss_bench(args: argparse.Namespace) -> str:
    """``euclip bench loss`` in a fresh interpreter (its CPU memory rows need one per row anyway)."""
    command = [sys.executable, "-m", "euclip.bench", "loss", "--device", args.device, "--batch-sizes",
               str(args.loss_batch), "--repeats", str(args.loss_repeats)]
    if args.loss_rows:
        command += ["--only", *args.loss_rows]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.time_budget)
    if proc.returncode != 0:
        raise RuntimeError(f"euclip bench loss failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def table(results: list[dict], skipped: list[tuple[str, str]]) -> str:
    """Markdown: one row per training run, samples/s and the ratio to the OpenCLIP baseline."""
    base = next((r["steady_samples_per_s"] for r in results if r["name"].startswith("OpenCLIP")), None)
    lines = ["| run | loss | steps | batch | samples/s (run) | samples/s (steady) | × OpenCLIP compiled | data | "
             "peak GB | loss first → last | wall s |", "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for r in results:
        ratio = f"{r['steady_samples_per_s'] / base:.2f}" if base else "–"
        run_sps = f"{r['samples_per_s']:.0f}" if "samples_per_s" in r else "–"
        peak = f"{r['peak_memory_gb']:.1f}" if "peak_memory_gb" in r else "–"
        trend = "–"
        if "first_loss" in r:
            trend = f"{r['first_loss']:.3f} → {r['last_loss']:.3f}" + ("" if r["last_loss"] < r["first_loss"]
                                                                       else " (NOT down)")
        lines.append(f"| {r['name']} | {r.get('loss_name', 'contrastive')} | {r['steps']} | {r['global_batch_size']} "
                     f"| {run_sps} | {r['steady_samples_per_s']:.0f} | {ratio} | {100 * r['data_share']:.1f} % | "
                     f"{peak} | {trend} | {r['wall_s']:.0f} |")
    lines += [f"| {name} | skipped: {why} | | | | | | | | | |" for name, why in skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--precision", default="amp_bf16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    p.add_argument("--render-size", type=int, default=None, help="synthetic render size (default: the image size)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--presets", nargs="+", default=["clip", "euclip", "meru"])
    p.add_argument("--losses", nargs="+", default=["contrastive", "sigmoid"], choices=["contrastive", "sigmoid"])
    p.add_argument("--openclip", action="store_true", help="the OpenCLIP trainer baseline (compiled)")
    p.add_argument("--openclip-model", default=None, help="OpenCLIP's model for the baseline (default: --model)")
    p.add_argument("--loss-batch", type=int, default=0, help="pairs for `euclip bench loss` (0: skip it)")
    p.add_argument("--loss-repeats", type=int, default=3)
    p.add_argument("--loss-rows", nargs="+", default=None, help="`euclip bench loss --only` prefixes")
    p.add_argument("--extra-steps", type=int, default=10,
                   help="steps of the extra precision runs (amp fp16, pure bf16, fp32; euclip preset); 0: none")
    p.add_argument("--compile", action="store_true", help="also a --torchcompile run (euclip preset)")
    p.add_argument("--time-budget", type=float, default=540, help="seconds; later runs that would not fit are skipped")
    p.add_argument("--output", default=None, help="run folder (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use DEVICE=cpu for the CPU fallback", file=sys.stderr)
        return 1

    common = dict(model=args.model, device=args.device, precision=args.precision, steps=args.steps,
                  batch_size=args.batch_size, image_size=args.image_size, synthetic_render_size=args.render_size,
                  workers=args.workers, warmup=max(args.steps // 5, 1), lr=5e-4, log_every_steps=1,
                  save_every_steps=10**9, keep_checkpoints=1, progress=False,
                  train_num_samples=max(50_000, args.batch_size * args.steps))
    skipped: list[tuple[str, str]] = []  # (run, why)
    # (name, kind, options, loss name, seconds it needs beyond its steps)
    plan: list[tuple[str, str, dict, str, float]] = [
        (preset, "euclip", {**common, "preset": preset}, "contrastive", START_UP_S) for preset in args.presets
        if "contrastive" in args.losses]
    if args.openclip:
        plan.append(("OpenCLIP (compiled)", "openclip", {}, "contrastive", COMPILE_S))
    if "sigmoid" in args.losses:  # --siglip: the sigmoid loss with SigLIP's initial logit scale and bias
        plan += [(f"{preset}/sigmoid", "euclip", {**common, "preset": preset, "siglip": True}, "sigmoid",
                  START_UP_S) for preset in args.presets]
    if args.loss_batch:
        plan.append((f"euclip bench loss, B={args.loss_batch}", "loss-bench", {}, "", 60.0))
    if args.compile:
        plan.append(("euclip/compiled", "euclip", {**common, "preset": "euclip", "torchcompile": True},
                     "contrastive", COMPILE_S))
    if args.extra_steps:
        for precision in ("amp", "pure_bf16", "fp32"):
            if precision != args.precision:
                plan.append((f"euclip/{precision}", "euclip", {**common, "preset": "euclip", "precision": precision,
                                                             "steps": args.extra_steps}, "contrastive", START_UP_S))

    started = time.perf_counter()
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"model {args.model}, precision {args.precision}, batch {args.batch_size}, image size "
          f"{args.image_size or 'default'}, rendered at {args.render_size or 'image size'}, {args.workers} workers, "
          f"time budget {args.time_budget:.0f} s", flush=True)
    failed, results, loss_table = [], [], None
    seconds_per_step = None  # measured by the first run, to estimate the others
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        out = Path(args.output or tmp)
        for name, kind, options, loss_name, overhead in plan:
            steps = options.get("steps", args.steps)
            need = overhead + (seconds_per_step or 0.0) * steps
            if time.perf_counter() - started + need > args.time_budget:
                skipped.append((name, f"about {need:.0f} s needed, beyond the time budget"))
                print(f"{name}: skipped, about {need:.0f} s needed, "
                      f"{args.time_budget - (time.perf_counter() - started):.0f} s left", flush=True)
                continue
            try:
                if kind == "euclip":
                    r = run_one(name, options, out, cleanup=args.output is None)
                    r["loss_name"] = loss_name
                    if seconds_per_step is None and "torchcompile" not in options:
                        seconds_per_step = r["train_seconds"] / max(r["steps"], 1)
                    if r["nonfinite_steps"] or not all(map(math.isfinite, (r["first_loss"], r["last_loss"]))):
                        failed.append(f"{name}: non-finite loss ({r['nonfinite_steps']} non-finite steps)")
                elif kind == "openclip":
                    r = run_openclip(args, out)
                else:
                    loss_table = run_loss_bench(args)
                    print(f"{name}: done in {time.perf_counter() - started:.0f} s (table below)", flush=True)
                    continue
                results.append(r)
                print(f"{name}: {r['steady_samples_per_s']:.0f} samples/s (steady), {r['wall_s']:.0f} s", flush=True)
            except Exception as e:  # noqa: BLE001 - report every run, then fail at the end
                traceback.print_exc()
                print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
                failed.append(f"{name}: {type(e).__name__}: {e}")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    elapsed = time.perf_counter() - started
    print("\n" + table(results, skipped))
    if loss_table:
        print("\n" + loss_table)
    if failed:
        print(f"gpu_check FAILED after {elapsed:.0f} s:\n  " + "\n  ".join(failed))
        return 1
    print(f"gpu_check OK in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
