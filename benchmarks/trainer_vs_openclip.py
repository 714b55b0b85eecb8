"""euclip's trainer against the field's: ``euclip train`` and OpenCLIP's own ``open_clip_train.main``, side by side.

    python benchmarks/trainer_vs_openclip.py                      # CPU: ViT-S-32 at 64 px, batch 32, fp32
    python benchmarks/trainer_vs_openclip.py --compile            # also both with --torchcompile
    python benchmarks/trainer_vs_openclip.py --device cuda --model ViT-B-16 --image-size 224 --batch-size 256 \\
        --precision amp_bf16 --workers 8

The same towers (an OpenCLIP model config both build from OpenCLIP's registry, with random weights: ViT-S-32
by default, its images forced to ``--image-size``), batch, precision, one process, synthetic input
(OpenCLIP's ``--dataset-type synthetic``: one fixed image through its training transform; euclip's rendered
shapes at the image size), the same optimizer settings, no evaluation and no checkpoints. Each trainer runs in a
fresh process and logs every step; the throughput is the median samples/s of the steps after
``--skip-steps`` (start-up, the first allocations and, with ``--compile``, compilation excluded). Both
trainers' per-step times include waiting for data (``data`` column: its share), so the input pipelines
are part of the comparison, as they are of a training run; here they are a small share.

Prints a Markdown table: samples/s of each trainer and euclip's ratio to OpenCLIP (> 1: euclip is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# OpenCLIP's per-step log line: "... Data (t): 0.012 Batch (t): 0.950, 33.6842/s, 33.6842/s/gpu ..."
OPENCLIP_STEP = re.compile(r"Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+), ([0-9.eE+-]+)/s")


def _env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # random weights: nothing may be downloaded
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run(command: list[str], env: dict[str, str], log: Path, timeout: float) -> str:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    log.write_text(f"$ {' '.join(command)}\n\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"{command[2]} failed ({proc.returncode}), see {log}:\n{proc.stderr[-3000:]}")
    print(f"  {' '.join(command[1:4])}...: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return proc.stdout + proc.stderr


def run_openclip(args: argparse.Namespace, out: Path, compile_: bool) -> dict:
    """OpenCLIP's trainer for ``args.steps`` steps (one epoch of synthetic samples); per-step samples/s from its log."""
    name = "openclip" + ("-compiled" if compile_ else "")
    command = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "synthetic",
               "--train-num-samples", str(args.steps * args.batch_size), "--epochs", "1",
               "--batch-size", str(args.batch_size), "--model", args.model, "--force-image-size", str(args.image_size),
               "--precision", args.precision, "--device", args.device, "--workers", str(args.workers),
               "--lr", str(args.lr), "--wd", str(args.wd), "--warmup", str(args.warmup), "--seed", "0",
               "--log-every-n-steps", "1", "--save-frequency", "0", "--zeroshot-frequency", "0",
               "--val-frequency", "0", "--report-to", "", "--logs", str(out), "--name", name]
    if compile_:
        command.append("--torchcompile")
    text = _run(command, _env(args.threads), out / f"{name}.log", args.timeout)
    steps = [(float(d), float(b), float(s)) for d, b, s in OPENCLIP_STEP.findall(text)]
    if len(steps) != args.steps:
        raise RuntimeError(f"expected {args.steps} step lines in OpenCLIP's log, found {len(steps)}")
    steady = steps[args.skip_steps:]
    # "Data (t)" and "Batch (t)" are running means over the epoch; the samples/s is the last step's own.
    return {"trainer": f"OpenCLIP {_version('open_clip_torch')} ({'compiled' if compile_ else 'eager'})",
            "samples_per_s": statistics.median(s for _, _, s in steady), "data_share": steps[-1][0] / steps[-1][1]}


def run_euclip(args: argparse.Namespace, out: Path, preset: str, loss: str, compile_: bool) -> dict:
    """``euclip train`` for ``args.steps`` steps; per-step samples/s from its metrics.jsonl."""
    name = f"euclip-{preset}-{loss}" + ("-compiled" if compile_ else "")
    run = out / name
    command = [sys.executable, "-m", "euclip.cli", "train", "--preset", preset, "--model", args.model,
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--precision", args.precision, "--device", args.device, "--workers", str(args.workers),
               "--lr", str(args.lr), "--wd", str(args.wd), "--warmup", str(args.warmup), "--seed", "0",
               "--log-every-steps", "1", "--save-every-steps", str(10**9), "--no-eval", "--no-progress",
               "--output", str(run), "--overwrite"]  # a rerun into a kept --output replaces its runs
    if loss == "sigmoid":
        command.append("--siglip")  # the sigmoid loss with SigLIP's initial logit scale and bias
    if compile_:
        command.append("--torchcompile")
    _run(command, _env(args.threads), out / f"{name}.log", args.timeout)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    steady = [m["samples_per_s"] for m in metrics[args.skip_steps:]]
    return {"trainer": f"euclip {preset}" + (f", {loss} loss" if loss != "contrastive" else "")
            + f" ({'compiled' if compile_ else 'eager'})",
            "samples_per_s": statistics.median(steady),
            "data_share": summary["data_wait_seconds"] / max(summary["train_seconds"], 1e-9)}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def table(rows: list[dict], baselines: dict[str, float]) -> str:
    lines = ["| trainer | samples/s | × OpenCLIP | data |", "|---|--:|--:|--:|"]
    for r in rows:
        base = baselines["compiled" if "(compiled)" in r["trainer"] else "eager"]
        lines.append(f"| {r['trainer']} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f} | "
                     f"{100 * r['data_share']:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-S-32", help="an OpenCLIP model config name (random weights)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--skip-steps", type=int, default=4, help="first steps left out of the median (start-up)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both trainers (default: torch's)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--wd", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--presets", nargs="+", default=["clip"], help="euclip presets to run (clip = OpenCLIP's model)")
    p.add_argument("--losses", nargs="+", default=["contrastive"], help="euclip losses (contrastive, sigmoid)")
    p.add_argument("--compile", action="store_true", help="also both trainers with --torchcompile")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per trainer run")
    p.add_argument("--output", default=None, help="keep the runs and logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.skip_steps >= args.steps:
        p.error("--skip-steps must be below --steps")

    rows, baselines = [], {}
    with tempfile.TemporaryDirectory(prefix="trainer_vs_openclip-") as tmp:
        out = Path(args.output or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for compile_ in (False, True) if args.compile else (False,):
            openclip = run_openclip(args, out, compile_)
            baselines["compiled" if compile_ else "eager"] = openclip["samples_per_s"]
            rows.append(openclip)
            for preset in args.presets:
                for loss in args.losses:
                    rows.append(run_euclip(args, out, preset, loss, compile_))
    import torch

    machine = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"CPU, {args.threads or os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} threads")
    print(f"Trainer throughput, {args.model} at {args.image_size} px, batch {args.batch_size}, {args.precision}, "
          f"{args.workers} data workers, one process; median samples/s of steps {args.skip_steps + 1}-{args.steps}; "
          f"{machine}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.\n")
    print(table(rows, baselines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
