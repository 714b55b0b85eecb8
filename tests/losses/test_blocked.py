"""Blocked losses: the same loss and gradients as the whole matrix, for every geometry × logit, within bounded memory."""

from __future__ import annotations

import resource

import pytest
import torch
import torch.nn.functional as F

from euclip import geometry as geom
from euclip.losses import contrastive_loss, sigmoid_loss
from euclip.losses.blocked import (BLOCK_ENTRIES, MIN_BLOCK_ROWS, blocked_cross_entropy, blocked_sigmoid_sum,
                                   rows_per_block)

PAIRS = [(g, l) for g in geom.GEOMETRIES for l in geom.LOGITS]
K = 0.1


def test_rows_per_block() -> None:
    assert rows_per_block(2048, 2048, "auto") is None  # small batches keep the whole-matrix path
    assert rows_per_block(8192, 8192, "auto") == BLOCK_ENTRIES["cpu"] // 8192
    assert rows_per_block(8192, 8192, "auto", "cuda") is None  # a GPU blocks only larger matrices, in larger blocks
    assert rows_per_block(32768, 32768, "auto", "cuda") == BLOCK_ENTRIES["cuda"] // 32768
    assert rows_per_block(4096, 10**8, "auto") == MIN_BLOCK_ROWS
    assert rows_per_block(8192, 8192, None) is None
    assert rows_per_block(10, 10, 3) == 3
    for bad in (0, -1, 2.5, True, "big"):
        with pytest.raises(ValueError, match="block_size"):
            rows_per_block(10, 10, bad)


def _run(loss: str, geometry: str, logit: str, image, text, scale, bias, curvature, **options):
    """Loss, statistics and the gradients of (image, text, scale, bias, curvature) of one call."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (image, text, scale, bias, curvature)]
    x, y, t, b, c = leaves
    if loss == "contrastive":
        out = contrastive_loss(x, y, geometry, logit, t, c, **options)
    else:
        out = sigmoid_loss(x, y, geometry, logit, t, b, c, **options)
    out.total.backward()
    return out, [torch.zeros(()) if v.grad is None else v.grad for v in leaves]


@pytest.mark.parametrize("loss", ["contrastive", "sigmoid"])
@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_blocked_equals_whole_matrix(ref, loss: str, geometry: str, logit: str) -> None:
    """45 rows in blocks of 7 (the last block has 3): loss, statistics and every gradient, with and without ids."""
    image, text = ref.embeddings(geometry, 45, seed=1, c=0.7)
    scale = torch.tensor(ref.spread_scale(image, text, geometry, logit, 0.7))
    bias, curvature = torch.tensor(-2.0), torch.tensor(0.7)
    weight = 0.2 if geometry in geom.CONE_GEOMETRIES else 0.0
    ids = torch.randint(0, 30, (45,), generator=torch.Generator().manual_seed(2))
    for caption_ids in (None, ids):
        options = dict(caption_ids=caption_ids, entailment_weight=weight, min_radius=K)
        whole, whole_grads = _run(loss, geometry, logit, image, text, scale, bias, curvature, block_size=None,
                                  **options)
        blocked, blocked_grads = _run(loss, geometry, logit, image, text, scale, bias, curvature, block_size=7,
                                      **options)
        torch.testing.assert_close(blocked.total, whole.total, rtol=1e-6, atol=0)
        torch.testing.assert_close(blocked.entailment, whole.entailment, rtol=0, atol=0)
        assert blocked.stats.keys() == whole.stats.keys()
        for key in whole.stats:
            torch.testing.assert_close(blocked.stats[key], whole.stats[key], rtol=1e-5, atol=1e-6)
        for name, mine, want in zip(("image", "text", "scale", "bias", "curvature"), blocked_grads, whole_grads):
            ref.grad_close(mine, want, rtol=1e-5)
            if name == "curvature" and geometry == "hyperbolic" or name in ("image", "text", "scale"):
                assert want.abs().max() > 0  # the comparison means something


def test_default_keeps_the_whole_matrix_path_at_small_batches(ref) -> None:
    image, text = ref.embeddings("hyperbolic", 64, seed=3)
    for loss in ("contrastive", "sigmoid"):
        default, default_grads = _run(loss, "hyperbolic", "distance", image, text, torch.tensor(5.0),
                                      torch.tensor(-3.0), torch.tensor(1.0), entailment_weight=0.2)
        whole, whole_grads = _run(loss, "hyperbolic", "distance", image, text, torch.tensor(5.0),
                                  torch.tensor(-3.0), torch.tensor(1.0), entailment_weight=0.2, block_size=None)
        assert torch.equal(default.total, whole.total)
        assert all(torch.equal(a, b) for a, b in zip(default_grads, whole_grads))


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_local_rows_against_all_columns(ref, geometry: str, logit: str) -> None:
    """Rows 6..13 of a 20-column matrix (another process's rows under --local-loss), with and without ids, float64."""
    x_all, y = ref.embeddings(geometry, 20, seed=4, dtype=torch.float64)
    x = x_all[6:14].clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    scale = torch.tensor(ref.spread_scale(x_all, y, geometry, logit), dtype=torch.float64, requires_grad=True)
    c = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 0, 7, 8, 9, 10, 3, 12, 13, 14, 15, 16, 0, 18, 19])
    for row_ids, col_ids in ((None, None), (ids[6:14], ids)):
        got, _, own_sum, all_sum = blocked_cross_entropy(x, y, geometry, logit, scale, c, rows_per_block=3,
                                                         diagonal=6, row_ids=row_ids, col_ids=col_ids)
        s = ref.logits(x, y, geometry, logit, c)
        z = scale * s
        if row_ids is None:
            expected = F.cross_entropy(z, torch.arange(6, 14))
        else:
            same = (row_ids[:, None] == col_ids[None, :]).double()
            expected = F.cross_entropy(z, same / same.sum(1, keepdim=True))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(own_sum, s.diagonal(6).sum().detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(all_sum, s.sum().detach(), rtol=1e-12, atol=0)
        inputs = [x, y, scale] + ([c] if geometry == "hyperbolic" else [])
        for mine, want in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(expected, inputs)):
            ref.grad_close(mine, want, rtol=1e-9)


