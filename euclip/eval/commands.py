"""The evaluation commands: ``euclip eval retrieval|hierarchy|geometry``, ``euclip traverse``, ``euclip report``.

Also :func:`full_evaluation`, every synthetic-data evaluation of one run in one call (the demo's), and the
hierarchy-metric evaluations (:func:`synthetic_hierarchy`, :func:`folder_hierarchy`).

Every command loads a run directory (its latest checkpoint) or a checkpoint file, streams its data in batches with a
progress bar, writes a JSON file into the run directory (or ``--output``) that records the model, the data and the
settings, and prints a short summary. ``cli.py`` wires them in with :func:`add_eval_subcommands` and
:func:`add_top_level_subcommands`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from euclip import geometry as geom
from euclip.eval.diagnostics import geometry_diagnostics
from euclip.eval.embed import DATASET_TYPES, DataSpec, Embeddings, curvature_of, embed
from euclip.eval.retrieval import retrieval_from_embeddings
from euclip.eval.traverse import format_walk, run_traversal
from euclip.model import resolve_device

__all__ = [
    "add_eval_subcommands",
    "add_top_level_subcommands",
    "folder_hierarchy",
    "full_evaluation",
    "min_radius_of",
    "run_dir_of",
    "synthetic_hierarchy",
]

DEFAULT_SYNTHETIC_SAMPLES = 1000
EVAL_ALL = "eval_all.json"


# ----------------------------------------------------------------------------------------------------------------
# Run directories and model loading
# ----------------------------------------------------------------------------------------------------------------


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or a checkpoint (``RUN/checkpoints/x.pt`` → ``RUN``; else its folder)."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def _run_config(run: Path) -> dict:
    path = run / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def min_radius_of(run: str | Path, default: float = 0.1) -> float:
    """The entailment cones' ``K`` a run ended training with (``min_radius_final`` if scheduled), else ``default``."""
    config = _run_config(run_dir_of(run))
    return float(config.get("min_radius_final") or config.get("min_radius") or default)


def _load(path: str | Path, device: torch.device):
    from euclip.model import load_model

    return load_model(str(path), device)


def _model_record(path: str | Path, model) -> dict:
    """What identifies the evaluated model in every JSON result."""
    p = Path(path)
    checkpoint = p / "checkpoints" / "latest.pt" if p.is_dir() else p
    return {"path": str(path), "checkpoint": str(checkpoint), "run_dir": str(run_dir_of(path)),
            "config": model.config_dict(), "curvature": curvature_of(model),
            "logit_scale": float(model.logit_scale.detach())}


