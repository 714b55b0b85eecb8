"""The geometry against an independent float64 reference, gradients, properties, names, autocast, memory.

The reference below is written straight from FORMULAS.md with textbook formulas and no numerical care
(broadcast ``(B1, B2, D)`` differences, explicit time components, ``acosh(−c⟨x, y⟩_L)``, MERU's ``acos``
exterior angle). It runs in float64 on the float32 inputs upcast, so a comparison measures only the
implementation's own rounding. Inputs are chosen so that the reference is well-conditioned: every pair of
directions has a cosine near 0.5 (no inner product near 0, no arc near 0 or π), and apertures are
compared away from the kink of ``asin(min(1, ·))``.
"""

from __future__ import annotations

import math
import resource

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from euclip import geometry as geom
from euclip.geometry import hyperbolic

PAIRS = [(g, l) for g in geom.GEOMETRIES for l in geom.LOGITS]
# Curvature matters for the hyperbolic geometry only: sweep it there, use c = 1 elsewhere.
CASES = [(g, l, c) for g, l in PAIRS for c in ((0.1, 1.0, 10.0) if g == "hyperbolic" else (1.0,))]
CONE_CASES = [("euclidean", 1.0)] + [("hyperbolic", c) for c in (0.1, 1.0, 10.0)]
K = 0.1  # min radius of the entailment cones (MERU's)
D = 256


# --------------------------------------------------------------------------------------------------------------------
# The float64 reference
# --------------------------------------------------------------------------------------------------------------------
def ref_time(x: torch.Tensor, c: float) -> torch.Tensor:
    return torch.sqrt(1 / c + (x * x).sum(-1))


def ref_project(f: torch.Tensor, geometry: str, c: float = 1.0) -> torch.Tensor:
    if geometry == "euclidean":
        return f / math.sqrt(f.shape[-1])
    if geometry == "elliptic":
        return f / f.norm(dim=-1, keepdim=True)
    r = math.sqrt(c) * f.norm(dim=-1, keepdim=True)
    return torch.sinh(r) / r * f


def ref_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x[:, None, :] * y[None, :, :]).sum(-1)


