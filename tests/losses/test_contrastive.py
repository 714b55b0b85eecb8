"""The contrastive + entailment loss against OpenCLIP, a float64 reference, multi-positive targets, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from euclip import geometry as geom
from euclip.losses import LossOutput, contrastive_loss

PAIRS = [(g, l) for g in geom.GEOMETRIES for l in geom.LOGITS]
# Curvature matters for the hyperbolic geometry only: two values there, one elsewhere.
CASES = [(g, l, c) for g, l in PAIRS for c in ((0.5, 2.0) if g == "hyperbolic" else (1.0,))]
K = 0.1


# A float64 reference written from FORMULAS.md (textbook formulas, broadcast (B1, B2, D), explicit time component).
def ref_time(x: torch.Tensor, c: float) -> torch.Tensor:
    return torch.sqrt(1 / c + (x * x).sum(-1))


def ref_logits(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str, c: float = 1.0) -> torch.Tensor:
    dot = (x[:, None, :] * y[None, :, :]).sum(-1)
    if geometry == "hyperbolic":
        lorentz = dot - ref_time(x, c)[:, None] * ref_time(y, c)[None, :]
        if logit == "inner":
            return lorentz
        d = torch.acosh((-c * lorentz).clamp_min(1)) / math.sqrt(c)
    elif logit == "inner":
        return dot
    elif geometry == "euclidean":
        d = (x[:, None, :] - y[None, :, :]).norm(dim=-1)
    else:
        d = torch.acos(dot.clamp(-1, 1))
    return -d if logit == "distance" else -d * d


def ref_info_nce(image: torch.Tensor, text: torch.Tensor, geometry: str, logit: str, scale: float,
                 c: float = 1.0) -> torch.Tensor:
    """CLIP's symmetric cross-entropy written out: ``−mean(log softmax)`` of the matching pairs, both ways."""
    z = scale * ref_logits(image, text, geometry, logit, c)
    image_to_text = (torch.logsumexp(z, dim=1) - z.diagonal()).mean()
    text_to_image = (torch.logsumexp(z, dim=0) - z.diagonal()).mean()
    return (image_to_text + text_to_image) / 2


def embeddings(geometry: str, n: int, seed: int, c: float = 1.0, dim: int = 64,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched image/text embeddings on the manifold: captions correlate (weakly) with their images."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    text = image + 1.5 * torch.randn(n, dim, dtype=torch.float64, generator=generator)
    scale = {"euclidean": 1.0, "elliptic": 1.0, "hyperbolic": 1.5 / math.sqrt(dim)}[geometry]
    return (geom.project((scale * image).to(dtype), geometry, c), geom.project((scale * text).to(dtype), geometry, c))


def logit_scale(image: torch.Tensor, text: torch.Tensor, geometry: str, logit: str, c: float = 1.0) -> float:
    """A scale that spreads the logits by about 3 (a loss of order 1, where relative errors mean something)."""
    return 3.0 / geom.pairwise_logits(image, text, geometry, logit, c).std().item()


def test_clip_equals_open_clip() -> None:
    image, text = embeddings("elliptic", 32, seed=0)
    image, text = image.requires_grad_(True), text.requires_grad_(True)
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    ours = contrastive_loss(image, text, "elliptic", "inner", scale)
    ours.total.backward()
    ours_grads = [t.grad.clone() for t in (image, text, scale)]
    for t in (image, text, scale):
        t.grad = None
    theirs = ClipLoss()(image, text, scale)
    theirs.backward()
    torch.testing.assert_close(ours.total, theirs, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.contrastive, theirs, rtol=1e-6, atol=0)
    for mine, reference in zip(ours_grads, (image.grad, text.grad, scale.grad)):
        # Entries near 0 carry the rounding of the larger ones: an absolute tolerance at the gradient's scale.
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())


@pytest.mark.parametrize("geometry,logit,c", CASES)
def test_loss_matches_float64_reference(geometry: str, logit: str, c: float) -> None:
    image, text = embeddings(geometry, 48, seed=1, c=c)
    scale = logit_scale(image, text, geometry, logit, c)
    out = contrastive_loss(image, text, geometry, logit, scale, c)
    assert out.total.dtype == torch.float32 and out.total.shape == ()
    expected = ref_info_nce(image.double(), text.double(), geometry, logit, scale, c)
    torch.testing.assert_close(out.contrastive.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.total, out.contrastive, rtol=0, atol=0)
    assert out.entailment == 0
    # float64 in, float64 out, to float64 accuracy.
    out64 = contrastive_loss(image.double(), text.double(), geometry, logit, scale, c)
    assert out64.total.dtype == torch.float64
    torch.testing.assert_close(out64.total, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_distinct_caption_ids_change_nothing(geometry: str, logit: str) -> None:
    image, text = embeddings(geometry, 24, seed=2)
    scale = logit_scale(image, text, geometry, logit)
    plain = contrastive_loss(image, text, geometry, logit, scale)
    ids = torch.randperm(24) * 7 + 3  # all distinct, in any order
    with_ids = contrastive_loss(image, text, geometry, logit, scale, caption_ids=ids)
    torch.testing.assert_close(with_ids.total, plain.total, rtol=1e-6, atol=0)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_duplicate_captions_are_shared_positives(geometry: str, logit: str) -> None:
    image, text = embeddings(geometry, 24, seed=3)
    ids = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5, 0, 6, 7, 8, 9, 2, 10, 11, 12, 13, 14, 15, 16, 3, 17, 18])
    scale = logit_scale(image, text, geometry, logit)
    out = contrastive_loss(image, text, geometry, logit, scale, caption_ids=ids)
    # Reference: cross-entropy against a soft target spread uniformly over the same-caption entries.
    z = scale * ref_logits(image.double(), text.double(), geometry, logit)
    same = (ids[:, None] == ids[None, :]).double()
    target = same / same.sum(1, keepdim=True)
    expected = (F.cross_entropy(z, target) + F.cross_entropy(z.T, target)) / 2
    torch.testing.assert_close(out.total.double(), expected, rtol=1e-5, atol=0)
    assert not torch.isclose(out.total, contrastive_loss(image, text, geometry, logit, scale).total)


