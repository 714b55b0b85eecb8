"""Benchmarks, as subcommands: ``python -m euclip.bench geometry [--batch-sizes 4096 16384] [--device cuda]``.

``geometry``: forward + backward time and peak memory of the full contrastive loss
(:func:`euclip.losses.contrastive_loss`) for every geometry × logit, plus MERU-style (hyperbolic
distance + entailment) and EuCLIP-style (euclidean squared + entailment) rows, each also as a ratio to
the elliptic + inner (cosine, CLIP) loss. Prints a Markdown table.

Time: the median of ``--repeats`` forward + backward passes (synchronised on CUDA). The configurations
run round-robin in one process, so that a change in the machine's load over the run (other jobs on a
shared machine) hits every row alike instead of skewing the ratios.

Peak memory, over one forward + backward, minus what was allocated before it (the inputs):
    * CUDA: ``torch.cuda.max_memory_allocated()``.
    * CPU: PyTorch has no peak counter for host memory, so each configuration runs in a fresh
      subprocess that resets the kernel's high-water mark of its resident set (``/proc/self/clear_refs``),
      runs the step and reads ``VmHWM`` from ``/proc/self/status`` (where ``clear_refs`` is not writable:
      ``ru_maxrss``, which can only over-estimate). Tensors this large come from ``mmap`` and go back to the
      OS when freed, so this is the step's peak, plus allocator overhead, measured alike for every row.

``loss``: the same for the configured losses at large batches, as ratios against OpenCLIP's own losses
measured in the same run: the contrastive loss (every geometry × logit, MERU and EuCLIP with entailment)
against ``open_clip.loss.ClipLoss``, and the sigmoid loss against ``open_clip.loss.SigLipLoss``, both
with euclip's default ``block_size="auto"`` (blocked above :data:`euclip.losses.blocked.BLOCK_ENTRIES`).
``euclip bench loss --batch-sizes 8192 16384`` (CPU) or ``--device cuda --batch-sizes 32768``.

``sweep``: samples per second of the sweep's cells (its recipe, the tiny model) on a CPU, one cell on every core
against several single-threaded cells at once (what ``euclip sweep --jobs auto`` does), as a ratio to the former:
``euclip bench sweep --jobs 2``.

Adding a benchmark: write ``_bench_name(args)`` and ``_add_name_arguments(parser)`` and register both in
:data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

# Nothing heavy at import time: torch is imported inside the functions that run a benchmark.


@dataclass(frozen=True)
class LossConfig:
    """One row of the geometry benchmark: a (geometry, logit) pair and an entailment weight."""

    label: str
    geometry: str
    logit: str
    entailment_weight: float = 0.0


BASELINE = LossConfig("elliptic + inner (CLIP, baseline)", "elliptic", "inner")

GEOMETRY_CONFIGS: tuple[LossConfig, ...] = (
    BASELINE,
    LossConfig("elliptic + distance", "elliptic", "distance"),
    LossConfig("elliptic + squared", "elliptic", "squared"),
    LossConfig("euclidean + inner", "euclidean", "inner"),
    LossConfig("euclidean + distance", "euclidean", "distance"),
    LossConfig("euclidean + squared", "euclidean", "squared"),
    LossConfig("hyperbolic + inner", "hyperbolic", "inner"),
    LossConfig("hyperbolic + distance", "hyperbolic", "distance"),
    LossConfig("hyperbolic + squared", "hyperbolic", "squared"),
    LossConfig("MERU: hyperbolic + distance + entailment 0.2", "hyperbolic", "distance", 0.2),
    LossConfig("EuCLIP: euclidean + squared + entailment 0.2", "euclidean", "squared", 0.2),
)


def _inputs(config: LossConfig, batch: int, dim: int, device: str, seed: int = 0):
    """Image and text embeddings on the manifold (leaves), a learnable logit scale and curvature."""
    import torch

    from euclip import geometry as geom

    generator = torch.Generator(device="cpu").manual_seed(seed)
    features = torch.randn(2, batch, dim, generator=generator).to(device)
    curvature = torch.tensor(1.0, device=device, requires_grad=True)
    if config.geometry == "hyperbolic":
        features = features * (1.5 / dim**0.5)  # tangent vectors of norm ~1.5, like MERU's α·f
    with torch.no_grad():
        points = geom.project(features, config.geometry, curvature)
    image = points[0].clone().requires_grad_(True)
    text = points[1].clone().requires_grad_(True)
    logit_scale = torch.tensor(10.0, device=device, requires_grad=True)
    return image, text, logit_scale, curvature


def _step(config: LossConfig, image, text, logit_scale, curvature) -> None:
    """One forward + backward of the full loss; gradients are dropped so that repeats do not accumulate."""
    from euclip.losses import contrastive_loss

    out = contrastive_loss(image, text, config.geometry, config.logit, logit_scale, curvature,
                           entailment_weight=config.entailment_weight)
    out.total.backward()
    for t in (image, text, logit_scale, curvature):
        t.grad = None


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_memory_here(config: LossConfig, batch: int, dim: int, device: str) -> float:
    """Peak bytes allocated by one forward + backward beyond its inputs, in this process.

    On CPU only meaningful in a fresh process (see the module docstring): use :func:`peak_memory`.
    """
    _step(config, *_inputs(config, 8, dim, device))  # warm up kernels, thread pools and the allocator
    inputs = _inputs(config, batch, dim, device)
    return _peak_bytes(lambda: _step(config, *inputs), device)


def _peak_bytes(run: Callable[[], object], device: str) -> float:
    """Peak bytes that ``run()`` allocates beyond what is allocated before it (CPU: peak RSS, see above)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    before = _proc_status_bytes("VmRSS")
    if _reset_peak_rss():
        run()
        peak = _proc_status_bytes("VmHWM")
    else:
        import resource

        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return float(max(peak - before, 0))


