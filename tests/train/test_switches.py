"""Performance switches train for a couple of steps on a CPU: mixed bf16 (with synthetic images rendered small
and resized on the device), fp16 autocast with loss scaling, and pure bf16 weights.

Gradient checkpointing runs in test_distributed (under DDP). ``--torchcompile`` is left out: compiling takes
about 90 s on this CPU (``COMPILE=1 bash benchmarks/gpu_check.sh`` covers it on a GPU).
"""

from __future__ import annotations

import math

import pytest
import torch

from euclip.model import GeometricCLIP, ModelConfig
from euclip.train.config import resolve_config
from euclip.train.loop import train

from euclip.losses import contrastive_loss
from euclip.presets import PRESETS


@pytest.mark.parametrize("preset", list(PRESETS))
def test_geometry_and_loss_stay_float32_under_bf16_autocast(preset):
    config = {k: v for k, v in PRESETS[preset].items() if k in ModelConfig.__dataclass_fields__}
    torch.manual_seed(0)
    model = GeometricCLIP(ModelConfig(model="tiny", **config))
    tokens = model.tokenizer()(["a red square", "a shape", "a small blue circle on the left", "a polygon"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image, text = model(torch.randn(4, 3, 32, 32), tokens)
        out = contrastive_loss(image, text, model.geometry, model.logit, model.logit_scale, model.curvature,
                               entailment_weight=PRESETS[preset]["entailment_weight"])
    assert image.dtype == text.dtype == torch.float32
    assert out.total.dtype == out.contrastive.dtype == out.entailment.dtype == torch.float32



SWITCHES = {
    # Rendered at 16 px and upsampled to 32 on the device; DataLoader workers (persistent) render them.
    "amp_bf16": dict(precision="amp_bf16", synthetic_render_size=16, workers=2),
    "amp_fp16": dict(precision="amp"),  # float16 autocast with a GradScaler
    "pure_bf16": dict(precision="pure_bf16"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_trains(tmp_path, th, name):
    cfg = resolve_config({**th.BASE_OPTIONS, "deterministic": False, "preset": "meru", "batch_size": 8, "steps": 2,
                          "save_every_steps": 100, **SWITCHES[name], "output": str(tmp_path / name)})
    summary = train(cfg)
    assert summary["steps"] == 2 and summary["nonfinite_steps"] == 0 and math.isfinite(summary["final_loss"])
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    initial = GeometricCLIP(ModelConfig(**cfg.to_dict()["model"])).state_dict()
    trained = th.model_state(tmp_path / name)
    assert trained["towers.visual.proj"].dtype == (torch.bfloat16 if name == "pure_bf16" else torch.float32)
    assert not torch.equal(trained["towers.visual.proj"].float(), initial["towers.visual.proj"])