def ref_lorentz_inner(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    return ref_dot(x, y) - ref_time(x, c)[:, None] * ref_time(y, c)[None, :]


def ref_distance(x: torch.Tensor, y: torch.Tensor, geometry: str, c: float = 1.0) -> torch.Tensor:
    if geometry == "euclidean":
        return (x[:, None, :] - y[None, :, :]).norm(dim=-1)
    if geometry == "elliptic":
        return torch.acos(ref_dot(x, y).clamp(-1, 1))
    return torch.acosh((-c * ref_lorentz_inner(x, y, c)).clamp_min(1)) / math.sqrt(c)


def ref_logits(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str, c: float = 1.0) -> torch.Tensor:
    if logit == "inner":
        return ref_lorentz_inner(x, y, c) if geometry == "hyperbolic" else ref_dot(x, y)
    d = ref_distance(x, y, geometry, c)
    return -d if logit == "distance" else -d * d


def ref_aperture_ratio(x: torch.Tensor, geometry: str, c: float = 1.0) -> torch.Tensor:
    if geometry == "euclidean":
        return K / x.norm(dim=-1)
    return 2 * K / (math.sqrt(c) * x.norm(dim=-1))


def ref_half_aperture(x: torch.Tensor, geometry: str, c: float = 1.0) -> torch.Tensor:
    return torch.asin(ref_aperture_ratio(x, geometry, c).clamp_max(1))


def ref_exterior_angle(x: torch.Tensor, y: torch.Tensor, geometry: str, c: float = 1.0) -> torch.Tensor:
    if geometry == "euclidean":
        diff = y - x
        return torch.acos((diff * x).sum(-1) / (diff.norm(dim=-1) * x.norm(dim=-1)))
    x_time, y_time = ref_time(x, c), ref_time(y, c)
    l = c * ((x * y).sum(-1) - x_time * y_time)  # noqa: E741 -- MERU's name
    return torch.acos((y_time + x_time * l) / (x.norm(dim=-1) * torch.sqrt(l * l - 1)))


# --------------------------------------------------------------------------------------------------------------------
# Inputs and comparisons
# --------------------------------------------------------------------------------------------------------------------
def directions(n: int, generator: torch.Generator, dim: int = D) -> torch.Tensor:
    """Unit vectors whose pairwise cosines are all about 0.5 (a shared component plus independent noise)."""
    common = torch.randn(dim, dtype=torch.float64, generator=generator)
    dirs = common / common.norm() + torch.randn(n, dim, dtype=torch.float64, generator=generator) / math.sqrt(dim)
    return dirs / dirs.norm(dim=-1, keepdim=True)


def features(geometry: str, n: int, seed: int, low: float | None = None, high: float | None = None,
             dim: int = D) -> torch.Tensor:
    """Float32 tower outputs of realistic norms for ``geometry``.

    Euclidean: points of norm 0.5–3 after ``project``'s ``1/sqrt(D)``; elliptic: any norm; hyperbolic:
    tangent vectors of norm 0.1–3 (mapped by the exponential map to points of norm up to ~10/sqrt(c)).
    """
    generator = torch.Generator().manual_seed(seed)
    default = {"euclidean": (0.5, 3.0), "elliptic": (0.1, 10.0), "hyperbolic": (0.1, 3.0)}[geometry]
    low, high = low if low is not None else default[0], high if high is not None else default[1]
    radius = low + (high - low) * torch.rand(n, 1, dtype=torch.float64, generator=generator)
    scale = math.sqrt(dim) if geometry == "euclidean" else 1.0
    return (directions(n, generator, dim) * radius * scale).float()


def points(geometry: str, n: int, seed: int, c: float = 1.0, **kwargs) -> torch.Tensor:
    return geom.project(features(geometry, n, seed, **kwargs), geometry, c)


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float,
               floor: torch.Tensor | float = 0.0, what: str = "") -> None:
    """Elementwise ``|actual − expected| <= rtol · max(|expected|, floor)``.

    ``floor`` is the scale below which a relative error is meaningless (e.g. ``||x|| ||y||`` for a dot
    product, whose rounding error is proportional to it, not to the dot product itself).
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = (actual.double() - expected).abs()
    bound = rtol * torch.maximum(expected.abs(), torch.as_tensor(floor, dtype=torch.float64).expand_as(expected))
    ratio = error / bound
    worst = ratio.argmax()
    if not torch.all(error <= bound):
        pytest.fail(f"{what}: error {error.flatten()[worst]:.3g} at expected {expected.flatten()[worst]:.6g} "
                    f"exceeds rtol {rtol:g} (max error/bound {ratio.max():.3g})")


def inner_floor(x: torch.Tensor, y: torch.Tensor, geometry: str) -> torch.Tensor | float:
    """Rounding scale of an inner-product logit: ``||x|| ||y||`` (the Lorentzian one is ``<= −1/c``: none)."""
    if geometry == "hyperbolic":
        return 0.0
    return x.double().norm(dim=-1)[:, None] * y.double().norm(dim=-1)[None, :]


# --------------------------------------------------------------------------------------------------------------------
# Agreement with the reference
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry,c", [("euclidean", 1.0), ("elliptic", 1.0)] + [("hyperbolic", c)
                                                                                  for c in (0.1, 1.0, 10.0)])
def test_project_matches_reference(geometry: str, c: float) -> None:
    f = features(geometry, 64, seed=1)
    x = geom.project(f, geometry, c)
    assert x.dtype == torch.float32
    expected = ref_project(f.double(), geometry, c)
    assert_rel(x, expected, 1e-5, floor=expected.norm(dim=-1, keepdim=True), what=f"project {geometry}")


@pytest.mark.parametrize("geometry,logit,c", CASES)
def test_pairwise_logits_match_reference(geometry: str, logit: str, c: float) -> None:
    x, y = points(geometry, 48, seed=2, c=c), points(geometry, 40, seed=3, c=c)
    out = geom.pairwise_logits(x, y, geometry, logit, c)
    assert out.dtype == torch.float32 and out.shape == (48, 40)
    floor = inner_floor(x, y, geometry) if logit == "inner" else 0.0
    assert_rel(out, ref_logits(x.double(), y.double(), geometry, logit, c), 1e-5, floor, f"{geometry} {logit}")


@pytest.mark.parametrize("geometry,c", [("euclidean", 1.0), ("elliptic", 1.0)] + [("hyperbolic", c)
                                                                                  for c in (0.1, 1.0, 10.0)])
def test_distance_matches_reference(geometry: str, c: float) -> None:
    x, y = points(geometry, 48, seed=4, c=c), points(geometry, 40, seed=5, c=c)
    assert_rel(geom.distance(x, y, geometry, c), ref_distance(x.double(), y.double(), geometry, c), 1e-5,
               what=f"{geometry} distance")


def cone_inputs(geometry: str, c: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents spanning both sides of the aperture's kink (norm ≈ K), children of all radii."""
    low = 0.01 if geometry == "euclidean" else 0.005
    parent = points(geometry, 200, seed, c, low=low, high=3.0)
    child = points(geometry, 200, seed + 1, c, low=low, high=3.0)
    return parent, child


