"""The paper's three headline models as one-word presets (geometry, logit, LayerNorm, entailment, scale)."""

from __future__ import annotations

import math

# log t at initialisation: CLIP's ln(1/0.07); the paper's squared-distance models start at 0 (−1 with
# the entailment loss) because the squared distance grows quadratically.
CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)

PRESETS: dict[str, dict] = {
    "clip": dict(geometry="elliptic", logit="inner", final_ln=True, entailment_weight=0.0,
                 init_logit_scale=CLIP_INIT_LOGIT_SCALE),
    "euclip": dict(geometry="euclidean", logit="squared", final_ln=False, entailment_weight=0.0,
                   init_logit_scale=0.0),
    "meru": dict(geometry="hyperbolic", logit="distance", final_ln=True, entailment_weight=0.2, min_radius=0.1,
                 init_logit_scale=CLIP_INIT_LOGIT_SCALE, curvature=1.0, learn_curvature=True),
}


def default_init_logit_scale(logit: str, entailment_weight: float) -> float:
    """The paper's initial ``log t`` for a logit: 0 (−1 with entailment) for squared distances, else CLIP's."""
    if logit == "squared":
        return -1.0 if entailment_weight > 0 else 0.0
    return CLIP_INIT_LOGIT_SCALE


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return name
