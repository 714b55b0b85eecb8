"""End to end through the real CLI: train → checkpoint → resume → eval, on synthetic and CSV data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from euclip.cli import main
from euclip.model import load_model

pytestmark = pytest.mark.slow


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["clip", "euclip", "meru"])
def test_synthetic_train_resume_eval(tmp_path, tiny_train_args, preset):
    run = tmp_path / preset
    assert main(["train", "--preset", preset, "--steps", "4", "--save-every-steps", "2", "--output", str(run),
                 "--no-eval", *tiny_train_args]) == 0
    assert (run / "checkpoints" / "latest.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == preset and config["model"]["model"] == "tiny"
    first = load_model(run)
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]

    # Resume the same run for more steps: it continues from step 4, it does not restart.
    assert main(["train", "--preset", preset, "--steps", "6", "--save-every-steps", "2", "--output", str(run),
                 "--resume", "latest", *tiny_train_args]) == 0
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and np.isfinite(summary["final_loss"])
    resumed = load_model(run)
    changed = any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), resumed.state_dict().values()))
    assert changed, "resumed training did not update the weights"
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert 0 <= metrics["zeroshot.top1"] <= 1 and 0 <= metrics["zeroshot.heldout_shape_top1"] <= 1

    assert main(["eval", "zeroshot", str(run), "--num-samples", "32", "--split", "heldout", "--device", "cpu"]) == 0
    heldout = json.loads((run / "eval_zeroshot_synthetic_heldout.json").read_text())
    assert heldout["num_samples"] == 32 and set(heldout) >= {"top1", "top5", "per_class"}
    assert "heldout_shape" not in heldout["tasks"]  # the held-out split is the data itself here


def _write_csv_dataset(root, n=40):
    rng = np.random.default_rng(0)
    rows = ["filepath\tcaption"]
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
    for i in range(n):
        name = list(colors)[i % 4]
        pixels = np.clip(np.array(colors[name]) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
        fmt = "png" if i % 2 else "jpg"
        (root / "img").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / "img" / f"{i}.{fmt}")
        rows.append(f"img/{i}.{fmt}\ta {name} square number {i}")
    rows.append("img/missing.png\ta missing image")
    (root / "img" / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    rows.append("img/corrupt.jpg\ta corrupt image")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def test_csv_train_resume_eval(tmp_path, tiny_train_args):
    csv = _write_csv_dataset(tmp_path)
    run = tmp_path / "run"
    args = ["--dataset-type", "csv", "--train-data", str(csv), "--output", str(run), "--save-every-steps", "2",
            *tiny_train_args, "--batch-size", "21"]
    assert main(["train", "--steps", "2", *args]) == 0
    assert main(["train", "--steps", "4", "--resume", "latest", *args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4
    # 42 rows in batches of 21: every epoch (2 steps) reads every row once, so the missing and the
    # corrupt image are skipped once per epoch: 4 over the 2 epochs, counted across the resume.
    assert summary["skipped_samples"] == 4
    assert _metrics(run)[-1]["skipped_samples"] == 4
    # Zero-shot on an image folder (ImageNet layout) with a templates file.
    folder = tmp_path / "classes"
    for name, rgb in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((36, 36, 3), rgb, dtype=np.uint8)).save(folder / name / f"{i}.png")
    (tmp_path / "templates.txt").write_text("a {} square.\na photo of a {}.\n")
    assert main(["eval", "zeroshot", str(run), "--data", str(folder), "--templates", str(tmp_path / "templates.txt"),
                 "--device", "cpu"]) == 0
    result = json.loads((run / "eval_zeroshot_folder.json").read_text())  # one name per data source
    assert result["num_samples"] == 6 and result["classes"] == ["blue", "red"]