@pytest.mark.parametrize("geometry,c", CONE_CASES)
def test_cones_match_reference(geometry: str, c: float) -> None:
    parent, child = cone_inputs(geometry, c, seed=6)
    p64, c64 = parent.double(), child.double()
    # asin(min(1, r)) is ill-conditioned near r = 1 (asin' = 1/sqrt(1 − r²)): compare away from it.
    ratio = ref_aperture_ratio(p64, geometry, c)
    conditioned = (ratio < 0.8) | (ratio > 1.25)
    assert (ratio[conditioned] > 1).any() and (ratio[conditioned] < 1).any(), "both sides of the kink"
    aperture = geom.half_aperture(parent, geometry, K, c)
    assert_rel(aperture[conditioned], ref_half_aperture(p64, geometry, c)[conditioned], 1e-5, what="aperture")
    angle = geom.exterior_angle(parent, child, geometry, c)
    ref_angle = ref_exterior_angle(p64, c64, geometry, c)
    assert_rel(angle, ref_angle, 1e-5, what="exterior angle")
    # The penalty is a difference of the two angles; its rounding scale is their size (near 0 it is tiny).
    penalty = geom.entailment_penalty(parent, child, geometry, K, c)
    ref_penalty = torch.relu(ref_angle - ref_half_aperture(p64, geometry, c))
    assert (ref_penalty > 0).any() and (ref_penalty == 0).any()
    scale = ref_angle + ref_half_aperture(p64, geometry, c)
    assert_rel(penalty[conditioned], ref_penalty[conditioned], 1e-5, scale[conditioned], what="penalty")


@pytest.mark.parametrize("geometry,c", CONE_CASES)
def test_cones_inside_is_zero_outside_is_positive(geometry: str, c: float) -> None:
    """A child on the cone's axis beyond the apex has zero penalty; one behind the apex a positive one."""
    parent = points(geometry, 64, seed=8, c=c, low=0.05, high=3.0).double()
    # Float32 rounding of s·x moves it off the ray by ~eps·||x||, an angle of up to ~eps·||x|| / ||(s − 1) x||
    # at the apex; far from the origin the aperture is smaller than that, so that check is in float64.
    for s in (1.01, 1.5, 4.0):
        assert torch.all(geom.entailment_penalty(parent, s * parent, geometry, K, c) == 0), s
        wide = geom.half_aperture(parent, geometry, K, c) > 0.01
        p32 = parent[wide].float()
        assert torch.all(geom.entailment_penalty(p32, s * p32, geometry, K, c) == 0), s
    # Behind the apex the angle is π; float32's 1e-3 allows for the rounding of the perpendicular component,
    # which the hyperbolic metric magnifies far out (up to ~5e-4 rad at sqrt(c)||x|| ~ 10^4).
    for dtype in (torch.float64, torch.float32):
        p = parent.to(dtype)
        aperture = geom.half_aperture(p, geometry, K, c)
        for child in (0.1 * p, 0.5 * p, -p, torch.zeros_like(p)):
            angle = geom.exterior_angle(p, child, geometry, c)
            torch.testing.assert_close(angle, torch.full_like(angle, math.pi), rtol=0, atol=1e-3)
            penalty = geom.entailment_penalty(p, child, geometry, K, c)
            assert torch.all(penalty > 0)
            torch.testing.assert_close(penalty, math.pi - aperture, rtol=0, atol=1e-3)
        # The apex itself is inside its own cone: exterior angle exactly 0.
        assert torch.all(geom.exterior_angle(p, p, geometry, c) == 0)


