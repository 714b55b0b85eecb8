"""``euclip demo``: the paper's three headline models trained and compared on the built-in data.

Trains the ``clip``, ``euclip`` and ``meru`` presets on the synthetic dataset with the same budget
(steps, batch, learning rate, seed), evaluates each (zero-shot shape classification on the test
split and on held-out colour–shape combinations) and writes, under the demo folder:
``results.md`` and ``results.json`` (the table), ``norms.png`` (the geometry of each model's
embeddings), and one run directory per model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from euclip import geometry as geom
from euclip.presets import PRESETS

# Measured on a 2-core CPU (see README): full demo ≈ 8 minutes; --quick ≈ 1 minute.
DEMO_STEPS, QUICK_STEPS = 450, 60
DEMO_BATCH, QUICK_BATCH = 128, 64


def demo_options(preset: str, output: Path, steps: int, batch_size: int, quick: bool, progress: bool) -> dict:
    # The entailment weight (MERU) ramps up over the first third: at full weight from step 1, runs this short
    # and small-batch can collapse every text embedding onto the origin, where each cone is a half-space and
    # the penalty vanishes, and the contrastive loss then stays at log(batch) (seen here: shape zero-shot 8 %).
    return dict(preset=preset, output=str(output / preset), steps=steps, batch_size=batch_size, lr=1e-3,
                warmup=min(50, steps // 10), entailment_warmup=steps // 3, wd=0.1, workers=1,
                save_every_steps=max(steps // 2, 1),
                log_every_steps=10, zeroshot_samples=512 if quick else 2000, train_num_samples=50_000,
                progress=progress, seed=0)


@torch.no_grad()
def embedding_norms(run_dir: Path, num_samples: int = 512) -> dict[str, list[float]]:
    """Distances from the origin of image and text embeddings of synthetic test samples.

    For the elliptic geometry (all points at norm 1) the towers' pre-normalisation norms are shown.
    """
    from euclip.data.synthetic import SyntheticShapes
    from euclip.model import load_model

    model = load_model(run_dir)
    dataset = SyntheticShapes("test", size=num_samples, seed=0, image_size=model.image_size)
    images = torch.stack([dataset[i][0] for i in range(num_samples)])
    tokens = model.tokenizer()([dataset.caption(i) for i in range(num_samples)])
    f_image, f_text = model.towers.encode_image(images), model.towers.encode_text(tokens)
    if model.geometry == "elliptic":
        return {"image": f_image.norm(dim=-1).tolist(), "text": f_text.norm(dim=-1).tolist(),
                "label": "tower output norm (before normalisation)"}
    image, text = model.to_manifold(f_image, "image"), model.to_manifold(f_text, "text")
    return {"image": geom.norm_from_origin(image, model.geometry, model.curvature).tolist(),
            "text": geom.norm_from_origin(text, model.geometry, model.curvature).tolist(),
            "label": "distance from the origin"}


def plot_norms(norms: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.2), squeeze=False)
    for ax, (name, n) in zip(axes[0], norms.items()):
        ax.hist(n["image"], bins=40, alpha=0.6, label="image", color="tab:blue")
        ax.hist(n["text"], bins=40, alpha=0.6, label="text", color="tab:orange")
        ax.set_title(name)
        ax.set_xlabel(n["label"])
        ax.legend()
    axes[0][0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | geometry | logit | final LN | entailment | shape zero-shot top-1 (seen) | shape zero-shot top-1 "
            "(held-out combos) | colour zero-shot top-1 | final loss | train s | samples/s |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['geometry']} | {r['logit']} | {'yes' if r['final_ln'] else 'no'} | "
                     f"{r['entailment_weight']:g} | {100 * r['zeroshot_test_top1']:.1f} % | "
                     f"{100 * r['zeroshot_heldout_top1']:.1f} % | {100 * r['zeroshot_color_test_top1']:.1f} % | "
                     f"{r['final_loss']:.3f} | {r['train_seconds']:.0f} | "
                     f"{r['samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def run_demo(output: str = "runs/demo", quick: bool = False, budget_seconds: float | None = None,
             steps: int | None = None, presets: list[str] | None = None, progress: bool = True) -> list[dict]:
    from euclip.eval.commands import full_evaluation
    from euclip.eval.report import write_report
    from euclip.train.config import resolve_config
    from euclip.train.loop import train
    from euclip.train.runs import evaluate_run

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or (QUICK_STEPS if quick else DEMO_STEPS)
    batch = QUICK_BATCH if quick else DEMO_BATCH
    rows, norms = [], {}
    start = time.perf_counter()
    for preset in presets or list(PRESETS):
        cfg = resolve_config(demo_options(preset, out, steps, batch, quick, progress))
        print(f"[demo] training {preset}: {cfg.model.geometry}/{cfg.model.logit}, final LN "
              f"{'on' if cfg.model.final_ln else 'off'}, entailment {cfg.entailment_weight:g}, {steps} steps × {batch}")
        summary = train(cfg)
        summary.update(evaluate_run(cfg.output, progress=progress))
        full_evaluation(cfg.output, num_samples=512 if quick else 1000, progress=progress)
        rows.append({"preset": preset, "geometry": cfg.model.geometry, "logit": cfg.model.logit,
                     "final_ln": cfg.model.final_ln, "entailment_weight": cfg.entailment_weight, **summary})
        norms[preset] = embedding_norms(Path(cfg.output))
        if budget_seconds and time.perf_counter() - start > budget_seconds:
            print(f"[demo] budget of {budget_seconds:.0f} s spent; stopping after {preset}")
            break
    table = markdown_table(rows)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_norms(norms, out / "norms.png")
    write_report([out / r["preset"] for r in rows], out / "report")
    print()
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s. Results: {out / 'results.md'}, {out / 'results.json'}; "
          f"figure: {out / 'norms.png'}; report: {out / 'report' / 'index.html'}; runs: {', '.join(str(out / r['preset']) for r in rows)}")
    return rows
