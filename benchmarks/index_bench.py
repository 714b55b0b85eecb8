"""Nearest-neighbour indexes per geometry at scale: build time, queries/s, memory and recall@10 against exact search.

For each geometry (with its headline logit: elliptic/inner = CLIP, euclidean/squared = EuCLIP, hyperbolic/distance =
MERU) it makes N random embeddings of dimension D on the manifold — unit vectors (elliptic), Gaussian points scaled
by 1/sqrt(D) like euclip's Euclidean head (euclidean), the exponential map of Gaussian tangent vectors of norm 0.5-2.5
(hyperbolic, MERU-like radii). By default the Gaussians are i.i.d. in ``D`` dimensions, whose neighbours are nearly
equidistant (no approximate index can tell them apart); ``--latent-dim d --clusters K`` makes them like real
embeddings instead: a mixture of ``K`` Gaussian clusters (centres of unit spread, members at ``--spread`` around
them) in ``d`` dimensions, mapped to ``D`` by a fixed random linear map (data of intrinsic dimension ``d``). Q fresh
queries come from the same distribution. Then, for each index spec, it builds a :class:`euclip.index.GeometryIndex`
and measures:

* build s: training (IVF, PQ) + adding all N vectors, wall clock;
* FAISS q/s: queries per second of the bare FAISS search over the transformed vectors (k = 10, all Q at once);
* euclip q/s: the same through ``GeometryIndex.search``, which re-scores the candidates with the geometry's exact
  logits from the stored embeddings;
* RSS Δ: the process's resident memory after building minus before (the FAISS index plus the index's own float32
  copy of the N × D embeddings, N·D·4 bytes, which is also listed);
* recall@10: the fraction of the exact (``Flat``) top 10 that the index returns, over the Q queries.

Index specs are ``FACTORY[;PARAMS[;METRIC]]``: ``"IVF1024,Flat;nprobe=16"``, ``"HNSW32;efSearch=64"``,
``"HNSW32;efSearch=64;ip"`` (the plain inner product instead of the L2 reduction, for comparison). ``Flat`` comes
first and provides the exact neighbours. Prints a Markdown table (and ``--json`` writes the rows).

    python benchmarks/index_bench.py --n 1000000 --dim 512 --threads 2            # the full run
    python benchmarks/index_bench.py --n 20000 --queries 100                      # a quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch

from euclip import geometry as geom
from euclip.index import build_index
from euclip.index.transforms import choose_metric

HEADLINE = {"elliptic": "inner", "euclidean": "squared", "hyperbolic": "distance"}
DEFAULT_SPECS = ["Flat", "IVF1024,Flat;nprobe=16", "HNSW32;efSearch=64"]
_CHUNK = 65536


def rss_bytes() -> int:
    """The process's resident set size (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_points(geometry: str, n: int, dim: int, seed: int, mixing: torch.Tensor | None,
                centres: torch.Tensor | None, spread: float) -> torch.Tensor:
    """``(n, dim)`` float32 points on the geometry's manifold, generated in chunks (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        if mixing is None:
            f = torch.randn(m, dim, generator=g)
        else:  # a Gaussian mixture in d dimensions, mapped to D
            z = torch.randn(m, mixing.shape[0], generator=g)
            if centres is not None:
                z = centres[torch.randint(0, centres.shape[0], (m,), generator=g)] + spread * z
            f = z @ mixing
        if geometry == "elliptic":
            out[start:start + m] = geom.project(f, "elliptic")
        elif geometry == "euclidean":
            out[start:start + m] = geom.project(f, "euclidean")
        else:
            radius = 0.5 + 2.0 * torch.rand(m, 1, generator=g)
            out[start:start + m] = geom.project(f / f.norm(dim=1, keepdim=True) * radius, "hyperbolic")
    return out


def describe_data(args: argparse.Namespace) -> str:
    if not args.latent_dim:
        return "i.i.d. Gaussian"
    clusters = f"{args.clusters} clusters (spread {args.spread}) " if args.clusters else ""
    return f"{clusters}of intrinsic dimension {args.latent_dim}"


def parse_spec(spec: str) -> tuple[str, str | None, str]:
    parts = spec.split(";")
    return parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "auto"


def bench_geometry(geometry: str, args: argparse.Namespace) -> list[dict]:
    logit = HEADLINE[geometry]
    mixing = centres = None
    if args.latent_dim:
        g = torch.Generator().manual_seed(args.seed + 99)
        mixing = torch.randn(args.latent_dim, args.dim, generator=g) / math.sqrt(args.latent_dim)
        if args.clusters:
            centres = torch.randn(args.clusters, args.latent_dim, generator=g)
    database = make_points(geometry, args.n, args.dim, args.seed, mixing, centres, args.spread)
    queries = make_points(geometry, args.queries, args.dim, args.seed + 1, mixing, centres, args.spread)
    rows, exact = [], None
    for spec in args.index:
        factory, params, metric = parse_spec(spec)
        try:
            choose_metric(geometry, logit, metric)
        except ValueError:
            continue  # e.g. ";ip" for the Euclidean distances, which only rank like L2
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        index = build_index(database, None, geometry, logit, 1.0, factory, metric=metric, search_params=params)
        build_s = time.perf_counter() - start
        grown = rss_bytes() - before
        vectors = index.transform.queries(index.transform.points(queries))
        start = time.perf_counter()
        index.index.search(vectors, 10)
        faiss_qps = args.queries / (time.perf_counter() - start)
        start = time.perf_counter()
        found = index.search(queries, 10).indices
        euclip_qps = args.queries / (time.perf_counter() - start)
        if exact is None:
            if factory != "Flat":
                raise SystemExit("the first index spec must be Flat (it gives the exact neighbours)")
            exact = found
        recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found.tolist(), exact.tolist())]))
        rows.append({"geometry": geometry, "logit": logit, "factory": factory, "params": params,
                     "metric": index.manifest.metric, "index_dim": index.manifest.index_dim, "n": args.n,
                     "dim": args.dim, "build_s": build_s, "faiss_qps": faiss_qps, "euclip_qps": euclip_qps,
                     "rss_delta_mib": grown / 2**20, "embeddings_mib": args.n * args.dim * 4 / 2**20,
                     "recall_at_10": recall})
        print(f"  {geometry:10s} {spec:26s} build {build_s:7.1f} s  {faiss_qps:8.1f} / {euclip_qps:8.1f} q/s  "
              f"RSS +{grown / 2**20:7.0f} MiB  recall@10 {recall:.3f}", flush=True)
        del index
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| geometry (logit) | index | metric (dims) | build s | FAISS q/s | euclip q/s | RSS Δ MiB | recall@10 |",
             "|---|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        index = r["factory"] + (f" ({r['params']})" if r["params"] else "")
        lines.append(f"| {r['geometry']} ({r['logit']}) | {index} | {r['metric']} ({r['index_dim']}) | "
                     f"{r['build_s']:.1f} | {r['faiss_qps']:,.0f} | {r['euclip_qps']:,.0f} | "
                     f"{r['rss_delta_mib']:,.0f} | {r['recall_at_10']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import faiss

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="database size")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=500, help="queries (timed, and the recall set)")
    p.add_argument("--latent-dim", type=int, default=0,
                   help="0: i.i.d. D-dimensional points; d: points of intrinsic dimension d (a random linear map)")
    p.add_argument("--clusters", type=int, default=0, help="with --latent-dim: a mixture of this many clusters")
    p.add_argument("--spread", type=float, default=0.5, help="cluster members' spread around their centre")
    p.add_argument("--geometries", nargs="+", default=list(HEADLINE), choices=list(HEADLINE))
    p.add_argument("--index", nargs="+", default=DEFAULT_SPECS, help="FACTORY[;PARAMS[;METRIC]] specs, Flat first")
    p.add_argument("--threads", type=int, default=2, help="FAISS and torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"# N = {args.n:,}, D = {args.dim}, {args.queries} queries, k = 10, "
          f"{describe_data(args)}, {args.threads} threads, "
          f"faiss {faiss.__version__}, {platform.processor() or platform.machine()}, "
          f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}", flush=True)
    rows = []
    for geometry in args.geometries:
        rows += bench_geometry(geometry, args)
        gc.collect()
    print()
    print(markdown(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s; embeddings {args.n * args.dim * 4 / 2**20:,.0f} MiB per "
          f"index copy)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    if any(math.isnan(r["recall_at_10"]) for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