@pytest.mark.parametrize("geometry,logit,c", CASES)
def test_float64_in_float64_out(geometry: str, logit: str, c: float) -> None:
    x, y = points(geometry, 24, seed=9, c=c).double(), points(geometry, 20, seed=10, c=c).double()
    out = geom.pairwise_logits(x, y, geometry, logit, c)
    assert out.dtype == torch.float64
    floor = inner_floor(x, y, geometry) if logit == "inner" else 0.0
    assert_rel(out, ref_logits(x, y, geometry, logit, c), 1e-12, floor, f"{geometry} {logit} float64")
    assert_rel(geom.distance(x, y, geometry, c), ref_distance(x, y, geometry, c), 1e-12, what="float64 distance")
    f = features(geometry, 16, seed=11).double()
    expected = ref_project(f, geometry, c)
    projected = geom.project(f, geometry, c)
    assert projected.dtype == torch.float64
    assert_rel(projected, expected, 1e-12, expected.norm(dim=-1, keepdim=True), what="float64 project")


@pytest.mark.parametrize("geometry,c", CONE_CASES)
def test_float64_cones(geometry: str, c: float) -> None:
    parent, child = (t.double() for t in cone_inputs(geometry, c, seed=12))
    ratio = ref_aperture_ratio(parent, geometry, c)
    conditioned = (ratio < 0.8) | (ratio > 1.25)
    aperture = geom.half_aperture(parent, geometry, K, c)
    assert aperture.dtype == torch.float64
    assert_rel(aperture[conditioned], ref_half_aperture(parent, geometry, c)[conditioned], 1e-12, what="aperture")
    angle = geom.exterior_angle(parent, child, geometry, c)
    assert angle.dtype == torch.float64
    ref_angle = ref_exterior_angle(parent, child, geometry, c)
    # The acos reference itself is only good to ~1e-16 / sin θ: compare where that is below 1e-13.
    fine = torch.sin(ref_angle) > 1e-2
    assert_rel(angle[fine], ref_angle[fine], 1e-12, what="exterior angle")


# --------------------------------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck at generic points, curvature included)
# --------------------------------------------------------------------------------------------------------------------
def f64(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, dtype=torch.float64, generator=generator)).requires_grad_(True)


def curvature_arg(geometry: str, value: float = 0.7) -> torch.Tensor | float:
    """A learnable 0-d curvature for the hyperbolic geometry (the others ignore it)."""
    if geometry == "hyperbolic":
        return torch.tensor(value, dtype=torch.float64, requires_grad=True)
    return value


def gradcheck(fn, *inputs) -> None:
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("geometry", geom.GEOMETRIES)
def test_gradcheck_project(geometry: str) -> None:
    c = curvature_arg(geometry)
    # Hyperbolic: the main branch, the small-norm Taylor branch and the capped branch of the exponential map.
    for scale in ((0.5, 1e-3, 20.0) if geometry == "hyperbolic" else (1.0,)):
        f = f64(4, 5, seed=20, scale=scale)
        if geometry == "hyperbolic":
            gradcheck(lambda f, c: geom.project(f, geometry, c), f, c)
        else:
            gradcheck(lambda f: geom.project(f, geometry), f)


