"""Pairwise losses over an ``(R, C)`` logit matrix computed in row blocks: memory O(block · C), not O(R · C).

At 32,768 pairs one float32 ``(B, B)`` matrix is 4 GiB, and autograd through a loss keeps several of them
(the logits, the softmax, the geometry's own). Here a loss streams over blocks of rows and keeps only
``(R,)``/``(C,)`` statistics and ``(R, D)``/``(C, D)`` gradients: at most one block of the matrix, its softmax
and the geometry's temporaries are alive at any moment, and the gradients equal those of the whole-matrix
loss up to rounding. Each block's gradient ``∂L/∂z`` has a closed form; it is pushed into the features and
the scalars through the geometry's own fused backward (autograd on the block's
:func:`euclip.geometry.pairwise_logits`).

Losses over ``z = t · s(x_i, y_j) (+ b)``, ``s`` the geometry's logit:

* :func:`blocked_cross_entropy`: the mean over rows of ``lse_j z_ij − mean_{j∈P_i} z_ij`` (image → text) and,
  optionally, the same over columns (text → image). A block's gradient is
  ``a (softmax_row − target_row) + b (softmax_col − target_col)``, with ``a``, ``b`` the incoming gradients
  divided by the numbers of rows and columns.
* :func:`blocked_sigmoid_sum`: ``Σ_ij −log σ(y_ij z_ij)`` with ``y = +1`` on positives and −1 elsewhere;
  a block's gradient is ``σ(z) − P``.

Two schedules. A loss whose block gradients depend on that block alone (the sigmoid loss, the row-wise
cross-entropy of ``--local-loss``) takes them in the same pass as the loss: the loss is a scalar, so its
gradients are those of the sum times the incoming gradient, which ``backward`` applies (one matrix product
forward and two backward, like autograd). The column-wise cross-entropy needs every row's contribution to
each column's log-sum-exp before any gradient: its forward pass streams the statistics without autograd and
its backward recomputes each block (one matrix product more, still fewer than OpenCLIP's ``ClipLoss``, which
computes the logits twice).

Positives ``P``: with caption ids, every entry whose ids are equal; without, the diagonal ``j = i + offset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from euclip import geometry as geom
from euclip.geometry import hyperbolic
from euclip.geometry._numerics import float32_backward, frobenius_inner

# Entries of one block, per device type. CPU: a block (32 MiB in float32) and the few temporaries of its
# elementwise maps stay in cache, which makes the blocked loss faster than the whole matrix; a GPU wants few,
# large kernels (256 MiB blocks: 16 of them at 32,768 pairs). Matrices no larger than one block are computed
# whole, by plain autograd: small batches keep that path.
BLOCK_ENTRIES: dict[str, int] = {"cpu": 2**23, "cuda": 2**26}
# Every block recomputes the columns' per-point terms (norms, their gradients: O(C · D)); at fewer rows that
# overhead would rival the block's matrix product.
MIN_BLOCK_ROWS = 256


def rows_per_block(rows: int, cols: int, block_size: int | str | None, device_type: str = "cpu") -> int | None:
    """How many rows of an ``(rows, cols)`` logit matrix one block holds, or ``None`` for the whole matrix.

    Args:
        block_size: ``"auto"``: when the matrix is larger than :data:`BLOCK_ENTRIES` of the device type,
            blocks of about that many entries (at least :data:`MIN_BLOCK_ROWS` rows), else the whole matrix;
            ``None``: never block; a positive int: that many rows per block.
        device_type: ``"cpu"``, ``"cuda"``, ... (others use the CPU's size).
    """
    if block_size is None:
        return None
    if block_size == "auto":
        entries = BLOCK_ENTRIES.get(device_type, BLOCK_ENTRIES["cpu"])
        return max(MIN_BLOCK_ROWS, entries // max(cols, 1)) if rows * cols > entries else None
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, 'auto' or None, got {block_size!r}")
    return block_size


@dataclass(frozen=True)
class _Plan:
    """What a blocked loss computes, besides its tensors."""

    geometry: str
    logit: str
    rows_per_block: int
    diagonal: int | None  # column of row 0's own pair (rows i ↔ column i + diagonal); None: no own pairs
    columns: bool = False  # cross-entropy only: also the column-wise (text → image) loss
    # Whether autograd will differentiate the call (inside forward, needs_input_grad ignores torch.no_grad()).
    with_grad: bool = True


def softplus_of_minus_yz(z: torch.Tensor, positives: torch.Tensor | None, diagonal: int | None) -> torch.Tensor:
    """``Σ −log σ(y ∘ z) = Σ softplus(−y ∘ z)`` with ``y = +1`` on ``positives`` (or the ``diagonal``), −1 elsewhere.

    Not ``F.logsigmoid``: its CPU kernel always runs multi-threaded, a thread wake-up per call even on a few
    entries (about 6 ms each on a busy two-core machine). ``threshold=40``: softplus is linear beyond it, with
    an error e^−40, below float64's resolution (the default 20 leaves 2e-9).
    """
    if positives is not None:
        flipped = torch.where(positives, z.neg(), z)
    else:
        flipped = z.clone()
        if diagonal is not None:
            flipped.diagonal(diagonal).neg_()
    return F.softplus(flipped, threshold=40).sum()


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _positive_mask(row_ids: torch.Tensor | None, col_ids: torch.Tensor | None, start: int, stop: int
                   ) -> torch.Tensor | None:
    return None if row_ids is None else row_ids[start:stop, None] == col_ids[None, :]


def _diagonal_sum(s: torch.Tensor, plan: _Plan, start: int) -> torch.Tensor:
    """Σ of the block's own-pair entries (0 where the matrix has none)."""
    if plan.diagonal is None:
        return s.new_zeros(())
    return s.diagonal(plan.diagonal + start).sum()


def _stream(x: torch.Tensor, y: torch.Tensor, curvature: torch.Tensor, plan: _Plan, need: tuple[bool, bool, bool],
            visit: Callable[[torch.Tensor, int, int], torch.Tensor | None]
            ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the row blocks of ``s = pairwise_logits(x, y)``, back-propagating what ``visit`` returns.

    ``visit(s, start, stop)`` sees each block's logits (detached, not to be modified: the geometry's backward
    needs them) and returns ``∂L/∂s`` for rows ``start:stop``, or ``None``. ``need`` says which of ``x``, ``y``,
    the curvature want gradients; with none the pass runs without autograd. Returns those gradients (``None``
    where not needed).
    """
    need_x, need_y, need_c = need
    grad_x = torch.zeros_like(x) if need_x else None
    grad_y = torch.zeros_like(y) if need_y else None
    grad_c = torch.zeros_like(curvature) if need_c else None
    y_leaf = y.detach().requires_grad_(need_y)
    c_leaf = curvature.detach().requires_grad_(need_c)
    recording = torch.enable_grad if any(need) else torch.no_grad
    # The hyperbolic logits' per-column terms (norms, half radii) once for all blocks: as leaves of the blocks'
    # graphs, whose gradients are summed over the blocks and back-propagated into y and c once, at the end. Per
    # block they would cost O(C · D) forward and backward, a quarter of a block's own work at 512 rows, D = 512.
    column_terms = terms = terms_grads = None
    need_terms = need_y or need_c
    if plan.geometry == "hyperbolic":
        with recording():
            column_terms = hyperbolic.point_terms(y_leaf, c_leaf)
        terms = tuple(t.detach().requires_grad_(need_terms) for t in column_terms)
        terms_grads = [torch.zeros_like(t) for t in terms]
    for start, stop in _blocks(x.shape[0], plan.rows_per_block):
        x_leaf = x[start:stop].detach().requires_grad_(need_x)
        wanted = [(x_leaf, need_x), (y_leaf, need_y), (c_leaf, need_c)]
        if terms is not None:
            wanted += [(t, need_terms) for t in terms]
        inputs = [t for t, w in wanted if w]
        with recording() if inputs else torch.no_grad():
            if terms is None:
                s = geom.pairwise_logits(x_leaf, y_leaf, plan.geometry, plan.logit, c_leaf)
            else:
                s = hyperbolic.logits_with_terms(x_leaf, y_leaf, plan.logit, c_leaf,
                                                 hyperbolic.point_terms(x_leaf, c_leaf), terms)
        with torch.no_grad():
            grad_s = visit(s.detach(), start, stop)
        if grad_s is None or not inputs:
            continue
        # The curvature is unused outside the hyperbolic geometry: allow_unused, and None means 0.
        grads = iter(torch.autograd.grad(s, inputs, grad_s, allow_unused=True))
        del s, grad_s
        totals = [(need_x, grad_x, slice(start, stop)), (need_y, grad_y, slice(None)), (need_c, grad_c, ...)]
        if terms is not None:
            totals += [(need_terms, g, slice(None)) for g in terms_grads]
        for w, total, rows in totals:
            if w:
                g = next(grads)
                if g is not None:
                    total[rows] += g
    if terms is not None and need_terms:
        inputs = [t for t, w in ((y_leaf, need_y), (c_leaf, need_c)) if w]
        grads = iter(torch.autograd.grad(column_terms, inputs, terms_grads, allow_unused=True))
        for w, total in ((need_y, grad_y), (need_c, grad_c)):
            if w:
                g = next(grads)
                if g is not None:
                    total += g
    return grad_x, grad_y, grad_c


class _BlockedCrossEntropy(torch.autograd.Function):
    """Row- (and column-) wise cross-entropy of ``t · s(x, y)``, block by block; see :func:`blocked_cross_entropy`."""

    @staticmethod
    def forward(ctx, x, y, curvature, scale, row_ids, col_ids, plan: _Plan):
        rows, cols = x.shape[0], y.shape[0]
        # A log-sum-exp is kept as (max, Σ exp(z − max)): the softmax exp(z − max) / Σ is then as accurate as
        # torch's, where exp(z − lse) would carry lse's rounding (eps · |lse|) into every entry of the row and,
        # summed, into the logit scale's gradient.
        row_max, row_sum, row_positive = x.new_empty(rows), x.new_empty(rows), x.new_empty(rows)
        row_count = x.new_empty(rows) if row_ids is not None else None
        col = {}
        if plan.columns:
            col = dict(max=x.new_full((cols,), float("-inf")), sum=x.new_zeros(cols), positive=x.new_zeros(cols),
                       count=x.new_zeros(cols) if row_ids is not None else None)
        sums = dict(diagonal=x.new_zeros(()), total=x.new_zeros(()), scale=x.new_zeros(()))
        # Without columns a block's gradient is known in the same pass (a = 1/R: that of the mean over rows).
        eager = not plan.columns and plan.with_grad and any(ctx.needs_input_grad[:4])
        need = tuple(ctx.needs_input_grad[:3]) if eager else (False, False, False)

        def visit(s: torch.Tensor, start: int, stop: int) -> torch.Tensor | None:
            sums["diagonal"] += _diagonal_sum(s, plan, start)
            sums["total"] += s.sum()
            z = torch.mul(s, scale)
            block_max = z.amax(1)
            row_max[start:stop] = block_max
            softmax = torch.sub(z, block_max[:, None]).exp_()
            block_sum = softmax.sum(1)
            row_sum[start:stop] = block_sum
            if plan.columns:  # a running (max, Σ exp(z − max)) per column over the blocks
                running = torch.maximum(col["max"], z.amax(0))
                col["sum"].mul_(torch.exp(col["max"] - running)).add_(torch.sub(z, running).exp_().sum(0))
                col["max"] = running
            positives = _positive_mask(row_ids, col_ids, start, stop)
            if positives is None:
                own = z.diagonal(plan.diagonal + start)
                row_positive[start:stop] = own
                if plan.columns:
                    col["positive"][plan.diagonal + start:plan.diagonal + stop] = own
            else:
                masked = torch.where(positives, z, 0.0)
                count = positives.sum(1)
                row_count[start:stop] = count
                row_positive[start:stop] = masked.sum(1) / count
                if plan.columns:
                    col["positive"] += masked.sum(0)
                    col["count"] += positives.sum(0)
                del masked
            if not eager:
                return None
            # ∂(mean over rows)/∂z = (softmax − target) / R.
            w = softmax.div_(block_sum[:, None] * rows)
            if positives is None:
                w.diagonal(plan.diagonal + start).sub_(1 / rows)
            else:
                w.sub_(torch.where(positives, 1 / (rows * row_count[start:stop, None]), 0.0))
            sums["scale"] += frobenius_inner(w, s)
            return w.mul_(scale)

        grad_x, grad_y, grad_c = _stream(x, y, curvature, plan, need, visit)
        loss_rows = ((row_max - row_positive) + row_sum.log()).mean()
        if plan.columns:
            positive = col["positive"] if col["count"] is None else col["positive"] / col["count"]
            loss_cols = ((col["max"] - positive) + col["sum"].log()).mean()
        else:
            loss_cols = x.new_zeros(())
        ctx.plan, ctx.eager = plan, eager
        ctx.need_x, ctx.need_y, ctx.need_c, ctx.need_scale = ctx.needs_input_grad[:4]
        if eager:  # the gradients of the mean over rows, to be multiplied by the incoming gradient
            ctx.save_for_backward(grad_x, grad_y, grad_c, sums["scale"])
        else:
            ctx.save_for_backward(x, y, curvature, scale, row_max, row_sum, col.get("max"), col.get("sum"),
                                  row_count, col.get("count"), row_ids, col_ids)
        ctx.mark_non_differentiable(sums["diagonal"], sums["total"])
        return loss_rows, loss_cols, sums["diagonal"], sums["total"]

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad_rows, grad_cols, _grad_diagonal, _grad_total):
        if ctx.eager:
            grads = tuple(None if g is None or not wanted else g * grad_rows
                          for g, wanted in zip(ctx.saved_tensors, (ctx.need_x, ctx.need_y, ctx.need_c,
                                                                   ctx.need_scale)))
            return (*grads, None, None, None)
        (x, y, curvature, scale, row_max, row_sum, col_max, col_sum, row_count, col_count, row_ids,
         col_ids) = ctx.saved_tensors
        plan: _Plan = ctx.plan
        a = grad_rows / x.shape[0]  # ∂L/∂z = a (softmax_row − target_row) + b (softmax_col − target_col)
        b = grad_cols / y.shape[0] if plan.columns else None
        row_factor = a / row_sum  # softmax · a = exp(z − max) · (a / Σ)
        col_factor = b / col_sum if plan.columns else None
        grad_scale = torch.zeros_like(scale)

        def visit(s: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            nonlocal grad_scale
            z = torch.mul(s, scale)
            w = torch.sub(z, row_max[start:stop, None]).exp_().mul_(row_factor[start:stop, None])
            if plan.columns:
                w.add_(z.sub_(col_max).exp_().mul_(col_factor))
            del z
            positives = _positive_mask(row_ids, col_ids, start, stop)
            if positives is None:
                own = w.diagonal(plan.diagonal + start)
                own.sub_(a)
                if plan.columns:
                    own.sub_(b)
            else:
                target = a / row_count[start:stop, None]
                if plan.columns:
                    target = target + b / col_count
                w.sub_(torch.where(positives, target, 0.0))
            if ctx.need_scale:
                grad_scale = grad_scale + frobenius_inner(w, s)  # z = t·s: ∂L/∂t = Σ ∂L/∂z ∘ s
            return w.mul_(scale)

        grad_x, grad_y, grad_c = _stream(x, y, curvature, plan, (ctx.need_x, ctx.need_y, ctx.need_c), visit)
        return grad_x, grad_y, grad_c, grad_scale if ctx.need_scale else None, None, None, None


class _BlockedSigmoid(torch.autograd.Function):
    """``Σ −log σ(y ∘ (t · s(x, y) + b))``, block by block, gradients in the same pass; see :func:`blocked_sigmoid_sum`."""

    @staticmethod
    def forward(ctx, x, y, curvature, scale, bias, row_ids, col_ids, plan: _Plan):
        sums = dict(loss=x.new_zeros(()), diagonal=x.new_zeros(()), total=x.new_zeros(()), scale=x.new_zeros(()),
                    bias=x.new_zeros(()))
        eager = plan.with_grad and any(ctx.needs_input_grad[:5])

        def visit(s: torch.Tensor, start: int, stop: int) -> torch.Tensor | None:
            sums["diagonal"] += _diagonal_sum(s, plan, start)
            sums["total"] += s.sum()
            z = torch.mul(s, scale).add_(bias)
            positives = _positive_mask(row_ids, col_ids, start, stop)
            sums["loss"] += softplus_of_minus_yz(z, positives, None if plan.diagonal is None else plan.diagonal + start)
            if not eager:
                return None
            w = z.sigmoid_()  # ∂/∂z −log σ(y z) = σ(z) − [y = +1]
            if positives is None:
                if plan.diagonal is not None:
                    w.diagonal(plan.diagonal + start).sub_(1)
            else:
                w.sub_(positives.to(w.dtype))
            sums["bias"] += w.sum()
            sums["scale"] += frobenius_inner(w, s)
            return w.mul_(scale)

        grad_x, grad_y, grad_c = _stream(x, y, curvature, plan, tuple(ctx.needs_input_grad[:3]) if eager
                                         else (False, False, False), visit)
        ctx.need = ctx.needs_input_grad[:5]
        ctx.save_for_backward(grad_x, grad_y, grad_c, sums["scale"], sums["bias"])
        ctx.mark_non_differentiable(sums["diagonal"], sums["total"])
        return sums["loss"], sums["diagonal"], sums["total"]

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad_loss, _grad_diagonal, _grad_total):
        grads = tuple(g * grad_loss if wanted and g is not None else None
                      for g, wanted in zip(ctx.saved_tensors, ctx.need))
        return (*grads, None, None, None)


def _with_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _check(x: torch.Tensor, y: torch.Tensor, diagonal: int | None, row_ids, col_ids) -> None:
    if (row_ids is None) != (col_ids is None):
        raise ValueError("row_ids and col_ids must be given together")
    if row_ids is not None and (row_ids.shape != (x.shape[0],) or col_ids.shape != (y.shape[0],)):
        raise ValueError(f"caption ids must be ({x.shape[0]},) and ({y.shape[0]},), got {tuple(row_ids.shape)} "
                         f"and {tuple(col_ids.shape)}")
    if diagonal is not None and not 0 <= diagonal <= y.shape[0] - x.shape[0]:
        raise ValueError(f"own pairs at columns {diagonal}..{diagonal + x.shape[0] - 1} do not fit {y.shape[0]} columns")


def blocked_cross_entropy(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str, scale: torch.Tensor,
                          curvature: torch.Tensor, *, rows_per_block: int, diagonal: int = 0,
                          row_ids: torch.Tensor | None = None, col_ids: torch.Tensor | None = None,
                          columns: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy losses of the logits ``z = t · s(x, y)`` without holding more than a block of them.

    Args:
        x: ``(R, D)`` row points, ``y``: ``(C, D)`` column points, on the manifold.
        scale, curvature: 0-d tensors of ``x``'s dtype (they may carry gradient).
        rows_per_block: rows of ``z`` computed at once.
        diagonal: row ``i``'s own pair is column ``i + diagonal`` (the positive without ids; the logit statistics).
        row_ids, col_ids: ``(R,)`` and ``(C,)`` caption ids: entries with equal ids are positives, and the
            target spreads uniformly over them (every row, and with ``columns`` every column, needs one).
        columns: also the column-wise loss; needs ``R == C`` and ``diagonal == 0`` or caption ids.

    Returns:
        ``(row_loss, col_loss, diagonal_sum, total_sum)``: the mean over rows of ``lse_j z_ij − mean_{P_i} z_ij``
        and over columns of ``lse_i z_ij − mean_{P_j} z_ij`` (0 without ``columns``), both differentiable; and
        the sums of the unscaled logits ``s`` on the own pairs and over the whole matrix (statistics, detached).
    """
    _check(x, y, diagonal, row_ids, col_ids)
    if columns and row_ids is None and (x.shape[0] != y.shape[0] or diagonal != 0):
        raise ValueError("the column-wise loss without caption ids needs a square matrix with diagonal 0")
    plan = _Plan(geometry, logit, rows_per_block, diagonal, columns, _with_grad(x, y, scale, curvature))
    return _BlockedCrossEntropy.apply(x, y, curvature, scale, row_ids, col_ids, plan)


def blocked_sigmoid_sum(x: torch.Tensor, y: torch.Tensor, geometry: str, logit: str, scale: torch.Tensor,
                        bias: torch.Tensor, curvature: torch.Tensor, *, rows_per_block: int,
                        diagonal: int | None = 0, row_ids: torch.Tensor | None = None,
                        col_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Σ_ij −log σ(y_ij z_ij)``, ``z = t · s(x, y) + b``, without holding more than a block of ``z``.

    Args:
        x, y, scale, curvature, rows_per_block, row_ids, col_ids: as for :func:`blocked_cross_entropy`.
        bias: the 0-d logit bias ``b``.
        diagonal: row ``i``'s own pair is column ``i + diagonal``, a positive (with or without ids);
            ``None``: no own pairs (another process's texts), only equal ids are positives.

    Returns:
        ``(loss_sum, diagonal_sum, total_sum)``: the (unnormalised) sum, differentiable; the sums of the unscaled
        logits ``s`` on the own pairs and over the matrix (detached).
    """
    _check(x, y, diagonal, row_ids, col_ids)
    plan = _Plan(geometry, logit, rows_per_block, diagonal, with_grad=_with_grad(x, y, scale, bias, curvature))
    return _BlockedSigmoid.apply(x, y, curvature, scale, bias, row_ids, col_ids, plan)
