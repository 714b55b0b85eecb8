"""``euclip convert`` and ``euclip export``: other code's checkpoints in, euclip models out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from euclip.interop.detect import SOURCES
from euclip.interop.export import FORMATS
from euclip.interop.paper import PAPER_GEOMETRIES


def cmd_convert(args: argparse.Namespace) -> int:
    from euclip.interop import convert

    converted = convert(args.src, args.output, source=args.source, geometry=args.geometry, model_config=args.config,
                        model=args.model)
    model = converted.model
    print(json.dumps({"written_to": args.output, "source": {k: v for k, v in converted.source.items()
                                                             if k != "params"},
                      "model": model.config_dict(), "scalars": model.scalars()}, indent=2, default=str))
    return 0


def _source_of(path: str) -> tuple[dict, dict]:
    """The ``source`` and training settings recorded in a native checkpoint (empty for other files)."""
    import torch

    from euclip.interop.detect import is_native, resolve_checkpoint_path

    p = Path(path)
    if p.is_dir() and (p / "checkpoints" / "latest.pt").is_file():
        p = p / "checkpoints" / "latest.pt"
    p = resolve_checkpoint_path(p)
    obj = torch.load(p, map_location="cpu", weights_only=False)
    if not is_native(obj):
        return {}, {}
    config = obj.get("config", {})
    train = {k: config[k] for k in ("entailment_weight", "min_radius", "min_radius_final") if k in config}
    return obj.get("source") or {}, train


def cmd_export(args: argparse.Namespace) -> int:
    from euclip.interop import export_openclip, export_paper
    from euclip.model import load_model

    model = load_model(args.run)
    if args.format == "openclip":
        written = export_openclip(model, args.output)
        usage = f"open_clip.create_model_and_transforms({model.config.model!r}, pretrained={str(written)!r})"
    else:
        source, train = _source_of(args.run)
        written = export_paper(model, args.output, source, train)
        from euclip.interop.paper import paper_geometry, paper_model_name

        usage = (f"the fork's open_clip.create_model_and_transforms({paper_model_name(model.config)!r}, "
                 f"pretrained={str(written)!r}, geometry={paper_geometry((model.geometry, model.logit))!r})")
    print(json.dumps({"format": args.format, "written_to": str(written), "load_with": usage}, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a checkpoint of the paper's code, MERU/HyCoCLIP or OpenCLIP to a euclip checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a checkpoint of the paper's OpenCLIP fork (its run's params.txt gives the geometry), of "
                    "MERU or HyCoCLIP ({model: state_dict, ...}), or an OpenCLIP file (a cosine model), and write it "
                    "as a euclip checkpoint that every euclip command reads. euclip's commands also read those "
                    "files directly (auto-detected); convert once to skip the detection and pin the flags.",
        epilog="examples:\n"
               "  euclip convert logs/euclip-b32/checkpoints/epoch_32.pt --output euclip-b32.pt\n"
               "  euclip convert meru_vit_b.pth --config meru/configs/train_meru_vit_b.py --output meru-b.pt\n"
               "  euclip convert open_clip_pytorch_model.bin --model ViT-B-32 --output clip-b32.pt")
    p.add_argument("src", help="checkpoint file, or a run directory (euclip, OpenCLIP/the paper's fork, MERU)")
    p.add_argument("--output", required=True, help="the euclip checkpoint (.pt) to write")
    p.add_argument("--source", default="auto", choices=list(SOURCES), help="the format (default: detected)")
    p.add_argument("--geometry", choices=list(PAPER_GEOMETRIES),
                   help="the paper fork's --geometry, when no params.txt beside the checkpoint says it")
    p.add_argument("--config", help="MERU's training config (configs/train_meru_vit_*.py; otherwise the architecture "
                                    "is inferred from the tensor shapes), or the paper run's params.txt when it is "
                                    "not beside the checkpoint")
    p.add_argument("--model", help="OpenCLIP model name (ViT-B-32, ...) when the file's shapes fit several")
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser(
        "export", help="write a euclip model as an OpenCLIP file or as a run of the paper's code",
        description="--format openclip: a cosine model (elliptic geometry, inner logit, final LayerNorms) as a "
                    "state dict that open_clip.create_model(NAME, pretrained=FILE) loads. --format paper: OUTPUT/"
                    "params.txt and OUTPUT/checkpoints/epoch_latest.pt in the layout of the paper's OpenCLIP fork, "
                    "which its CLIP_benchmark and DataComp forks evaluate. Both fold the model's image "
                    "normalisation into the patch embedding, so OpenCLIP's preprocessing gives euclip's embeddings.")
    p.add_argument("run", help="run directory or checkpoint file (any format euclip reads)")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--output", required=True, help="openclip: the file to write; paper: the run folder to write")
    p.set_defaults(func=cmd_export)