def test_gradcheck_log_map0_and_radius() -> None:
    x, c = f64(4, 5, seed=21, scale=0.8), curvature_arg("hyperbolic")
    gradcheck(hyperbolic.log_map0, x, c)
    gradcheck(lambda x, c: geom.norm_from_origin(x, "hyperbolic", c), x, c)
    gradcheck(hyperbolic.log_map0, f64(4, 5, seed=22, scale=1e-3), c)


@pytest.mark.parametrize("geometry,logit,c_value", CASES)
def test_gradcheck_pairwise_logits(geometry: str, logit: str, c_value: float) -> None:
    c = curvature_arg(geometry, c_value)
    # Radii from near the origin to far out (sqrt(c)·||v|| from ~0.1 to ~5).
    radii = torch.tensor([0.05, 0.5, 1.5, 3.0], dtype=torch.float64)[:, None] / math.sqrt(c_value)
    x = geom.project(radii[:3] * f64(3, 5, seed=23), geometry, c_value).detach().requires_grad_(True)
    y = geom.project(radii.flip(0) * f64(4, 5, seed=24), geometry, c_value).detach().requires_grad_(True)
    if geometry == "hyperbolic":
        gradcheck(lambda x, y, c: geom.pairwise_logits(x, y, geometry, logit, c), x, y, c)
    else:
        gradcheck(lambda x, y: geom.pairwise_logits(x, y, geometry, logit), x, y)


@pytest.mark.parametrize("geometry", geom.GEOMETRIES)
def test_gradcheck_distance(geometry: str) -> None:
    c = curvature_arg(geometry)
    x = geom.project(f64(3, 5, seed=25), geometry, 0.7).detach().requires_grad_(True)
    y = geom.project(f64(4, 5, seed=26), geometry, 0.7).detach().requires_grad_(True)
    if geometry == "hyperbolic":
        gradcheck(lambda x, y, c: geom.distance(x, y, geometry, c), x, y, c)
    else:
        gradcheck(lambda x, y: geom.distance(x, y, geometry), x, y)


@pytest.mark.parametrize("geometry", geom.CONE_GEOMETRIES)
def test_gradcheck_cones(geometry: str) -> None:
    c = curvature_arg(geometry)
    c_value = 0.7
    # Parents outside the widest-cone region (norm > K), so that the aperture depends on them ...
    parent = f64(6, 5, seed=27, scale=0.6)
    child = f64(6, 5, seed=28, scale=0.6)
    with torch.no_grad():
        child[:2] = 2 * parent[:2] + 0.01 * child[:2]  # inside the cone: zero penalty
    assert (ref_aperture_ratio(parent.detach(), geometry, c_value) < 0.9).all()
    if geometry == "hyperbolic":
        gradcheck(lambda x, c: geom.half_aperture(x, geometry, K, c), parent, c)
        gradcheck(lambda x, y, c: geom.exterior_angle(x, y, geometry, c), parent, child, c)
        penalty = geom.entailment_penalty(parent, child, geometry, K, c_value).detach()
        assert (penalty > 1e-3).any() and (penalty == 0).any()  # generic points on both sides of the relu
        gradcheck(lambda x, y, c: geom.entailment_penalty(x, y, geometry, K, c), parent, child, c)
    else:
        gradcheck(lambda x: geom.half_aperture(x, geometry, K), parent)
        gradcheck(lambda x, y: geom.exterior_angle(x, y, geometry), parent, child)
        gradcheck(lambda x, y: geom.entailment_penalty(x, y, geometry, K), parent, child)
    # ... and inside it (aperture π/2, gradient 0).
    near = f64(3, 5, seed=29, scale=0.005)
    gradcheck(lambda x: geom.half_aperture(x, geometry, K, c_value), near)


# --------------------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry,c", [("euclidean", 1.0), ("elliptic", 1.0)] + [("hyperbolic", c)
                                                                                  for c in (0.1, 1.0, 10.0)])