@pytest.mark.parametrize("geometry", geom.CONE_GEOMETRIES)
@pytest.mark.parametrize("logit", geom.LOGITS)
def test_total_is_contrastive_plus_weighted_entailment(geometry: str, logit: str) -> None:
    image, text = embeddings(geometry, 32, seed=4, c=0.7)
    scale = logit_scale(image, text, geometry, logit, 0.7)
    out = contrastive_loss(image, text, geometry, logit, scale, 0.7, entailment_weight=0.2, min_radius=K)
    # Text entails image: the caption is the cone's apex, the image the child.
    penalty = geom.entailment_penalty(text, image, geometry, K, 0.7)
    assert (penalty > 0).any()
    torch.testing.assert_close(out.entailment, penalty.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.contrastive, contrastive_loss(image, text, geometry, logit, scale, 0.7).total,
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(out.total, out.contrastive + 0.2 * out.entailment, rtol=1e-6, atol=0)


def _float64_leaves(geometry: str, n: int = 5, dim: int = 4, seed: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    text = image + 0.7 * torch.randn(n, dim, dtype=torch.float64, generator=generator)
    scale = 0.6 if geometry == "hyperbolic" else 1.0
    return (scale * image).requires_grad_(True), (scale * text).requires_grad_(True)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_gradcheck(geometry: str, logit: str) -> None:
    """d loss / d (tower outputs, logit scale, curvature), through ``project``, with entailment where defined."""
    image_f, text_f = _float64_leaves(geometry)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    curvature = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    ids = torch.tensor([0, 1, 0, 2, 3])

    def loss(image_f, text_f, scale, curvature, caption_ids=None):
        c = curvature if geometry == "hyperbolic" else 1.0
        image, text = geom.project(image_f, geometry, c), geom.project(text_f, geometry, c)
        return contrastive_loss(image, text, geometry, logit, scale, c, entailment_weight=weight, min_radius=K,
                                caption_ids=caption_ids).total

    if geometry == "hyperbolic":
        inputs, fn = (image_f, text_f, scale, curvature), loss
    else:  # the curvature is ignored: not an input of the check
        inputs, fn = (image_f, text_f, scale), lambda image_f, text_f, scale, **kw: loss(image_f, text_f, scale, 1.0,
                                                                                           **kw)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, caption_ids=ids), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_permuting_the_batch_changes_nothing(geometry: str, logit: str) -> None:
    image, text = embeddings(geometry, 32, seed=6)
    order = torch.randperm(32)
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    scale = logit_scale(image, text, geometry, logit)
    a = contrastive_loss(image, text, geometry, logit, scale, entailment_weight=weight)
    b = contrastive_loss(image[order], text[order], geometry, logit, scale, entailment_weight=weight)
    torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=0)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_autocast_and_half_inputs_compute_in_float32(geometry: str, logit: str) -> None:
    image, text = embeddings(geometry, 16, seed=7)
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    expected = contrastive_loss(image, text, geometry, logit, 10.0, entailment_weight=weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = contrastive_loss(image, text, geometry, logit, 10.0, entailment_weight=weight)
    assert autocast.total.dtype == torch.float32
    assert torch.equal(autocast.total, expected.total)
    half = contrastive_loss(image.bfloat16(), text.bfloat16(), geometry, logit, 10.0, entailment_weight=weight)
    rounded = contrastive_loss(image.bfloat16().float(), text.bfloat16().float(), geometry, logit, 10.0,
                               entailment_weight=weight)
    assert half.total.dtype == torch.float32
    assert torch.equal(half.total, rounded.total)


def test_stats() -> None:
    image, text = embeddings("hyperbolic", 16, seed=8)
    out = contrastive_loss(image, text, "hyperbolic", "distance", 10.0)
    assert isinstance(out, LossOutput)
    assert set(out.stats) >= {"logit_pos", "logit_neg", "loss_i2t", "loss_t2i"}
    logits = geom.pairwise_logits(image, text, "hyperbolic", "distance")
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    stats = {k: v.item() for k, v in out.stats.items()}
    assert stats["logit_pos"] == pytest.approx(logits.diagonal().mean().item(), rel=1e-5)
    assert stats["logit_neg"] == pytest.approx(logits[off_diagonal].mean().item(), rel=1e-5)
    assert (stats["loss_i2t"] + stats["loss_t2i"]) / 2 == pytest.approx(out.total.item(), rel=1e-6)
    assert stats["logit_pos"] > stats["logit_neg"]


def test_bad_arguments() -> None:
    image, text = embeddings("euclidean", 8, seed=9)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        contrastive_loss(image, text[:4], "euclidean", "squared", 1.0)
    with pytest.raises(ValueError, match="elliptic"):
        contrastive_loss(image, text, "spherical", "inner", 1.0)
    with pytest.raises(ValueError, match="inner"):
        contrastive_loss(image, text, "euclidean", "cosine", 1.0)
    with pytest.raises(ValueError, match="euclidean and hyperbolic"):
        contrastive_loss(image, text, "elliptic", "inner", 1.0, entailment_weight=0.1)
