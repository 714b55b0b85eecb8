"""``euclip index build|search|info``: nearest-neighbour indexes (FAISS) over a trained model's embeddings.

``build`` embeds images (an image folder, a CSV's images, webdataset shards, the synthetic split) or captions (a
text file with one per line, a CSV's or shards' captions) with a run's model and writes an index folder
(:mod:`euclip.index.store`); ``search`` embeds text or image queries with the same model and prints the nearest
entries by the model's own logit, as a table or JSON; ``info`` prints an index's manifest.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

__all__ = ["register"]

_FORMATTER = argparse.RawDescriptionHelpFormatter


def register(subparsers) -> None:
    """Add ``euclip index`` and its subcommands to the top-level subparsers."""
    from euclip.index.search import CONE_MODES
    from euclip.index.sources import DATA_TYPES, MODALITIES

    p = subparsers.add_parser("index", help="build and search nearest-neighbour indexes (FAISS) for any geometry",
                              description="Nearest-neighbour indexes over a trained model's image or caption "
                                          "embeddings, searched by the model's own logit (exact with 'Flat', "
                                          "approximate with IVF, HNSW or PQ factory strings).")
    sub = p.add_subparsers(dest="index_command", required=True)

    b = sub.add_parser(
        "build", help="embed images or captions with a run's model and index them", formatter_class=_FORMATTER,
        description="Embed DATA with RUN's model and write an index folder: index.faiss, embeddings.npy, ids.jsonl, "
                    "manifest.json (geometry, logit, curvature, model fingerprints, factory).\n\nExamples:\n"
                    "  euclip index build runs/demo/euclip --data-type synthetic --num-samples 2000 "
                    "--output runs/demo/euclip/index\n"
                    "  euclip index build runs/meru --data photos/ --output photos.index --factory HNSW32\n"
                    "  euclip index build runs/meru --data captions.txt --output captions.index")
    b.add_argument("run", help="run directory (its checkpoints/latest.pt) or a checkpoint file")
    b.add_argument("--data", help="an image folder, a CSV/TSV file, a shard pattern 'shards/{00000..00009}.tar', or "
                                  "a text file with one caption per line")
    b.add_argument("--data-type", choices=list(DATA_TYPES), default="auto",
                   help="what DATA is (auto: a folder, .csv/.tsv, .tar/braces/::, else a captions file)")
    b.add_argument("--modality", choices=list(MODALITIES),
                   help="index images or captions (default: text for a captions file, else images)")
    b.add_argument("--output", required=True, help="the index folder to write")
    b.add_argument("--force", action="store_true", help="replace an index already in --output")
    b.add_argument("--factory", default="Flat",
                   help="FAISS index factory string: Flat (exact), IVF4096,Flat, HNSW32, IVF1024,PQ32, ...")
    b.add_argument("--metric", choices=["auto", "ip", "l2"], default="auto",
                   help="search inner-product logits (euclidean inner, hyperbolic) as inner products (ip) or by "
                        "their L2 reduction (l2); auto: l2 for hyperbolic HNSW indexes, else ip")
    b.add_argument("--params", help="FAISS search parameters saved with the index, e.g. nprobe=16 or efSearch=128")
    b.add_argument("--num-samples", type=int, help="index the first N items (synthetic: default 1000)")
    b.add_argument("--split", default="test", choices=["test", "heldout"], help="synthetic split")
    b.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    b.add_argument("--csv-img-key", default="filepath", help="image path column")
    b.add_argument("--csv-caption-key", default="caption", help="caption column")
    b.add_argument("--csv-separator", default="\t", help="column separator (default tab)")
    b.add_argument("--batch-size", type=int, default=128, help="images or captions per forward pass")
    b.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    b.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    b.set_defaults(func=cmd_index_build)

    s = sub.add_parser(
        "search", help="the nearest indexed entries to a text or an image", formatter_class=_FORMATTER,
        description="Embed each query with the index's model (the run recorded in its manifest, or --run: refused "
                    "if its geometry, config or weights differ from the index's) and print the k nearest entries "
                    "by the model's logit (higher = nearer).\n\nExamples:\n"
                    "  euclip index search runs/demo/euclip/index --text 'a red triangle' -k 5\n"
                    "  euclip index search photos.index --image query.jpg -k 10 --json\n"
                    "  euclip index search runs/meru/index --text 'a shape' --cone query")
    s.add_argument("index", help="an index folder written by euclip index build")
    s.add_argument("--text", action="append", default=[], help="a text query (repeatable)")
    s.add_argument("--image", action="append", default=[], help="an image file query (repeatable)")
    s.add_argument("-k", "--k", type=int, default=10, help="results per query")
    s.add_argument("--run", help="the model (run directory or checkpoint) to embed queries with (default: the "
                                 "index's)")
    s.add_argument("--cone", choices=list(CONE_MODES),
                   help="entailment filter (euclidean and hyperbolic models): query = keep results inside the "
                        "query's cone (a generic caption → specific images), result = keep results whose cone "
                        "contains the query (an image → captions that entail it)")
    s.add_argument("--min-radius", type=float, help="K of the entailment cones (default: the run's)")
    s.add_argument("--overfetch", type=int, default=10, help="with --cone, fetch k × this many candidates to filter")
    s.add_argument("--params", help="FAISS search parameters for this search, e.g. nprobe=32 or efSearch=256")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    s.set_defaults(func=cmd_index_search)

    i = sub.add_parser("info", help="print an index's manifest")
    i.add_argument("index", help="an index folder")
    i.set_defaults(func=cmd_index_info)


def cmd_index_build(args: argparse.Namespace) -> int:
    from euclip import geometry as geom
    from euclip.eval.embed import curvature_of
    from euclip.index import build_index, model_identity
    from euclip.index.search import check_factory
    from euclip.index.sources import IndexSource, embed_source
    from euclip.index.store import MANIFEST
    from euclip.model import load_model, resolve_device
    from euclip.runs import RunDir

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} exists and is not a folder")
    if (output / MANIFEST).exists() and not args.force:
        raise ValueError(f"--output {output} already holds an index; pass --force to replace it")
    source = IndexSource(data=args.data, data_type=args.data_type, modality=args.modality,
                         num_samples=args.num_samples, split=args.split, seed=args.seed, csv_img_key=args.csv_img_key,
                         csv_caption_key=args.csv_caption_key, csv_separator=args.csv_separator,
                         batch_size=args.batch_size, workers=args.workers)
    device = resolve_device(args.device)
    model = load_model(args.run, device)
    check_factory(model.geometry, model.logit, model.embed_dim, args.factory, args.metric)  # before the embedding
    points, ids, data = embed_source(model, source, device, progress=args.progress)
    min_radius = RunDir.of(args.run).final_min_radius() if model.geometry in geom.CONE_GEOMETRIES else None
    index = build_index(points, ids, model.geometry, model.logit, curvature_of(model), args.factory,
                        metric=args.metric, search_params=args.params, modality=source.modality,
                        min_radius=min_radius, model=model_identity(model, args.run), data=data,
                        progress=args.progress)
    index.save(output)
    skipped = f", {data['skipped']} unreadable skipped" if data["skipped"] else ""
    print(f"indexed {len(index)} {source.modality} embeddings ({model.geometry}/{model.logit}, D = {index.dim}, "
          f"factory {args.factory}, metric {index.manifest.metric}{skipped}) into {output}")
    return 0


def _load_query_model(index, args: argparse.Namespace):
    from euclip.model import load_model, resolve_device

    recorded = (index.manifest.model or {}).get("path")
    run = args.run or recorded
    if run is None:
        raise ValueError(f"{args.index} records no model (built from bare embeddings): pass --run")
    if not Path(run).exists():
        raise FileNotFoundError(f"the index's model {run} does not exist (moved?): pass --run")
    device = resolve_device(args.device)
    model = load_model(run, device)
    index.check_model(model)
    return model, device


def _embed_queries(model, device, texts: list[str], images: list[str]):
    import torch

    from euclip.eval.embed import embed_texts
    from euclip.index.sources import embed_image_files

    parts = []
    if texts:
        parts.append(embed_texts(model, texts, device)[0])
    if images:
        missing = [p for p in images if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"--image: no such file: {', '.join(missing)}")
        points, ok, _ = embed_image_files(model, images, device=device)
        if len(ok) != len(images):
            bad = sorted(set(images) - set(ok))
            raise ValueError(f"--image: cannot read {', '.join(bad)} as an image")
        parts.append(points)
    return torch.cat(parts)


def cmd_index_search(args: argparse.Namespace) -> int:
    from euclip.index import GeometryIndex

    if not args.text and not args.image:
        raise ValueError("give at least one query: --text TEXT or --image FILE")
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    index = GeometryIndex.load(args.index)
    if args.params:
        index.set_search_params(args.params)
    model, device = _load_query_model(index, args)
    queries = _embed_queries(model, device, args.text, args.image)
    scores, rows = index.search(queries, args.k, cone=args.cone, min_radius=args.min_radius,
                                overfetch=args.overfetch)
    names = index.neighbour_ids(rows)
    labels = [("text", t) for t in args.text] + [("image", p) for p in args.image]
    results = []
    for (kind, query), row_scores, row_ids, row_names in zip(labels, scores.tolist(), rows.tolist(), names):
        hits = [{"rank": r + 1, "id": name, "row": row, "score": score}
                for r, (score, row, name) in enumerate(zip(row_scores, row_ids, row_names)) if row >= 0]
        results.append({"query": query, "modality": kind, "results": hits})
    if args.json:
        print(json.dumps({"index": str(args.index), "geometry": index.geometry, "logit": index.logit,
                          "factory": index.factory, "k": args.k, "cone": args.cone, "queries": results}, indent=2))
        return 0
    for entry in results:
        print(f"{entry['modality']} query: {entry['query']}  ({index.geometry}/{index.logit}, higher = nearer)")
        print(f"  {'rank':>4}  {'score':>10}  id")
        for hit in entry["results"]:
            score = hit["score"]
            shown = f"{score:10.4f}" if math.isfinite(score) else f"{score:>10}"
            print(f"  {hit['rank']:>4}  {shown}  {hit['id']}")
        if not entry["results"]:
            print("  (no results" + (" inside the entailment cones)" if args.cone else ")"))
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from euclip.index.store import read_manifest

    print(read_manifest(args.index).to_json(), end="")
    return 0
