"""The sigmoid loss against OpenCLIP's SigLipLoss, a float64 reference, multi-positive targets, entailment, gradcheck,
and its distributed form (real 2- and 3-process gloo runs) against one process over the global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from euclip import geometry as geom
from euclip.losses import HeadScalars, LossOutput, SigmoidLoss, build_loss, contrastive_loss, sigmoid_loss
from euclip.losses.sigmoid import INIT_BIAS, INIT_LOG_SCALE

PAIRS = [(g, l) for g in geom.GEOMETRIES for l in geom.LOGITS]
CASES = [(g, l, c) for g, l in PAIRS for c in ((0.5, 2.0) if g == "hyperbolic" else (1.0,))]
K = 0.1
REPO = Path(__file__).resolve().parents[2]


def ref_sigmoid(z: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss written out: ``−Σ log σ(label · z) / B`` with labels ±1."""
    labels = 2 * positives.to(z.dtype) - 1
    return -torch.log(torch.sigmoid(labels * z)).sum() / z.shape[0]


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def grads_of(out: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, tensors))


@pytest.mark.parametrize("block_size", [None, 7])
def test_elliptic_inner_equals_open_clip(ref, block_size) -> None:
    image, text = ref.embeddings("elliptic", 32, seed=0)
    image, text, scale, bias = leaves(image, text, torch.tensor(10.0), torch.tensor(-10.0))
    ours = sigmoid_loss(image, text, "elliptic", "inner", scale, bias, block_size=block_size)
    theirs = SigLipLoss()(image, text, scale, bias)
    torch.testing.assert_close(ours.total, theirs, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.contrastive, theirs, rtol=1e-6, atol=0)
    inputs = [image, text, scale, bias]
    for mine, reference in zip(grads_of(ours.total, inputs), grads_of(theirs, inputs)):
        ref.grad_close(mine, reference, rtol=1e-5)


def test_siglip_initialisation_constants() -> None:
    # SigLIP (and OpenCLIP's --siglip): t = 10, b = −10.
    assert INIT_LOG_SCALE == pytest.approx(2.302585093) and INIT_BIAS == -10.0


@pytest.mark.parametrize("block_size", [None, 11])
@pytest.mark.parametrize("geometry,logit,c", CASES)
def test_matches_float64_reference(ref, geometry: str, logit: str, c: float, block_size) -> None:
    image, text = ref.embeddings(geometry, 40, seed=1, c=c)
    scale_value = ref.spread_scale(image, text, geometry, logit, c)
    image, text, scale, bias, curvature = leaves(image, text, torch.tensor(scale_value), torch.tensor(-2.0),
                                                 torch.tensor(c))
    out = sigmoid_loss(image, text, geometry, logit, scale, bias, curvature, block_size=block_size)
    assert out.total.dtype == torch.float32 and out.total.shape == ()
    assert out.entailment == 0
    torch.testing.assert_close(out.total, out.contrastive, rtol=0, atol=0)

    inputs64 = leaves(image.double(), text.double(), scale.double(), bias.double(), curvature.double())
    x64, y64, t64, b64, c64 = inputs64
    z = t64 * ref.logits(x64, y64, geometry, logit, c64) + b64
    expected = ref_sigmoid(z, torch.eye(40, dtype=torch.bool))
    torch.testing.assert_close(out.total.double(), expected, rtol=1e-5, atol=0)
    differentiable = 5 if geometry == "hyperbolic" else 4  # the curvature only matters there
    expected_grads = grads_of(expected, inputs64[:differentiable])
    for mine, want in zip(grads_of(out.total, [image, text, scale, bias, curvature][:differentiable]), expected_grads):
        ref.grad_close(mine.double(), want, rtol=1e-4)
    # float64 in, float64 out, to float64 accuracy.
    out64 = sigmoid_loss(x64, y64, geometry, logit, t64, b64, c64, block_size=block_size)
    assert out64.total.dtype == torch.float64
    torch.testing.assert_close(out64.total, expected, rtol=1e-12, atol=0)
    for mine, want in zip(grads_of(out64.total, inputs64[:differentiable]), expected_grads):
        ref.grad_close(mine, want, rtol=1e-9)