def test_metric_properties(geometry: str, c: float) -> None:
    """Distance to self ≈ 0, symmetry, triangle inequality (float64, so that rounding does not blur them)."""
    generator = torch.Generator().manual_seed(30)
    f = torch.randn(40, 16, dtype=torch.float64, generator=generator)
    f = f * (torch.logspace(-2, 0.5, 40, dtype=torch.float64) / (4 * math.sqrt(c)))[:, None]  # radii 0.01–3
    if geometry != "elliptic":
        f[5] = 0.0  # the origin
    f[7] = f[6]  # duplicate points
    x = geom.project(f, geometry, c)
    d = geom.distance(x, x, geometry, c)
    # Through the Gram matrix a self-distance is the square root of a rounding error: ≈ sqrt(eps) · norm.
    tolerance = 10 * math.sqrt(torch.finfo(torch.float64).eps) * max(1.0, x.norm(dim=-1).max().item())
    assert torch.all(d >= 0)
    assert d.diagonal().max() < tolerance and d[6, 7] < tolerance
    torch.testing.assert_close(d, geom.distance(x, x.flip(0), geometry, c).flip(1), rtol=1e-12, atol=tolerance)
    torch.testing.assert_close(d, d.T, rtol=1e-12, atol=tolerance)
    # d(i, k) <= d(i, j) + d(j, k) for all triples
    slack = d[:, None, :] - (d[:, :, None] + d[None, :, :])
    assert slack.max() <= tolerance
    x32 = x.float()
    tolerance32 = 10 * math.sqrt(torch.finfo(torch.float32).eps) * max(1.0, x32.norm(dim=-1).max().item())
    assert geom.distance(x32, x32, geometry, c).diagonal().max() < tolerance32


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=9, max_size=9),
       st.sampled_from(geom.GEOMETRIES), st.sampled_from([0.1, 1.0, 10.0]))
