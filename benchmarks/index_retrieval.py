"""Retrieval recall@k at scale: euclip.eval.retrieval (blockwise exact scores) against euclip.index.retrieval_recall.

Makes N image embeddings and one caption per image (the image's pre-projection features plus noise, so recall is
neither 0 nor 1) for one geometry × logit, then runs each method in a fresh subprocess and reports wall time, the
process's peak resident memory (``VmHWM``) and the recalls. The exact index (``Flat``) must give the blockwise
numbers; an approximate one trades recall for time.

    python benchmarks/index_retrieval.py --n 100000 --dim 128 --geometry hyperbolic --logit distance
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

_WORKER = r"""
import json, sys, time
import torch
from euclip import geometry as geom
from euclip.eval.embed import Embeddings

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import faiss
faiss.omp_set_num_threads(args["threads"])
g = torch.Generator().manual_seed(0)
n, d = args["n"], args["dim"]
f_image = torch.randn(n, d, generator=g)
f_text = f_image + args["noise"] * torch.randn(n, d, generator=g)
scale = 1.5 / d ** 0.5
image = geom.project(f_image * scale, args["geometry"])
text = geom.project(f_text * scale, args["geometry"])
emb = Embeddings(image=image, text=text, text_to_image=torch.arange(n), image_tower_norm=torch.ones(n),
                 text_tower_norm=torch.ones(n), captions=[""] * n, geometry=args["geometry"], logit=args["logit"],
                 curvature=1.0)
del f_image, f_text
start = time.perf_counter()
if args["method"] == "blockwise":
    from euclip.eval.retrieval import retrieval_from_embeddings
    out = retrieval_from_embeddings(emb, ks=(1, 5, 10))
else:
    from euclip.index import retrieval_recall
    out = retrieval_recall(emb, ks=(1, 5, 10), factory=args["factory"], search_params=args["params"])
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "i2t": out["image_to_text"], "t2i": out["text_to_image"]}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--geometry", default="hyperbolic")
    p.add_argument("--logit", default="distance")
    p.add_argument("--noise", type=float, default=0.8, help="caption features = image features + noise · N(0, I)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["blockwise", "Flat", "IVF1024,Flat;nprobe=16"],
                   help="'blockwise' (euclip.eval.retrieval) or index specs FACTORY[;PARAMS]")
    args = p.parse_args(argv)
    print(f"# N = {args.n:,} pairs, D = {args.dim}, {args.geometry}/{args.logit}, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| method | seconds | peak RSS MiB | image→text R@1 / R@5 / R@10 | text→image R@1 / R@5 / R@10 |")
    print("|---|--:|--:|---|---|")
    for method in args.methods:
        factory, _, params = method.partition(";")
        job = {**vars(args), "method": "blockwise" if method == "blockwise" else "index", "factory": factory,
               "params": params or None}
        proc = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(job)], capture_output=True, text=True,
                              check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        recalls = [" / ".join(f"{v:.4f}" for v in r[d].values()) for d in ("i2t", "t2i")]
        name = "euclip.eval.retrieval (blocks of 1024²)" if method == "blockwise" else f"index {method}"
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_bytes'] / 2**20:,.0f} | {recalls[0]} | {recalls[1]} |",
              flush=True)


if __name__ == "__main__":
    main()