def peak_memory(config: LossConfig, batch: int, dim: int, device: str) -> float:
    """:func:`peak_memory_here`, in a fresh interpreter on CPU (its peak RSS then belongs to this step alone)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        return peak_memory_here(config, batch, dim, device)
    code = ("import json, sys; from euclip import bench; a = json.loads(sys.argv[1]); "
            "print(bench.peak_memory_here(bench.LossConfig(**a['config']), a['batch'], a['dim'], a['device']))")
    payload = json.dumps({"config": asdict(config), "batch": batch, "dim": dim, "device": device})
    result = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory benchmark of {config.label!r} at batch {batch} failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def step_times(configs: list[LossConfig], batch: int, dim: int, device: str, repeats: int) -> dict[str, float]:
    """Median forward + backward seconds of each configuration, run round-robin ``repeats`` times."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    inputs = {c.label: _inputs(c, batch, dim, device) for c in configs}
    for c in configs:  # warm-up
        _step(c, *inputs[c.label])
    times: dict[str, list[float]] = {c.label: [] for c in configs}
    for _ in range(repeats):
        for c in configs:
            sync()
            start = time.perf_counter()
            _step(c, *inputs[c.label])
            sync()
            times[c.label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def _format_table(results: dict[tuple[str, int], dict[str, float]], batch_sizes: list[int],
                  configs: list[LossConfig]) -> str:
    """Markdown table: one row per configuration; time and memory, absolute and ÷ baseline, per batch size."""
    header = ["loss"]
    for b in batch_sizes:
        header += [f"B={b} ms", f"B={b} time ×", f"B={b} peak MiB", f"B={b} mem ×"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    for config in configs:
        row = [config.label]
        for b in batch_sizes:
            r, base = results[(config.label, b)], results[(BASELINE.label, b)]
            row += [f"{1e3 * r['seconds']:.0f}", f"{r['seconds'] / base['seconds']:.2f}",
                    f"{r['peak_bytes'] / 2**20:.0f}", f"{r['peak_bytes'] / max(base['peak_bytes'], 1.0):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4096], help="batch sizes B (B×B logits)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward + backward passes per row (median)")
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL_PREFIX",
                        help="run only the rows whose label starts with one of these (the baseline always runs)")


def _bench_geometry(args: argparse.Namespace) -> None:
    """Time and peak memory of the contrastive loss for every geometry × logit, relative to CLIP's."""
    import torch

    configs = [c for c in GEOMETRY_CONFIGS
               if args.only is None or c is BASELINE or any(c.label.startswith(p) for p in args.only)]
    results: dict[tuple[str, int], dict[str, float]] = {}
    for batch in args.batch_sizes:
        seconds = step_times(configs, batch, args.dim, args.device, args.repeats)
        for config in configs:
            peak = peak_memory(config, batch, args.dim, args.device)
            results[(config.label, batch)] = {"seconds": seconds[config.label], "peak_bytes": peak}
            print(f"  {config.label}, B={batch}: {1e3 * seconds[config.label]:.0f} ms, {peak / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
    cuda = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    memory = "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM) of a fresh process per row"
    print(f"Contrastive loss, forward + backward, D={args.dim}, median of {args.repeats}; {machine}, "
          f"torch {torch.__version__}; memory: {memory}, beyond the inputs.\n")
    print(_format_table(results, args.batch_sizes, configs))


# --------------------------------------------------------------------------------------------------------------------
# loss: the configured losses against OpenCLIP's ClipLoss / SigLipLoss
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossRow:
    """One row of the loss benchmark: which loss, its (geometry, logit), entailment weight and block size.

    ``loss``: ``"contrastive"`` or ``"sigmoid"`` (euclip's), ``"clip"`` or ``"siglip"`` (OpenCLIP's baselines).
    """

    label: str
    loss: str
    geometry: str = "elliptic"
    logit: str = "inner"
    entailment_weight: float = 0.0
    block_size: int | str | None = "auto"

    @property
    def baseline(self) -> str:
        return "clip" if self.loss in ("contrastive", "clip") else "siglip"


def loss_rows(losses: tuple[str, ...] = ("contrastive", "sigmoid"), block_size: int | str | None = "auto"
              ) -> list[LossRow]:
    """The benchmark's rows: per loss, OpenCLIP's baseline, every geometry × logit, then MERU and EuCLIP."""
    rows = []
    for loss in losses:
        rows.append(LossRow(f"OpenCLIP {'ClipLoss' if loss == 'contrastive' else 'SigLipLoss'} (baseline)",
                            "clip" if loss == "contrastive" else "siglip"))
        rows += [LossRow(f"{loss}: {c.label.replace(' (CLIP, baseline)', ' (CLIP)')}", loss, c.geometry, c.logit,
                         c.entailment_weight, block_size) for c in GEOMETRY_CONFIGS]
    return rows


def _loss_inputs(row: LossRow, batch: int, dim: int, device: str, seed: int = 0):
    """:func:`_inputs` plus the sigmoid loss's bias (SigLIP's initial −10)."""
    import torch

    image, text, logit_scale, curvature = _inputs(LossConfig(row.label, row.geometry, row.logit), batch, dim,
                                                  device, seed)
    return image, text, logit_scale, torch.tensor(-10.0, device=device, requires_grad=True), curvature


def _loss_step(row: LossRow, image, text, logit_scale, logit_bias, curvature) -> None:
    """One forward + backward of the row's loss; gradients are dropped so that repeats do not accumulate."""
    if row.loss == "clip":
        from open_clip.loss import ClipLoss

        total = ClipLoss()(image, text, logit_scale)
    elif row.loss == "siglip":
        from open_clip.loss import SigLipLoss

        total = SigLipLoss()(image, text, logit_scale, logit_bias)
    elif row.loss == "contrastive":
        from euclip.losses import contrastive_loss

        total = contrastive_loss(image, text, row.geometry, row.logit, logit_scale, curvature,
                                 entailment_weight=row.entailment_weight, block_size=row.block_size).total
    else:
        from euclip.losses import sigmoid_loss

        total = sigmoid_loss(image, text, row.geometry, row.logit, logit_scale, logit_bias, curvature,
                             entailment_weight=row.entailment_weight, block_size=row.block_size).total
    total.backward()
    for t in (image, text, logit_scale, logit_bias, curvature):
        t.grad = None


def loss_peak_memory_here(row: LossRow, batch: int, dim: int, device: str) -> float:
    """Peak bytes of one forward + backward of ``row`` beyond its inputs, in this process (see :func:`peak_memory_here`)."""
    _loss_step(row, *_loss_inputs(row, 8, dim, device))  # warm-up
    inputs = _loss_inputs(row, batch, dim, device)
    return _peak_bytes(lambda: _loss_step(row, *inputs), device)


def loss_peak_memory(row: LossRow, batch: int, dim: int, device: str, threads: int | None = None) -> float:
    """:func:`loss_peak_memory_here`, in a fresh interpreter on CPU (with ``threads`` intra-op threads if given)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        return loss_peak_memory_here(row, batch, dim, device)
    code = ("import json, sys; from euclip import bench; a = json.loads(sys.argv[1]); "
            "print(bench.loss_peak_memory_here(bench.LossRow(**a['row']), a['batch'], a['dim'], a['device']))")
    payload = json.dumps({"row": asdict(row), "batch": batch, "dim": dim, "device": device})
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, check=False,
                            env=env)
    if result.returncode != 0:
        raise RuntimeError(f"memory benchmark of {row.label!r} at batch {batch} failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def loss_step_times(rows: list[LossRow], batch: int, dim: int, device: str, repeats: int) -> dict[str, float]:
    """Median forward + backward seconds of each row, round-robin ``repeats`` times (inputs shared per geometry)."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    by_geometry: dict[str, tuple] = {}
    for row in rows:
        if row.geometry not in by_geometry:
            by_geometry[row.geometry] = _loss_inputs(row, batch, dim, device)
    for row in rows:  # warm-up
        _loss_step(row, *by_geometry[row.geometry])
    times: dict[str, list[float]] = {row.label: [] for row in rows}
    for _ in range(repeats):
        for row in rows:
            sync()
            start = time.perf_counter()
            _loss_step(row, *by_geometry[row.geometry])
            sync()
            times[row.label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def _format_loss_table(results: dict[tuple[str, int], dict[str, float]], batch_sizes: list[int],
                       rows: list[LossRow]) -> str:
    """Markdown: per row and batch size, time and peak memory, absolute and as a ratio to the row's OpenCLIP baseline."""
    baselines = {row.loss: row.label for row in rows if row.loss in ("clip", "siglip")}
    header = ["loss"]
    for b in batch_sizes:
        header += [f"B={b} ms", f"B={b} time ×", f"B={b} peak MiB", f"B={b} mem ×"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    for row in rows:
        cells = [row.label]
        for b in batch_sizes:
            r = results[(row.label, b)]
            base = results.get((baselines.get(row.baseline, ""), b))
            time_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "–"
            mem_ratio = f"{r['peak_bytes'] / max(base['peak_bytes'], 1.0):.2f}" if base else "–"
            cells += [f"{1e3 * r['seconds']:.0f}", time_ratio, f"{r['peak_bytes'] / 2**20:.0f}", mem_ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8192, 16384], help="batch sizes B (B×B logits)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward + backward passes per row (median)")
    parser.add_argument("--losses", nargs="+", default=["contrastive", "sigmoid"], choices=["contrastive", "sigmoid"])
    parser.add_argument("--block-size", default="auto",
                        help="euclip's block_size: 'auto' (default), 'none' (whole matrix) or rows per block")
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL_PREFIX",
                        help="run only the rows whose label starts with one of these (the baselines always run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (default: torch's). On a shared machine 1 is steadier: a parallel "
                             "region waits for its slowest thread, and a busy core holds one back a whole time slice")


def _bench_loss(args: argparse.Namespace) -> None:
    """Time and peak memory of euclip's contrastive and sigmoid losses against OpenCLIP's ClipLoss and SigLipLoss."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    block_size = {"auto": "auto", "none": None}.get(str(args.block_size).lower())
    if block_size is None and str(args.block_size).lower() != "none":
        block_size = int(args.block_size)
    rows = [row for row in loss_rows(tuple(args.losses), block_size)
            if args.only is None or row.loss in ("clip", "siglip") or any(row.label.startswith(p) for p in args.only)]
    results: dict[tuple[str, int], dict[str, float]] = {}
    for batch in args.batch_sizes:
        seconds = loss_step_times(rows, batch, args.dim, args.device, args.repeats)
        for row in rows:
            peak = loss_peak_memory(row, batch, args.dim, args.device, args.threads)
            results[(row.label, batch)] = {"seconds": seconds[row.label], "peak_bytes": peak}
            print(f"  {row.label}, B={batch}: {1e3 * seconds[row.label]:.0f} ms, {peak / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
    cuda = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    memory = "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM) of a fresh process per row"
    print(f"Loss forward + backward, D={args.dim}, median of {args.repeats}, euclip block_size={args.block_size}; "
          f"{machine}, torch {torch.__version__}; memory: {memory}, beyond the inputs; ratios against OpenCLIP's "
          f"ClipLoss (contrastive rows) and SigLipLoss (sigmoid rows) in the same run.\n")
    print(_format_loss_table(results, args.batch_sizes, rows))


# ----------------------------------------------------------------------------------------------------------------
# sweep: cells at a time on a CPU
# ----------------------------------------------------------------------------------------------------------------


def sweep_throughput(cells: int, threads: int, steps: int, batch_size: int, root: str) -> dict[str, float]:
    """Train ``cells`` runs of the sweep's recipe at once, ``threads`` intra-op threads each, for ``steps`` steps.

    Returns ``{"per_cell": mean samples/s of one cell, "total": their sum, "wall": seconds from the first start to
    the last end}``; the samples/s are each run's own (``summary.json``: training time, without start-up).
    """
    from euclip.study.grid import RECIPE
    from euclip.study.sweep import _flags

    options = {**RECIPE, "steps": steps, "batch_size": batch_size, "warmup": 1, "save_every_steps": steps,
               "log_every_steps": steps}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    outputs = [os.path.join(root, f"cells{cells}_threads{threads}_{i}") for i in range(cells)]
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "euclip.cli", "train", *_flags({**options, "seed": i}),
                               "--no-eval", "--overwrite", "--output", out], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i, out in enumerate(outputs)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a benchmark run failed ({proc.returncode}): {err[-2000:]}")
    wall = time.perf_counter() - start
    rates = [json.loads(open(os.path.join(out, "summary.json")).read())["samples_per_s"] for out in outputs]
    return {"per_cell": statistics.fmean(rates), "total": sum(rates), "wall": wall}


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=60, help="training steps per cell")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (the sweep's: 128)")
    parser.add_argument("--jobs", type=int, nargs="+", default=None,
                        help="numbers of single-threaded cells at once to compare (default: the CPU cores)")


def _bench_sweep(args: argparse.Namespace) -> None:
    """Samples/s of the sweep's cells on a CPU: one cell on every core against several single-threaded cells."""
    import tempfile

    cores = os.cpu_count() or 1
    layouts = [(1, cores)] + [(jobs, 1) for jobs in (args.jobs or [cores]) if (jobs, 1) != (1, cores)]
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for cells, threads in layouts:
            results[(cells, threads)] = sweep_throughput(cells, threads, args.steps, args.batch_size, root)
            print(f"  {cells} cell(s) × {threads} thread(s): {results[(cells, threads)]['total']:.0f} samples/s",
                  file=sys.stderr, flush=True)
    baseline = results[layouts[0]]["total"]
    print(f"The sweep's recipe (tiny model, batch {args.batch_size}), {args.steps} steps per cell, {cores} CPU cores; "
          "samples/s from each run's training time; ratios against one cell on every core, in the same run.\n")
    print("| cells at a time | threads each | samples/s per cell | samples/s in all | ratio | wall s |")
    print("|--:|--:|--:|--:|--:|--:|")
    for (cells, threads), r in results.items():
        print(f"| {cells} | {threads} | {r['per_cell']:.0f} | {r['total']:.0f} | {r['total'] / baseline:.2f}× | "
              f"{r['wall']:.0f} |")


BENCHMARKS: dict[str, tuple[Callable[[argparse.Namespace], None], Callable[[argparse.ArgumentParser], None]]] = {
    "geometry": (_bench_geometry, _add_geometry_arguments),
    "loss": (_bench_loss, _add_loss_arguments),
    "sweep": (_bench_sweep, _add_sweep_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m euclip.bench", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (function, add_arguments) in BENCHMARKS.items():
        add_arguments(subparsers.add_parser(name, help=(function.__doc__ or "").strip().split("\n")[0]))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    BENCHMARKS[args.benchmark][0](args)


if __name__ == "__main__":
    main()
