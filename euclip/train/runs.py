"""Run-directory helpers shared by the CLI and the demo: default names, post-training evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from euclip.eval.zeroshot import class_prototypes, evaluate_zeroshot
from euclip.model import load_model, resolve_device
from euclip.train.distributed import is_main_process


def default_output(options: dict) -> str:
    name = options.get("preset") or options.get("geometry") or "euclip"
    return f"runs/{name}"


def synthetic_zeroshot(model, split: str, num_samples: int, device: torch.device, batch_size: int = 256,
                       workers: int = 0, progress: bool = True, seed: int = 0, classes: str = "shapes") -> dict:
    """Zero-shot classification of a synthetic split's shapes (or colours) with the synthetic prompt templates."""
    from euclip.data.synthetic import COLORS, SHAPES, TEMPLATES, SyntheticShapes

    if classes not in ("shapes", "colors"):
        raise ValueError(f"classes must be 'shapes' or 'colors', got {classes!r}")
    dataset = SyntheticShapes(split, size=num_samples, seed=seed, image_size=model.image_size)
    names, labels = (SHAPES, dataset.labels()) if classes == "shapes" else (COLORS, dataset.color_labels())
    loader = DataLoader(_Labelled(dataset, labels), batch_size=batch_size, num_workers=workers)
    prototypes = class_prototypes(model, names, TEMPLATES, model.tokenizer(), device)
    results = evaluate_zeroshot(model, loader, prototypes, names, device, progress=progress, total=len(loader))
    results.update(dataset="synthetic", split=split, classes=classes)
    return results


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, dataset, labels):
        self.dataset, self.labels = dataset, labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0], self.labels[i]


def evaluate_run(run_dir: str, progress: bool = True, num_samples: int | None = None) -> dict:
    """Zero-shot shape accuracy of a synthetic-data run on the test split and the held-out combinations.

    Writes ``RUN/results.json`` and returns ``{"zeroshot_test_top1", "zeroshot_heldout_top1", ...}``; returns
    ``{}`` on the non-main processes of a ``torchrun`` job.
    """
    if not is_main_process():
        return {}  # under torchrun the CLI calls this on every rank; rank 0 alone evaluates and writes
    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text())
    if config.get("dataset_type") != "synthetic":
        return {}
    device = resolve_device()
    model = load_model(run, device)
    n = num_samples or config.get("zeroshot_samples", 2000)
    out = {}
    for split in ("test", "heldout"):
        r = synthetic_zeroshot(model, split, n, device, progress=progress)
        (run / f"eval_zeroshot_{split}.json").write_text(json.dumps(_public(r), indent=2) + "\n")
        out[f"zeroshot_{split}_top1"] = r["top1"]
        out[f"zeroshot_{split}_top5"] = r["top5"]
    # Colours are learned long before shapes: their accuracy shows whether a short run learned anything.
    out["zeroshot_color_test_top1"] = synthetic_zeroshot(model, "test", n, device, progress=progress,
                                                         classes="colors")["top1"]
    (run / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _public(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("predictions", "labels")}


def zeroshot_command(args) -> dict:
    """``euclip eval zeroshot``: the synthetic split, or an image folder with class names and templates."""
    device = resolve_device(args.device)
    model = load_model(args.run, device)
    run = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent.parent
    if args.data is None:
        results = synthetic_zeroshot(model, args.split, args.num_samples, device, args.batch_size, args.workers)
        default_out = run / f"eval_zeroshot_{args.split}.json"
    else:
        from euclip.eval.folders import folder_zeroshot

        results = folder_zeroshot(model, args.data, args.classnames, args.templates, device, args.batch_size,
                                  args.workers)
        default_out = run / "eval_zeroshot_folder.json"
    results["run"] = str(args.run)
    out = Path(args.output) if args.output else default_out
    out.write_text(json.dumps(_public(results), indent=2) + "\n")
    results["written_to"] = str(out)
    return results
