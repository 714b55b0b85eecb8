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

Adding a benchmark: write ``_bench_name(args)`` and ``_add_name_arguments(parser)`` and register both in
:data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import json
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
    import torch

    _step(config, *_inputs(config, 8, dim, device))  # warm up kernels, thread pools and the allocator
    inputs = _inputs(config, batch, dim, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _step(config, *inputs)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    before = _proc_status_bytes("VmRSS")
    if _reset_peak_rss():
        _step(config, *inputs)
        peak = _proc_status_bytes("VmHWM")
    else:
        import resource

        _step(config, *inputs)
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


BENCHMARKS: dict[str, tuple[Callable[[argparse.Namespace], None], Callable[[argparse.ArgumentParser], None]]] = {
    "geometry": (_bench_geometry, _add_geometry_arguments),
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