def _float64_points(geometry: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    f = torch.randn(2, n, 4, dtype=torch.float64, generator=generator)
    f[1] = f[0] + 0.7 * f[1]
    points = geom.project((0.6 if geometry == "hyperbolic" else 1.0) * f, geometry, 0.8)
    return points[0].clone().requires_grad_(True), points[1].clone().requires_grad_(True)


@pytest.mark.parametrize("geometry,logit", PAIRS)
def test_gradcheck(geometry: str, logit: str) -> None:
    """Both blocked functions, blocks of 2 over 5 rows: square with columns and ids; local rows; another process's."""
    x, y = _float64_points(geometry, 5, seed=5)
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=geometry == "hyperbolic")
    ids = torch.tensor([0, 1, 0, 2, 1])

    def square(x, y, scale, c):
        rows, cols, _, _ = blocked_cross_entropy(x, y, geometry, logit, scale, c, rows_per_block=2, row_ids=ids,
                                                 col_ids=ids, columns=True)
        return 0.3 * rows + 0.7 * cols  # unequal weights: each direction's gradient is checked

    def local(x, y, scale, c):
        return blocked_cross_entropy(x[:3], y, geometry, logit, scale, c, rows_per_block=2, diagonal=1)[0]

    def sigmoid(x, y, scale, bias, c):
        own = blocked_sigmoid_sum(x, y, geometry, logit, scale, bias, c, rows_per_block=2)[0]
        other = blocked_sigmoid_sum(x, y.flip(0), geometry, logit, scale, bias, c, rows_per_block=2, diagonal=None,
                                    row_ids=ids, col_ids=ids.flip(0))[0]
        return own + other

    for fn, inputs in ((square, (x, y, scale, c)), (local, (x, y, scale, c)), (sigmoid, (x, y, scale, bias, c))):
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("loss", ["contrastive", "sigmoid"])
def test_autocast_computes_blocks_in_float32(ref, loss: str) -> None:
    image, text = ref.embeddings("euclidean", 20, seed=6)
    args = (image, text, torch.tensor(3.0), torch.tensor(-1.0), torch.tensor(1.0))
    expected, expected_grads = _run(loss, "euclidean", "squared", *args, block_size=6, entailment_weight=0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, autocast_grads = _run(loss, "euclidean", "squared", *args, block_size=6, entailment_weight=0.2)
    assert autocast.total.dtype == torch.float32 and torch.equal(autocast.total, expected.total)
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(autocast_grads, expected_grads))


def test_bad_arguments() -> None:
    x, y = torch.randn(4, 3), torch.randn(6, 3)
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="together"):
        blocked_cross_entropy(x, y, "euclidean", "inner", one, one, rows_per_block=2, row_ids=torch.arange(4))
    with pytest.raises(ValueError, match="do not fit"):
        blocked_cross_entropy(x, y, "euclidean", "inner", one, one, rows_per_block=2, diagonal=3)
    with pytest.raises(ValueError, match="square"):
        blocked_cross_entropy(x, y, "euclidean", "inner", one, one, rows_per_block=2, columns=True)


# --------------------------------------------------------------------------------------------------------------------
# Memory: a batch whose (B, B) float32 matrix alone exceeds the address-space cap still runs
# --------------------------------------------------------------------------------------------------------------------
def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_AS"), reason="needs RLIMIT_AS (Linux)")
def test_blocks_bound_memory_below_one_full_matrix() -> None:
    """B = 5,500: one (B, B) float32 matrix is 121 MB, more than the 96 MiB of new address space allowed.

    The blocked losses (MERU's hyperbolic distance with entailment, and the sigmoid loss) run forward and
    backward within the cap; the whole-matrix loss fails to allocate, so the cap does bite.
    """
    b, dim, cap = 5_500, 16, 96 * 2**20
    generator = torch.Generator().manual_seed(0)
    image = geom.project(torch.randn(b, dim, generator=generator) * 0.3, "hyperbolic").requires_grad_(True)
    text = geom.project(torch.randn(b, dim, generator=generator) * 0.3, "hyperbolic").requires_grad_(True)
    scale, bias = torch.tensor(5.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)
    curvature = torch.tensor(1.0, requires_grad=True)

    def contrastive(n: int, block_size):
        return contrastive_loss(image[:n], text[:n], "hyperbolic", "distance", scale, curvature,
                                entailment_weight=0.2, block_size=block_size).total

    def sigmoid(n: int, block_size):
        return sigmoid_loss(image[:n], text[:n], "hyperbolic", "distance", scale, bias, curvature,
                            block_size=block_size).total

    # One thread: ~50 blocks of small elementwise maps, each a parallel region that stalls whenever the other
    # core is busy with another job (this machine is shared).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for fn in (contrastive, sigmoid):  # warm-up: thread pools and allocator arenas come before the limit
        fn(300, 128).backward()
    assert b * b * 4 > cap
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space_bytes() + cap, hard))
    try:
        for fn in (contrastive, sigmoid):
            image.grad = None
            loss = fn(b, 128)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(image.grad).all() and image.grad.abs().max() > 0
        with pytest.raises(RuntimeError):  # the whole matrix does not fit
            contrastive(b, None)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        torch.set_num_threads(threads)