def _write_json(results: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    return path


def _spec_from_args(args: argparse.Namespace) -> DataSpec:
    synthetic = args.dataset_type == "synthetic"
    n = args.num_samples if args.num_samples is not None else (DEFAULT_SYNTHETIC_SAMPLES if synthetic else None)
    return DataSpec(dataset_type=args.dataset_type, data=args.data, split=args.split, num_samples=n, seed=args.seed,
                    csv_img_key=args.csv_img_key, csv_caption_key=args.csv_caption_key,
                    csv_separator=args.csv_separator, batch_size=args.batch_size, workers=args.workers)


def _data_tag(spec: DataSpec) -> str:
    return f"synthetic_{spec.split}" if spec.dataset_type == "synthetic" else spec.dataset_type


def _percent(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


# ----------------------------------------------------------------------------------------------------------------
# Hierarchy metrics of zero-shot predictions
# ----------------------------------------------------------------------------------------------------------------


def _hierarchy_results(tree, true: list[str], pred: list[str]) -> dict:
    from euclip.eval.hierarchy import all_conventions

    return {"conventions": all_conventions(tree, true, pred),
            "top1": sum(t == p for t, p in zip(true, pred)) / len(true), "num_samples": len(true)}


def _load_tree(spec: str, classes: list[str]):
    """``"wordnet"``: the WordNet tree over ``classes`` (wnids); ``"shapes"``: the synthetic taxonomy; else a file."""
    from euclip.tree import Tree

    if spec == "wordnet":
        from euclip.eval.wordnet import WordNetUnavailableError, wordnet_tree

        try:
            return wordnet_tree(classes)
        except WordNetUnavailableError as e:
            # Bad setup, not a bug: the CLI prints a ValueError as one line (the message says how to install).
            raise ValueError(str(e)) from e
    if spec == "shapes":
        from euclip.data.synthetic import shape_taxonomy

        return shape_taxonomy()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"--tree: no such edges file: {spec} (or use 'wordnet' or 'shapes')")
    tree = Tree.from_edges_file(spec)
    missing = [c for c in classes if c not in tree]
    if missing:
        raise ValueError(f"{len(missing)} class(es) are not nodes of the tree in {spec}: {missing[:5]}")
    return tree


@torch.no_grad()
def synthetic_hierarchy(model, num_samples: int = 1000, split: str = "test", seed: int = 0,
                        device: torch.device | str = "cpu", tree: str = "shapes", batch_size: int = 128,
                        progress: bool = True, embeddings: Embeddings | None = None) -> dict:
    """Hierarchy metrics of zero-shot shape predictions on synthetic images (the shape taxonomy by default).

    Predictions are the top-1 of :func:`euclip.eval.zeroshot.class_prototypes` scored with the model's own logit
    (as ``euclip eval zeroshot`` does); ``embeddings`` of synthetic images can be passed to avoid embedding again.
    """
    from euclip.data.synthetic import SHAPES, TEMPLATES
    from euclip.eval.zeroshot import class_prototypes

    if embeddings is None:
        spec = DataSpec("synthetic", split=split, num_samples=num_samples, seed=seed, batch_size=batch_size)
        embeddings = embed(model, spec, device, progress, desc="hierarchy: embed")
    prototypes = class_prototypes(model, SHAPES, TEMPLATES, model.tokenizer(), device).float().cpu()
    predictions = []
    for start in range(0, embeddings.num_images, 4096):
        scores = geom.pairwise_logits(embeddings.image[start:start + 4096], prototypes, model.geometry, model.logit,
                                      curvature_of(model))
        predictions += scores.argmax(1).tolist()
    true = [info["shape"] for info in embeddings.image_info]
    results = _hierarchy_results(_load_tree(tree, list(SHAPES)), true, [SHAPES[i] for i in predictions])
    results.update(tree=tree, classes="synthetic shapes", templates="synthetic")
    return results


def folder_hierarchy(model, data: str, tree: str = "wordnet", classnames: str | None = None,
                     templates: str | None = None, device: torch.device | str = "cpu", batch_size: int = 128,
                     workers: int = 0, num_samples: int | None = None, progress: bool = True) -> dict:
    """Hierarchy metrics of zero-shot predictions on ``data/<class>/<image>`` (ImageNet layout).

    Args:
        model: a GeometricCLIP.
        data: the folder; its sub-folder names are the classes and must be nodes of the tree (wnids for WordNet).
        tree: ``"wordnet"`` (WordNet tree over the folder wnids) or a ``parent child`` edges file.
        classnames: class names for the prompts (file / ``imagenet``); default: WordNet lemmas for the WordNet tree,
            else the folder names.
        templates: prompt templates (file / ``openai`` / ``simple``); default OpenCLIP's ImageNet ones.
        device, batch_size, workers: as usual.
        num_samples: evaluate at most this many images, evenly spaced over the folder (``None``: all).
        progress: show a progress bar.
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from euclip.data.transforms import image_transform
    from euclip.eval.folders import resolve_classnames, resolve_templates
    from euclip.eval.zeroshot import class_prototypes, evaluate_zeroshot

    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data: no such folder: {data}")
    dataset = ImageFolder(data, transform=image_transform(model.image_size, train=False))
    classes = dataset.classes
    taxonomy = _load_tree(tree, classes)
    if classnames is None and tree == "wordnet":
        from euclip.eval.wordnet import wnid_to_name

        names = [wnid_to_name(w) for w in classes]
    else:
        names = resolve_classnames(classnames, classes)
    subset = dataset
    if num_samples is not None and num_samples < len(dataset):
        subset = Subset(dataset, torch.linspace(0, len(dataset) - 1, num_samples).round().long().unique().tolist())
    loader = DataLoader(subset, batch_size=batch_size, num_workers=workers)
    prototypes = class_prototypes(model, names, resolve_templates(templates), model.tokenizer(), device)
    zs = evaluate_zeroshot(model, loader, prototypes, names, device, progress=progress, total=len(loader))
    results = _hierarchy_results(taxonomy, [classes[i] for i in zs["labels"]],
                                 [classes[i] for i in zs["predictions"]])
    results.update(tree=tree, top5=zs["top5"], classes=classes, classnames=names,
                   templates=templates or "openai")
    return results


# ----------------------------------------------------------------------------------------------------------------
# Full synthetic evaluation (the demo's)
# ----------------------------------------------------------------------------------------------------------------


def full_evaluation(run_dir: str | Path, num_samples: int = 512, progress: bool = True, device: str = "auto",
                    traversal_images: int = 100, steps: int = 20, split: str = "test", seed: int = 0,
                    batch_size: int = 128) -> dict:
    """Every synthetic-data evaluation of a run; writes ``RUN/eval_all.json`` and returns its content.

    One pass embeds ``num_samples`` synthetic ``split`` images and captions, which then serve retrieval, hierarchy
    metrics of zero-shot shape predictions on the shape taxonomy, geometry diagnostics, and traversals (of the first
    ``traversal_images`` images).

    Args:
        run_dir: the run directory (or a checkpoint file; the JSON goes to its run directory).
        num_samples: synthetic images (one caption each).
        progress: progress bars.
        device: ``auto``, ``cpu``, ``cuda``...
        traversal_images: images walked to the root.
        steps: interpolation steps per walk.
        split: synthetic split.
        seed: synthetic seed.
        batch_size: images per forward pass.

    Returns:
        ``{"model", "data", "settings", "retrieval", "hierarchy", "geometry", "traversal", "seconds"}``.
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    model = _load(run_dir, dev)
    spec = DataSpec("synthetic", split=split, num_samples=num_samples, seed=seed, batch_size=batch_size)
    emb = embed(model, spec, dev, progress, desc=f"eval {Path(run_dir).name}: embed")
    min_radius = min_radius_of(run_dir)
    results = {
        "model": _model_record(run_dir, model),
        "data": spec.describe(),
        "settings": {"min_radius": min_radius, "traversal_images": min(traversal_images, num_samples),
                     "steps": steps, "ks": [1, 5, 10]},
        "retrieval": retrieval_from_embeddings(emb),
        "hierarchy": synthetic_hierarchy(model, device=dev, progress=progress, embeddings=emb),
        "geometry": geometry_diagnostics(emb, min_radius),
        "traversal": run_traversal(model, min(traversal_images, num_samples), steps, split, seed, dev,
                                   progress=progress, embeddings=emb),
    }
    results["seconds"] = time.perf_counter() - start
    _write_json(results, run_dir_of(run_dir) / EVAL_ALL)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Command functions
# ----------------------------------------------------------------------------------------------------------------


def _finish(args: argparse.Namespace, results: dict, default_name: str) -> Path:
    out = Path(args.output) if args.output else run_dir_of(args.run) / default_name
    results["written_to"] = str(_write_json(results, out))
    return out


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from euclip.eval.retrieval import evaluate_retrieval

    spec = _spec_from_args(args)
    device = resolve_device(args.device)
    model = _load(args.run, device)
    results = evaluate_retrieval(model, spec, device, ks=tuple(args.ks), chunk=args.chunk, progress=args.progress)
    results["model"] = _model_record(args.run, model)
    out = _finish(args, results, f"eval_retrieval_{_data_tag(spec)}.json")
    i2t, t2i = results["image_to_text"], results["text_to_image"]
    print(f"retrieval over {results['num_images']} images / {results['num_texts']} captions "
          f"({model.geometry}/{model.logit}):")
    print("  image→text " + "  ".join(f"{k} {_percent(v)}" for k, v in i2t.items()))
    print("  text→image " + "  ".join(f"{k} {_percent(v)}" for k, v in t2i.items()))
    print(f"written to {out}")
    return 0


def cmd_eval_hierarchy(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = _load(args.run, device)
    if args.data is None:
        n = args.num_samples or DEFAULT_SYNTHETIC_SAMPLES
        results = synthetic_hierarchy(model, n, args.split, args.seed, device, args.tree or "shapes",
                                      args.batch_size, args.progress)
        results["data"] = DataSpec("synthetic", split=args.split, num_samples=n, seed=args.seed,
                                   batch_size=args.batch_size).describe()
        default = f"eval_hierarchy_synthetic_{args.split}.json"
    else:
        results = folder_hierarchy(model, args.data, args.tree or "wordnet", args.classnames, args.templates, device,
                                   args.batch_size, args.workers, args.num_samples, args.progress)
        results["data"] = {"dataset_type": "folder", "data": str(args.data), "num_samples": args.num_samples}
        default = "eval_hierarchy_folder.json"
    results["model"] = _model_record(args.run, model)
    out = _finish(args, results, default)
    print(f"hierarchy metrics of top-1 zero-shot predictions over {results['num_samples']} images "
          f"(tree: {results['tree']}), top-1 {_percent(results['top1'])}:")
    for convention, m in results["conventions"].items():
        print(f"  {convention:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
    print(f"written to {out}")
    return 0


def cmd_eval_geometry(args: argparse.Namespace) -> int:
    from euclip.eval.diagnostics import evaluate_geometry

    spec = _spec_from_args(args)
    device = resolve_device(args.device)
    model = _load(args.run, device)
    min_radius = args.min_radius if args.min_radius is not None else min_radius_of(args.run)
    results = evaluate_geometry(model, spec, device, min_radius, progress=args.progress)
    results["model"] = _model_record(args.run, model)
    out = _finish(args, results, f"eval_geometry_{_data_tag(spec)}.json")
    print(_geometry_summary(results))
    print(f"written to {out}")
    return 0


def _geometry_summary(g: dict) -> str:
    used = g["norm_used"]
    n = g["norms"][used]
    kind = "tower-output" if used == "tower" else "distance-from-origin"
    rank = g["effective_rank"]
    lines = [
        f"geometry diagnostics ({g['geometry']}/{g['logit']}, {g['num_images']} images, {g['num_texts']} captions):",
        (f"  {kind} norm: image mean {n['image']['mean']:.3f}, text mean {n['text']['mean']:.3f}; "
         f"P(image farther than text) = {g['separation_auc']:.3f}"),
        f"  effective rank: image {rank['image']:.1f}, text {rank['text']:.1f} (of {rank['dim']})",
    ]
    if g["cones"] is not None:
        c = g["cones"]
        lines.append(f"  images inside their caption's entailment cone (K={c['min_radius']:g}): "
                     f"{_percent(c['fraction'])} (mismatched pairs: {_percent(c.get('fraction_mismatched'))})")
    if g["levels"] is not None:
        lv = g["levels"]
        per = ", ".join(f"{k}: {v['mean']:.3f}" for k, v in lv["per_level"].items())
        lines.append(f"  mean text norm per caption level ({per}); Spearman {lv['spearman']:.3f}, "
                     f"Kendall {lv['kendall']:.3f}")
    return "\n".join(lines)


def cmd_traverse(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = _load(args.run, device)
    results = run_traversal(model, args.num_images, args.steps, args.split, args.seed, device, args.examples,
                            args.batch_size, args.progress)
    results["model"] = _model_record(args.run, model)
    out = _finish(args, results, "eval_traverse.json")
    print(f"traversals of {results['num_images']} synthetic images to the root ({results['root']}), "
          f"{results['steps']} steps, {results['pool_size']} pool captions:")
    print(f"  captions on the true ancestor chain {_percent(results['on_path'])}; walks with non-increasing levels "
          f"{_percent(results['monotone'])}; walks ending on a root caption {_percent(results['reaches_root'])}")
    for ex in results["examples"]:
        im = ex["image"]
        print(f"  [{im['color']} {im['shape']}] " + format_walk(w["caption"] for w in ex["walk"]))
    print(f"written to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from euclip.eval.report import write_report

    for run in args.runs:
        run_path = run_dir_of(run)
        if not Path(run).exists():
            raise FileNotFoundError(f"no such run directory: {run}")
        if not (run_path / "checkpoints" / "latest.pt").is_file() and not Path(run).is_file():
            # Nothing to evaluate (e.g. only metrics were copied): the report shows what the folder holds.
            print(f"[report] {run}: no checkpoint; reporting its existing files only")
            continue
        if args.evaluate == "always" or (args.evaluate == "missing" and not (run_path / EVAL_ALL).is_file()):
            print(f"[report] evaluating {run_path} on {args.num_samples} synthetic samples")
            full_evaluation(run, num_samples=args.num_samples, progress=args.progress, device=args.device)
    page = write_report([run_dir_of(r) for r in args.runs], args.output, title=args.title)
    print(f"report: {page}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, batch: int = 128) -> None:
    p.add_argument("run", help="run directory (its checkpoints/latest.pt) or a checkpoint file")
    p.add_argument("--batch-size", type=int, default=batch, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _data_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data (default: the synthetic test split)")
    d.add_argument("--dataset-type", choices=list(DATASET_TYPES), default="synthetic",
                   help="synthetic (built in), csv (OpenCLIP's CsvDataset format; rows sharing an image path are "
                        "one image with several captions) or webdataset shards")
    d.add_argument("--data", help="CSV/TSV file, or a shard pattern like 'data/{00000..00009}.tar'")
    d.add_argument("--split", default="test", choices=["test", "heldout"], help="synthetic split")
    d.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    d.add_argument("--num-samples", type=int,
                   help=f"images to evaluate (synthetic: default {DEFAULT_SYNTHETIC_SAMPLES}; csv/webdataset: "
                        "default all, or the first N)")
    d.add_argument("--csv-img-key", default="filepath", help="image path column")
    d.add_argument("--csv-caption-key", default="caption", help="caption column")
    d.add_argument("--csv-separator", default="\t", help="column separator (default tab)")


_FORMATTER = argparse.RawDescriptionHelpFormatter


def _describe(*paragraphs: str, examples: tuple[str, ...] = ()) -> str:
    """A help description: paragraphs wrapped at 100 columns, then the example command lines as they are."""
    import textwrap

    text = "\n\n".join(textwrap.fill(p, 100) for p in paragraphs)
    if examples:
        text += "\n\nExample" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
    return text


def add_eval_subcommands(eval_subparsers) -> None:
    """Add ``retrieval``, ``hierarchy`` and ``geometry`` to the subparsers of ``euclip eval``."""
    p = eval_subparsers.add_parser(
        "retrieval", help="image→text and text→image recall@1/5/10 with the model's geometry",
        formatter_class=_FORMATTER,
        description=_describe(
            "Zero-shot retrieval: every image is scored against every caption with the geometry's own logit "
            "(computed in blocks, so 100k pairs fit in memory); an image counts as retrieved if any of its captions "
            "is in its top k, a caption if its image is.",
            "Writes RUN/eval_retrieval_<data>.json (model, data, settings, recalls) and prints a summary.",
            examples=("euclip eval retrieval runs/meru --num-samples 2000",
                      "euclip eval retrieval runs/meru --dataset-type csv --data val.tsv --csv-img-key filepath")))
    _common(p)
    _data_flags(p)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="recall cut-offs")
    p.add_argument("--chunk", type=int, default=1024, help="block side of the score matrix (memory ~ chunk²)")
    p.add_argument("--output", help="JSON file to write (default RUN/eval_retrieval_<data>.json)")
    p.set_defaults(func=cmd_eval_retrieval)

    p = eval_subparsers.add_parser(
        "hierarchy", help="hierarchy-aware scores (TIE, LCA, Jaccard, ...) of top-1 zero-shot predictions",
        formatter_class=_FORMATTER,
        description=_describe(
            "Scores how bad top-1 zero-shot mistakes are in a class taxonomy (tree-induced error, LCA error, "
            "Jaccard, hierarchical precision and recall), under HyCoCLIP's and the inclusive conventions (see "
            "euclip.eval.hierarchy).",
            "Without --data: synthetic images scored on the shape taxonomy (shape → family → leaf). With --data: an "
            "ImageNet-style folder whose sub-folders are wnids, scored on their WordNet tree, or on any tree given "
            "as a 'parent child' edges file (--tree FILE) whose nodes include the folder names.",
            "Writes RUN/eval_hierarchy_<data>.json and prints a summary.",
            examples=("euclip eval hierarchy runs/meru",
                      "euclip eval hierarchy runs/meru --data imagenet/val --num-samples 5000",
                      "euclip eval hierarchy runs/meru --data my_images --tree my_tree.txt --classnames names.txt")))
    _common(p)
    p.add_argument("--data", help="folder with one sub-folder per class (default: synthetic images)")
    p.add_argument("--tree", help="'shapes' (synthetic default), 'wordnet' (folder default) or an edges file")
    p.add_argument("--classnames", help="file with one class name per line (sorted-folder order) or 'imagenet'")
    p.add_argument("--templates", help="prompt templates: a file with {} per line, 'openai' (default) or 'simple'")
    p.add_argument("--split", default="test", choices=["test", "heldout"], help="synthetic split")
    p.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    p.add_argument("--num-samples", type=int,
                   help=f"images (synthetic: default {DEFAULT_SYNTHETIC_SAMPLES}; folder: default all)")
    p.add_argument("--output", help="JSON file to write (default RUN/eval_hierarchy_<data>.json)")
    p.set_defaults(func=cmd_eval_hierarchy)

    p = eval_subparsers.add_parser(
        "geometry", help="norms, modality separation, entailment cones, caption levels, effective rank",
        formatter_class=_FORMATTER,
        description=_describe(
            "Geometry diagnostics of image and caption embeddings: distance-from-origin (and tower-output) norm "
            "distributions, the AUC of telling images from captions by norm, the fraction of pairs whose image lies "
            "in its caption's entailment cone (euclidean/hyperbolic), the mean caption norm per synthetic caption "
            "level with Spearman/Kendall correlations, the effective rank per modality, and 2-D views for the "
            "report.",
            "Writes RUN/eval_geometry_<data>.json and prints a summary.",
            examples=("euclip eval geometry runs/meru",
                      "euclip eval geometry runs/euclip --dataset-type webdataset --data 'val/{0000..0003}.tar'")))
    _common(p)
    _data_flags(p)
    p.add_argument("--min-radius", type=float, help="K of the entailment cones (default: the run's final K, or 0.1)")
    p.add_argument("--output", help="JSON file to write (default RUN/eval_geometry_<data>.json)")
    p.set_defaults(func=cmd_eval_geometry)


def add_top_level_subcommands(subparsers) -> None:
    """Add ``traverse`` and ``report`` to the top-level subparsers of ``euclip``."""
    p = subparsers.add_parser(
        "traverse", help="walk image embeddings toward the root and retrieve captions along the way",
        formatter_class=_FORMATTER,
        description=_describe(
            "MERU's image traversals for every geometry: from each synthetic image's embedding, step toward the root "
            "(euclidean: straight to the origin; hyperbolic: the geodesic to the origin; elliptic: the great circle "
            "to the normalised mean of the root captions) and retrieve the best caption of the shape taxonomy's "
            "caption pool at each step. Reports how often the retrieved captions lie on the image's true ancestor "
            "chain and how often the walk only gets more generic, with examples.",
            "Writes RUN/eval_traverse.json and prints the examples.",
            examples=("euclip traverse runs/meru --num-images 200",)))
    _common(p)
    p.add_argument("--num-images", type=int, default=100, help="synthetic images to walk")
    p.add_argument("--steps", type=int, default=20, help="interpolation steps from the image to the root")
    p.add_argument("--examples", type=int, default=8, help="walks printed and saved as text examples")
    p.add_argument("--split", default="test", choices=["test", "heldout"], help="synthetic split")
    p.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    p.add_argument("--output", help="JSON file to write (default RUN/eval_traverse.json)")
    p.set_defaults(func=cmd_traverse)

    p = subparsers.add_parser(
        "report", help="an HTML page comparing runs side by side", formatter_class=_FORMATTER,
        description=_describe(
            "A self-contained HTML report (inline CSS, PNG figures next to it, no scripts, opens offline) that puts "
            "runs side by side: metrics table (zero-shot, retrieval, hierarchy, diagnostics), training curves, norm "
            "histograms, 2-D embedding views (and the Poincaré disk for hyperbolic runs), cone satisfaction and "
            f"traversal examples; also report.json. Runs without {EVAL_ALL} are evaluated first on the synthetic "
            "test split (see --evaluate).",
            examples=("euclip report runs/demo/clip runs/demo/euclip runs/demo/meru --output runs/report",)))
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--output", default="report", help="folder for index.html, report.json and the figures")
    p.add_argument("--title", help="page title")
    p.add_argument("--evaluate", choices=["missing", "always", "never"], default="missing",
                   help=f"run the synthetic evaluation ({EVAL_ALL}) for runs without it, for all, or never")
    p.add_argument("--num-samples", type=int, default=512, help="synthetic samples for that evaluation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_report)