@pytest.mark.parametrize("block_size", [None, 5])
@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_duplicate_captions_are_shared_positives(ref, geometry: str, logit: str, block_size) -> None:
    image, text = ref.embeddings(geometry, 24, seed=3)
    ids = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5, 0, 6, 7, 8, 9, 2, 10, 11, 12, 13, 14, 15, 16, 3, 17, 18])
    scale = ref.spread_scale(image, text, geometry, logit)
    out = sigmoid_loss(image, text, geometry, logit, scale, -1.0, caption_ids=ids, block_size=block_size)
    z = scale * ref.logits(image.double(), text.double(), geometry, logit) - 1.0
    expected = ref_sigmoid(z, ids[:, None] == ids[None, :])
    torch.testing.assert_close(out.total.double(), expected, rtol=1e-5, atol=0)
    plain = sigmoid_loss(image, text, geometry, logit, scale, -1.0, block_size=block_size)
    assert not torch.isclose(out.total, plain.total)
    distinct = sigmoid_loss(image, text, geometry, logit, scale, -1.0, caption_ids=torch.randperm(24) * 7 + 3,
                            block_size=block_size)
    torch.testing.assert_close(distinct.total, plain.total, rtol=1e-6, atol=0)


@pytest.mark.parametrize("geometry", geom.CONE_GEOMETRIES)
@pytest.mark.parametrize("logit", geom.LOGITS)
def test_total_is_sigmoid_plus_weighted_entailment(ref, geometry: str, logit: str) -> None:
    image, text = ref.embeddings(geometry, 32, seed=4, c=0.7)
    scale = ref.spread_scale(image, text, geometry, logit, 0.7)
    out = sigmoid_loss(image, text, geometry, logit, scale, -3.0, 0.7, entailment_weight=0.2, min_radius=K)
    penalty = geom.entailment_penalty(text, image, geometry, K, 0.7)  # text entails image, as in the contrastive loss
    assert (penalty > 0).any()
    torch.testing.assert_close(out.entailment, penalty.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.entailment, contrastive_loss(image, text, geometry, logit, scale, 0.7,
                                                                entailment_weight=0.2, min_radius=K).entailment)
    torch.testing.assert_close(out.contrastive, sigmoid_loss(image, text, geometry, logit, scale, -3.0, 0.7).total,
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(out.total, out.contrastive + 0.2 * out.entailment, rtol=1e-6, atol=0)


@pytest.mark.parametrize("block_size", [None, 2])
@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_gradcheck(geometry: str, logit: str, block_size) -> None:
    """d loss / d (tower outputs, logit scale, bias, curvature) through ``project``, with ids and entailment."""
    generator = torch.Generator().manual_seed(5)
    image_f = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    text_f = image_f + 0.7 * torch.randn(5, 4, dtype=torch.float64, generator=generator)
    spread = 0.6 if geometry == "hyperbolic" else 1.0
    image_f, text_f = (spread * image_f).requires_grad_(True), (spread * text_f).requires_grad_(True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    curvature = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    ids = torch.tensor([0, 1, 0, 2, 3])

    def loss(image_f, text_f, scale, bias, curvature=None, caption_ids=None):
        c = curvature if curvature is not None else 1.0
        image, text = geom.project(image_f, geometry, c), geom.project(text_f, geometry, c)
        return sigmoid_loss(image, text, geometry, logit, scale, bias, c, entailment_weight=weight, min_radius=K,
                            caption_ids=caption_ids, block_size=block_size).total

    inputs = (image_f, text_f, scale, bias) + ((curvature,) if geometry == "hyperbolic" else ())
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda *a: loss(*a, caption_ids=ids), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_stats(ref) -> None:
    image, text = ref.embeddings("hyperbolic", 16, seed=8)
    for block_size in (None, 3):
        out = sigmoid_loss(image, text, "hyperbolic", "distance", 10.0, -10.0, block_size=block_size)
        assert isinstance(out, LossOutput) and {"logit_pos", "logit_neg"} <= set(out.stats)
        assert all(v.shape == () and not v.requires_grad for v in out.stats.values())
        logits = ref.logits(image.double(), text.double(), "hyperbolic", "distance")
        off_diagonal = ~torch.eye(16, dtype=torch.bool)
        torch.testing.assert_close(out.stats["logit_pos"].double(), logits.diagonal().mean(), rtol=1e-5, atol=0)
        torch.testing.assert_close(out.stats["logit_neg"].double(), logits[off_diagonal].mean(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_autocast_and_half_inputs_compute_in_float32(ref, geometry: str, logit: str) -> None:
    image, text = ref.embeddings(geometry, 16, seed=7)
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    expected = sigmoid_loss(image, text, geometry, logit, 10.0, -5.0, entailment_weight=weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = sigmoid_loss(image, text, geometry, logit, 10.0, -5.0, entailment_weight=weight)
    assert autocast.total.dtype == torch.float32
    assert torch.equal(autocast.total, expected.total)
    half = sigmoid_loss(image.bfloat16(), text.bfloat16(), geometry, logit, 10.0, -5.0, entailment_weight=weight)
    rounded = sigmoid_loss(image.bfloat16().float(), text.bfloat16().float(), geometry, logit, 10.0, -5.0,
                           entailment_weight=weight)
    assert half.total.dtype == torch.float32 and torch.equal(half.total, rounded.total)


def test_configured_loss(ref) -> None:
    image, text = ref.embeddings("euclidean", 12, seed=9)
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    loss = build_loss("sigmoid", "euclidean", "squared")
    assert isinstance(loss, SigmoidLoss) and SigmoidLoss.needs_logit_bias
    scalars = HeadScalars(logit_scale=torch.tensor(2.0), logit_bias=torch.tensor(-3.0))
    out = loss(image, text, scalars, caption_ids=ids, entailment_weight=0.1)
    expected = sigmoid_loss(image, text, "euclidean", "squared", 2.0, -3.0, caption_ids=ids, entailment_weight=0.1)
    torch.testing.assert_close(out.total, expected.total, rtol=0, atol=0)
    single = build_loss("sigmoid", "euclidean", "squared", multi_positive=False)(image, text, scalars, caption_ids=ids)
    torch.testing.assert_close(single.total, sigmoid_loss(image, text, "euclidean", "squared", 2.0, -3.0).total,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="logit bias"):
        loss(image, text, HeadScalars(logit_scale=2.0))
    with pytest.raises(ValueError, match="exchange"):
        build_loss("sigmoid", "euclidean", "squared", exchange_scheme="ring")
    with pytest.raises(ValueError, match="block_size"):
        build_loss("sigmoid", "euclidean", "squared", block_size=0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        sigmoid_loss(image, text[:4], "euclidean", "squared", 1.0, 0.0)
    with pytest.raises(ValueError, match="euclidean and hyperbolic"):
        sigmoid_loss(image, text, "elliptic", "inner", 1.0, 0.0, entailment_weight=0.1)


# --------------------------------------------------------------------------------------------------------------------
# Distributed: W processes (gloo) against one process over the global batch
# --------------------------------------------------------------------------------------------------------------------
# The geometry's headline logit for each: cosine (CLIP), squared distance (EuCLIP), distance (MERU).
HEADLINE = {"elliptic": "inner", "euclidean": "squared", "hyperbolic": "distance"}
PER_RANK = 6


def _job_cases() -> list[dict]:
    cases = []
    for geometry, logit in HEADLINE.items():
        weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
        cases += [
            dict(name=f"{geometry}/sigmoid", loss="sigmoid", geometry=geometry, logit=logit, options={}),
            dict(name=f"{geometry}/sigmoid+ids+entailment", loss="sigmoid", geometry=geometry, logit=logit,
                 ids=True, options=dict(entailment_weight=weight)),
            dict(name=f"{geometry}/sigmoid-blocked-shift", loss="sigmoid", geometry=geometry, logit=logit, ids=True,
                 options=dict(block_size=4, exchange_scheme="shift")),
            # The blocked contrastive loss under every gathering mode.
            dict(name=f"{geometry}/contrastive-blocked-local", loss="contrastive", geometry=geometry, logit=logit,
                 ids=True, options=dict(block_size=4, local_loss=True, gather_with_grad=True,
                                        entailment_weight=weight)),
            dict(name=f"{geometry}/contrastive-blocked-gather", loss="contrastive", geometry=geometry, logit=logit,
                 ids=True, options=dict(block_size=5, gather_with_grad=True)),
            dict(name=f"{geometry}/contrastive-blocked-no-gather", loss="contrastive", geometry=geometry,
                 logit=logit, options=dict(block_size=5)),
        ]
    return cases


def _inputs(case: dict, world: int, seed: int) -> dict:
    """The global batch of a case: points on the manifold, caption ids with duplicates across processes, scalars."""
    n = PER_RANK * world
    generator = torch.Generator().manual_seed(seed)
    f = torch.randn(2, n, 16, dtype=torch.float64, generator=generator)
    f[1] = f[0] + 1.2 * f[1]
    spread = 0.4 if case["geometry"] == "hyperbolic" else 1.0
    c = 0.8 if case["geometry"] == "hyperbolic" else 1.0
    image, text = (geom.project((spread * t).float(), case["geometry"], c) for t in f)
    ids = torch.randint(0, n - 4, (n,), generator=generator) if case.get("ids") else None
    return dict(image=image, text=text, ids=ids, scale=torch.tensor(4.0), bias=torch.tensor(-2.0),
                curvature=torch.tensor(c))


def _single_process(case: dict, inputs: dict) -> dict:
    image, text, scale, bias, curvature = leaves(inputs["image"], inputs["text"], inputs["scale"], inputs["bias"],
                                                 inputs["curvature"])
    # The reference: the whole global matrix at once (no blocks), on one process.
    options = dict(caption_ids=inputs["ids"], block_size=None,
                   entailment_weight=case["options"].get("entailment_weight", 0.0))
    if case["loss"] == "sigmoid":
        out = sigmoid_loss(image, text, case["geometry"], case["logit"], scale, bias, curvature, **options)
    else:
        out = contrastive_loss(image, text, case["geometry"], case["logit"], scale, curvature, **options)
    out.total.backward()
    return dict(loss=out.total.detach(), image=image.grad, text=text.grad, scale=scale.grad,
                bias=bias.grad if bias.grad is not None else torch.zeros(()),
                curvature=curvature.grad if curvature.grad is not None else torch.zeros(()))


@pytest.fixture(scope="module", params=[2, 3, 4], ids=["2 processes", "3 processes", "4 processes"])
def distributed_runs(request, tmp_path_factory):
    """One torchrun launch per world size runs every case (``_loss_worker.py``); returns (cases, inputs, results)."""
    world = request.param
    root = tmp_path_factory.mktemp(f"losses-ddp{world}")
    cases = _job_cases()
    inputs = [_inputs(case, world, seed=i) for i, case in enumerate(cases)]
    torch.save({"cases": cases, "inputs": inputs}, root / "jobs.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(world), str(Path(__file__).parent / "_loss_worker.py"), str(root / "jobs.pt"),
                           str(root / "results.pt")], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return world, cases, inputs, torch.load(root / "results.pt")


TOLERANCE = 1e-5  # float32: one process and W sum in different orders


@pytest.mark.parametrize("index", range(len(_job_cases())), ids=[c["name"] for c in _job_cases()])
def test_distributed_equals_one_process_over_the_global_batch(distributed_runs, index) -> None:
    """Mean over processes of the loss = the global loss; DDP's mean of the gradients = the global gradients.

    The features are per-process leaves: their gradient on a process is that of the sum of all processes'
    losses (what reaches it through the exchange or the gather), so the global loss's gradient is it / W.
    """
    world, cases, inputs, results = distributed_runs
    case, result = cases[index], results[index]
    expected = _single_process(case, inputs[index])
    assert len(result["loss"]) == world
    torch.testing.assert_close(torch.stack(result["loss"]).mean(), expected["loss"], rtol=TOLERANCE, atol=TOLERANCE)
    for name in ("image", "text"):
        got = torch.cat(result[name]) / world
        torch.testing.assert_close(got, expected[name], rtol=TOLERANCE,
                                   atol=TOLERANCE * expected[name].abs().max().item())
    for name in ("scale", "bias", "curvature"):
        got = torch.stack(result[name]).mean()
        torch.testing.assert_close(got, expected[name], rtol=TOLERANCE, atol=TOLERANCE)
    if case["loss"] == "sigmoid":  # no process gathered anything: only neighbour exchange
        assert result["all_gathers"] == [0] * world