def test_triangle_inequality_hypothesis(coords: list[float], geometry: str, c: float) -> None:
    f = torch.tensor(coords, dtype=torch.float64).reshape(3, 3)
    if geometry == "elliptic" and (f.norm(dim=-1) == 0).any():
        return
    x = geom.project(f, geometry, c)
    d = geom.distance(x, x, geometry, c)
    assert d[0, 2] <= d[0, 1] + d[1, 2] + 1e-9
    assert abs(d[0, 1] - d[1, 0]) <= 1e-9 * (1 + d[0, 1])


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_exp_map_lands_on_the_hyperboloid(c: float) -> None:
    v = features("hyperbolic", 64, seed=31, low=0.01, high=10.0 / math.sqrt(c)).double()  # below the cap
    x = geom.project(v, "hyperbolic", c)
    # The exponential map's time component is cosh(√c||v||)/√c; the implied one must equal it, i.e. the
    # space components satisfy ⟨x, x⟩_L = ||x||² − x_time² = −1/c with that time component.
    x_time = torch.cosh(math.sqrt(c) * v.norm(dim=-1)) / math.sqrt(c)
    # (Its two terms are each of size x_time², which sets the scale of their difference's rounding.)
    assert_rel((x * x).sum(-1) - x_time**2, torch.full_like(x_time, -1 / c), 1e-13, x_time**2, what="hyperboloid")
    assert_rel(hyperbolic.time_component(x, torch.tensor(c, dtype=torch.float64)), x_time, 1e-12, what="time")
    # Geodesic distance from the origin equals the tangent vector's norm.
    assert_rel(geom.norm_from_origin(x, "hyperbolic", c), v.norm(dim=-1), 1e-12, what="radius")
    origin = torch.zeros(1, v.shape[-1], dtype=torch.float64)
    assert_rel(geom.distance(origin, x, "hyperbolic", c)[0], v.norm(dim=-1), 1e-12, what="distance to origin")
    # Float32 too, within the cap.
    x32 = geom.project(v.float(), "hyperbolic", c)
    assert_rel(hyperbolic.time_component(x32, torch.tensor(c)), x_time, 1e-5, what="time float32")


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_log_map_inverts_exp_map(c: float) -> None:
    cc = torch.tensor(c)
    v = features("hyperbolic", 64, seed=32, low=1e-4, high=10.0 / math.sqrt(c))  # below the cap √c||v|| = 11.09
    assert_rel(hyperbolic.log_map0(hyperbolic.exp_map0(v, cc), cc), v.double(), 1e-5,
               v.double().norm(dim=-1, keepdim=True), what="log(exp(v))")
    x = points("hyperbolic", 64, seed=33, c=c)
    assert_rel(hyperbolic.exp_map0(hyperbolic.log_map0(x, cc), cc), x.double(), 1e-5,
               x.double().norm(dim=-1, keepdim=True), what="exp(log(x))")
    # Beyond the cap the direction is kept and the norm is sinh(asinh(2^15))/√c.
    huge = geom.project(v * 1e3, "hyperbolic", c)
    torch.testing.assert_close(huge.norm(dim=-1), torch.full((64,), 2.0**15 / math.sqrt(c)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("geometry,c", CONE_CASES)
def test_aperture_range(geometry: str, c: float) -> None:
    norms = torch.cat([torch.zeros(1), torch.logspace(-6, 4, 200)])
    x = norms[:, None] * torch.nn.functional.normalize(torch.randn(201, 8), dim=-1)
    for dtype in (torch.float32, torch.float64):
        aperture = geom.half_aperture(x.to(dtype), geometry, K, c)
        assert torch.all(aperture > 0) and torch.all(aperture <= math.pi / 2)
        assert aperture[0] == math.pi / 2  # the widest cone, exactly, at (and near) the origin
        assert torch.all(aperture[:-1] >= aperture[1:])  # narrower further out


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_logits_equivariant_to_permutations(geometry: str, logit: str) -> None:
    x, y = points(geometry, 32, seed=34, c=0.5), points(geometry, 24, seed=35, c=0.5)
    p, q = torch.randperm(32), torch.randperm(24)
    out = geom.pairwise_logits(x, y, geometry, logit, 0.5)
    torch.testing.assert_close(geom.pairwise_logits(x[p], y[q], geometry, logit, 0.5), out[p][:, q],
                               rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alias,expected", [
    ("clip", ("elliptic", "inner")), ("elliptic", ("elliptic", "distance")),
    ("euclidean", ("euclidean", "distance")), ("euclidean-squared", ("euclidean", "squared")),
    ("euclidean-inner", ("euclidean", "inner")), ("hyperbolic", ("hyperbolic", "distance")),
    ("hyperbolic-squared", ("hyperbolic", "squared")), ("hyperbolic-inner", ("hyperbolic", "inner")),
    (" CLIP ", ("elliptic", "inner")),
])
def test_resolve_aliases(alias: str, expected: tuple[str, str]) -> None:
    assert geom.resolve(alias) == expected
    assert geom.resolve(alias, expected[1]) == expected  # restating the alias's own logit is fine


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_resolve_geometry_with_explicit_logit(geometry: str, logit: str) -> None:
    assert geom.resolve(geometry, logit) == (geometry, logit)


@pytest.mark.parametrize("alias,logit", [("clip", "distance"), ("euclidean-squared", "inner"),
                                         ("hyperbolic-inner", "squared")])
def test_resolve_conflicting_logit(alias: str, logit: str) -> None:
    with pytest.raises(ValueError, match="conflicts"):
        geom.resolve(alias, logit)


def test_resolve_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        geom.resolve("spherical")
    for name in list(geom.GEOMETRIES) + ["clip", "euclidean-squared", "hyperbolic-inner"]:
        assert name in str(info.value)
    with pytest.raises(ValueError) as info:
        geom.resolve("euclidean", "cosine")
    for name in geom.LOGITS:
        assert name in str(info.value)


def test_unknown_geometry_or_logit_anywhere() -> None:
    x = torch.randn(3, 4)
    calls = [
        lambda g: geom.project(x, g), lambda g: geom.distance(x, x, g),
        lambda g: geom.pairwise_logits(x, x, g, "inner"), lambda g: geom.half_aperture(x, g, K),
        lambda g: geom.exterior_angle(x, x, g),
        lambda g: geom.entailment_penalty(x, x, g, K), lambda g: geom.norm_from_origin(x, g),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call("poincare")
        assert all(g in str(info.value) for g in geom.GEOMETRIES), str(info.value)
    with pytest.raises(ValueError) as info:
        geom.pairwise_logits(x, x, "euclidean", "cosine")
    assert all(l in str(info.value) for l in geom.LOGITS), str(info.value)


def test_elliptic_cones_and_bad_arguments_are_errors() -> None:
    x = torch.randn(3, 4)
    for call in (lambda: geom.half_aperture(x, "elliptic", K), lambda: geom.exterior_angle(x, x, "elliptic"),
                 lambda: geom.entailment_penalty(x, x, "elliptic", K)):
        with pytest.raises(ValueError, match="euclidean and hyperbolic"):
            call()
    with pytest.raises(ValueError, match="min_radius"):
        geom.half_aperture(x, "euclidean", 0.0)
    with pytest.raises(ValueError, match="scalar"):
        geom.pairwise_logits(x, x, "hyperbolic", "distance", torch.ones(2))


# --------------------------------------------------------------------------------------------------------------------
# Precision under autocast
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_autocast_computes_in_float32(geometry: str, logit: str) -> None:
    f, g = features(geometry, 16, seed=36), features(geometry, 12, seed=37)
    c = torch.tensor(0.8)

    def run(f, g):
        x, y = geom.project(f, geometry, c), geom.project(g, geometry, c)
        out = [x, geom.pairwise_logits(x, y, geometry, logit, c), geom.distance(x, y, geometry, c),
               geom.norm_from_origin(x, geometry, c)]
        if geometry in geom.CONE_GEOMETRIES:
            out += [geom.half_aperture(x, geometry, K, c), geom.exterior_angle(x, y[:1].expand_as(x), geometry, c),
                    geom.entailment_penalty(x, y[:1].expand_as(x), geometry, K, c)]
        return out

    expected = run(f, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = run(f, g)
    for a, e in zip(autocast, expected):
        assert a.dtype == torch.float32
        assert torch.equal(a, e)
    # Gradients too, with the backward pass run inside the autocast region.
    def grads(f, g):
        f, g = f.clone().requires_grad_(True), g.clone().requires_grad_(True)
        sum(t.sum() for t in run(f, g)).backward()
        return f.grad, g.grad

    expected_grads = grads(f, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_grads = grads(f, g)
    for a, e in zip(autocast_grads, expected_grads):
        assert a.dtype == torch.float32
        assert torch.equal(a, e)
    # Half-precision inputs are computed in float32 too, from their (rounded) values.
    from_bf16 = run(f.bfloat16(), g.bfloat16())
    for a, e in zip(from_bf16, run(f.bfloat16().float(), g.bfloat16().float())):
        assert a.dtype == torch.float32
        assert torch.equal(a, e)


# --------------------------------------------------------------------------------------------------------------------
# Memory: no (B1, B2, D) tensor
# --------------------------------------------------------------------------------------------------------------------
def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_AS"), reason="needs RLIMIT_AS (Linux)")
def test_pairwise_never_materialises_b1_b2_d() -> None:
    """Forward and backward of every pairwise logit within 1 GiB of new address space.

    A (B1, B2, D) float32 tensor here would be 3 GiB, so the address-space limit makes any such
    allocation fail cleanly (instead of exhausting the machine's memory) while the O(B1·B2) route fits.
    """
    b1, b2, dim = 1024, 768, 1024
    x = torch.randn(b1, dim).div_(math.sqrt(dim)).requires_grad_(True)
    y = torch.randn(b2, dim).div_(math.sqrt(dim)).requires_grad_(True)
    c = torch.tensor(1.0, requires_grad=True)
    for geometry, logit in PAIRS:  # warm-up: thread pools and allocator arenas come before the limit
        geom.pairwise_logits(x[:8], y[:8], geometry, logit, c).sum().backward()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space_bytes() + 2**30, hard))
    try:
        for geometry, logit in PAIRS:
            geom.pairwise_logits(x, y, geometry, logit, c).sum().backward()
            geom.distance(x.detach(), y.detach(), geometry, c)
        with pytest.raises(RuntimeError):  # the limit does bite
            torch.empty(b1, b2, dim).fill_(0)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
