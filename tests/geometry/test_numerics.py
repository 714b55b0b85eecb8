"""Finite values *and* gradients (no NaN/Inf) at the geometry's hard places, for every geometry and logit.

Identical points (x = y, where distances have a kink and ``acos``/``acosh``/``sqrt`` infinite slopes), zero
feature vectors (``project(0)``, where normalisation and the exponential map are 0/0), features of norm up
to 1e4 (where ``sinh`` overflows without MERU's cap), and curvatures 0.1 and 10 (the clamp range).
"""

from __future__ import annotations

import pytest
import torch

from euclip import geometry as geom
from euclip.losses import contrastive_loss

PAIRS = [(g, l) for g in geom.GEOMETRIES for l in geom.LOGITS]
CURVATURES = (0.1, 1.0, 10.0)
K = 0.1
D = 32


def hard_features(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Rows: zero, tiny, ordinary, large and huge norms (up to 1e4), plus a duplicated row and a negated one."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(9, D, dtype=torch.float64, generator=generator), dim=-1)
    norms = torch.tensor([0.0, 1e-30, 1e-6, 0.05, 1.0, 30.0, 1e3, 1e4, 1e4], dtype=torch.float64)
    f = directions * norms[:, None]
    f = torch.cat([f, f[4:5], -f[4:5]])  # an exact duplicate and an antipode of an ordinary row
    return f.to(dtype)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def assert_finite(*tensors: torch.Tensor | None, what: str = "") -> None:
    for t in tensors:
        assert t is not None, f"{what}: missing gradient"
        assert torch.isfinite(t).all(), f"{what}: non-finite entries {t[~torch.isfinite(t)][:5].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_value", CURVATURES)
@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_pairwise_finite(geometry: str, logit: str, c_value: float, dtype: torch.dtype) -> None:
    f = leaf(hard_features(dtype))
    c = torch.tensor(c_value, dtype=dtype, requires_grad=True)
    x = geom.project(f, geometry, c)
    assert_finite(x, what="project")
    # x against itself: identical points on the diagonal (and the duplicated row elsewhere).
    out = geom.pairwise_logits(x, x, geometry, logit, c)
    distances = geom.distance(x, x, geometry, c)
    assert_finite(out, distances, what="values")
    # Weights of both signs and sizes, so that no gradient term is cancelled by symmetry.
    weights = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ((out * weights).sum() + (distances * weights).sum()).backward()
    assert_finite(f.grad, what="grad features")
    if geometry == "hyperbolic":
        assert_finite(c.grad, what="grad curvature")


@pytest.mark.parametrize("c_value", CURVATURES)
@pytest.mark.parametrize("geometry", geom.CONE_GEOMETRIES)
def test_cones_finite(geometry: str, c_value: float) -> None:
    f = hard_features()
    n = f.shape[0]
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    parent_f, child_f = leaf(f[rows.flatten()]), leaf(f[cols.flatten()])  # every ordered pair, x = y included
    c = torch.tensor(c_value, requires_grad=True)
    parent, child = geom.project(parent_f, geometry, c), geom.project(child_f, geometry, c)
    aperture = geom.half_aperture(parent, geometry, K, c)
    angle = geom.exterior_angle(parent, child, geometry, c)
    penalty = geom.entailment_penalty(parent, child, geometry, K, c)
    assert_finite(aperture, angle, penalty, what="values")
    assert torch.all((aperture > 0) & (aperture <= torch.pi / 2))
    assert torch.all((angle >= 0) & (angle <= torch.pi + 1e-6))
    assert torch.all(angle[rows.flatten() == cols.flatten()] == 0)  # the apex is inside its own cone
    weights = torch.randn(angle.shape, generator=torch.Generator().manual_seed(2))
    ((aperture + angle + penalty) * weights).sum().backward()
    assert_finite(parent_f.grad, child_f.grad, what="grads")
    if geometry == "hyperbolic":
        assert_finite(c.grad, what="grad curvature")


@pytest.mark.parametrize("c_value", CURVATURES)
@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_loss_finite(geometry: str, logit: str, c_value: float) -> None:
    f = hard_features()
    image_f, text_f = leaf(f), leaf(torch.cat([f[:1], f[1:].flip(0)]))  # some pairs identical, some not
    c = torch.tensor(c_value, requires_grad=True)
    scale = torch.tensor(100.0, requires_grad=True)  # the largest logit scale: the sharpest softmax
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    for text_features in (text_f, image_f):  # the second time, image = text exactly
        out = contrastive_loss(geom.project(image_f, geometry, c), geom.project(text_features, geometry, c),
                               geometry, logit, scale, c, entailment_weight=weight, min_radius=K)
        assert_finite(out.total, out.contrastive, out.entailment, what="loss")
        out.total.backward()
    assert_finite(image_f.grad, text_f.grad, scale.grad, what="grads")
    if geometry == "hyperbolic":
        assert_finite(c.grad, what="grad curvature")


@pytest.mark.parametrize("geometry", geom.GEOMETRIES)
def test_zero_features_project_to_the_origin(geometry: str) -> None:
    zero = leaf(torch.zeros(2, D))
    x = geom.project(zero, geometry, 1.0)
    assert torch.all(x == 0)  # the origin (elliptic: no direction, so 0 rather than NaN)
    x.sum().backward()
    assert_finite(zero.grad, what="grad at 0")
