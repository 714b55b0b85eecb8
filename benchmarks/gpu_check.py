"""Short real training runs on one GPU: throughput, peak memory and loss trend per preset (see gpu_check.sh).

Each run trains ``--model`` on the synthetic data in this process, through :func:`euclip.train.loop.train`
(the trainer ``euclip train`` runs), and is summarised on one line. Synthetic images are rendered at
``--render-size`` by the DataLoader workers and upsampled to the model's size on the GPU: rendering at 224 px
runs at ~200 samples/s per core, too slow to feed a ViT-B/16 on an H200 (thousands of samples/s), while
64 px renders ~7x faster. ``data_wait`` is the share of the run spent waiting for batches: well above a
few percent means the numbers measure the data pipeline, not the GPU.

Exit status: 0 when every run finished with finite losses, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from euclip.train.config import resolve_config
from euclip.train.loop import train


def run_one(name: str, options: dict, out: Path, cleanup: bool) -> dict:
    """Train once; returns the summary plus the loss trend and the steady-state throughput."""
    run_dir = out / name
    start = time.perf_counter()
    summary = train(resolve_config({**options, "output": str(run_dir)}))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics]
    steady = [m["samples_per_s"] for m in metrics[len(metrics) // 3:]]  # past warm-up (cuDNN, allocator)
    if cleanup:
        shutil.rmtree(run_dir, ignore_errors=True)  # a ViT-B/16 checkpoint with AdamW state is ~1.8 GB
    return {**summary, "name": name, "wall_s": time.perf_counter() - start, "first_loss": losses[0],
            "last_loss": losses[-1], "steady_samples_per_s": statistics.median(steady) if steady else float("nan")}


def describe(r: dict) -> str:
    peak = f"{r['peak_memory_gb']:7.1f}" if "peak_memory_gb" in r else "      -"
    trend = "down" if r["last_loss"] < r["first_loss"] else "NOT down"
    return (f"{r['name']:<22} {r['steps']:>5} {r['global_batch_size']:>6} {r['samples_per_s']:>10.0f} "
            f"{r['steady_samples_per_s']:>10.0f} {100 * r['data_wait_seconds'] / r['train_seconds']:>8.1f}% {peak} "
            f"{r['first_loss']:>8.3f} -> {r['last_loss']:<8.3f} {trend:<8} {r['wall_s']:>6.0f}")


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
    p.add_argument("--extra-steps", type=int, default=10,
                   help="steps of the extra precision runs (amp fp16, pure bf16, fp32; euclip preset); 0: none")
    p.add_argument("--compile", action="store_true", help="also a --torchcompile run (euclip preset)")
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
    plan = [(preset, {**common, "preset": preset}) for preset in args.presets]
    if args.extra_steps:
        for precision in ("amp", "pure_bf16", "fp32"):
            if precision != args.precision:
                plan.append((f"euclip/{precision}", {**common, "preset": "euclip", "precision": precision,
                                                     "steps": args.extra_steps}))
    if args.compile:
        plan.append(("euclip/compiled", {**common, "preset": "euclip", "torchcompile": True}))

    started = time.perf_counter()
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}")
    print(f"model {args.model}, precision {args.precision}, batch {args.batch_size}, image size "
          f"{args.image_size or 'default'}, rendered at {args.render_size or 'image size'}, {args.workers} workers")
    print(f"{'run':<22} {'steps':>5} {'batch':>6} {'samples/s':>10} {'steady/s':>10} {'data_wait':>9} {'peak_GB':>7} "
          f"{'loss first -> last':>20} {'trend':<8} {'wall_s':>6}")
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        out = Path(args.output or tmp)
        for name, options in plan:
            try:
                r = run_one(name.replace("/", "-"), options, out, cleanup=args.output is None)
                r["name"] = name
                print(describe(r), flush=True)
                if r["nonfinite_steps"] or not all(map(math.isfinite, (r["first_loss"], r["last_loss"]))):
                    failed.append(f"{name}: non-finite loss ({r['nonfinite_steps']} non-finite steps)")
            except Exception as e:  # noqa: BLE001 - report every run, then fail at the end
                traceback.print_exc()
                print(f"{name:<22} FAILED: {type(e).__name__}: {e}", flush=True)
                failed.append(f"{name}: {type(e).__name__}: {e}")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    elapsed = time.perf_counter() - started
    if failed:
        print(f"gpu_check FAILED after {elapsed:.0f} s:\n  " + "\n  ".join(failed))
        return 1
    print(f"gpu_check OK in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
