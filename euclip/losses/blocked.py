"""Pairwise losses over an ``(R, C)`` logit matrix computed in row blocks: memory O(block · C), not O(R · C).

At 32,768 pairs one float32 ``(B, B)`` matrix is 4 GiB, and autograd through a loss keeps several of them
(the logits, the softmax, the geometry's own). Here the forward pass streams over blocks of rows without
autograd and keeps only ``(R,)`` and ``(C,)`` statistics; the backward pass recomputes each block's logits
*with* autograd, forms the block's gradient in closed form and pushes it into the features and the scalars
through the geometry's own (fused) backward. At most one block of the matrix and its softmax is alive at
any moment, forward or backward, and the gradients equal those of the whole-matrix loss up to rounding.

Two losses, both over ``z = t · s(x_i, y_j) (+ b)`` with ``s`` :func:`euclip.geometry.pairwise_logits`:

* :func:`blocked_cross_entropy`: the mean over rows of ``lse_j z_ij − mean_{j∈P_i} z_ij`` (image → text) and,
  optionally, the same over columns (text → image). Row log-sum-exps come from one block each; column
  log-sum-exps are accumulated over the blocks (a running ``logaddexp``). The gradient of a block is
  ``a (softmax_row − target_row) + b (softmax_col − target_col)``, with ``a``, ``b`` the incoming gradients
  divided by the number of rows and columns.
* :func:`blocked_sigmoid_sum`: ``Σ_ij −log σ(y_ij z_ij)`` with ``y = +1`` on positives and −1 elsewhere;
  each block's gradient ``σ(z) − P`` depends on that block alone.

Positives ``P``: with caption ids, every entry whose ids are equal; without, the diagonal ``j = i + offset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from euclip import geometry as geom
from euclip.geometry._numerics import float32_backward, frobenius_inner

# Entries in one block of the logit matrix (128 MiB in float32). With the softmax and the geometry's
# temporaries about six such buffers are alive at once: well under OpenCLIP's ClipLoss from B ≈ 6,000 on.
BLOCK_ENTRIES = 2**25


def rows_per_block(rows: int, cols: int, block_size: int | str | None) -> int | None:
    """How many rows of an ``(rows, cols)`` logit matrix one block holds, or ``None`` for the whole matrix.

    Args:
        block_size: ``"auto"``: blocks of about :data:`BLOCK_ENTRIES` entries when the matrix is larger than
            one such block, else the whole matrix (small batches keep the plain autograd path); ``None``: never
            block; a positive int: that many rows per block.
    """
    if block_size is None:
        return None
    if block_size == "auto":
        return max(1, BLOCK_ENTRIES // max(cols, 1)) if rows * cols > BLOCK_ENTRIES else None
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


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _positive_mask(row_ids: torch.Tensor | None, col_ids: torch.Tensor | None, start: int, stop: int
                   ) -> torch.Tensor | None:
    return None if row_ids is None else row_ids[start:stop, None] == col_ids[None, :]


def _diagonal_sums(s: torch.Tensor, plan: _Plan, start: int) -> torch.Tensor:
    """Σ of the block's own-pair entries (0 where the matrix has none)."""
    if plan.diagonal is None:
        return s.new_zeros(())
    return s.diagonal(plan.diagonal + start).sum()


def _push_blocks(ctx, block_gradient: Callable[[torch.Tensor, int, int], torch.Tensor]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Recompute each block's geometry logits ``s`` with autograd and back-propagate ``block_gradient``.

    ``block_gradient(s, start, stop)`` returns ``∂L/∂s`` of rows ``start:stop`` (it may reuse ``s``'s
    memory only through new tensors: ``s`` is needed by the geometry's backward). Returns the gradients of
    ``x``, ``y`` and the curvature (``None`` where not needed).
    """
    x, y, curvature = ctx.saved_tensors[:3]
    plan: _Plan = ctx.plan
    need_x, need_y, need_c = ctx.need_x, ctx.need_y, ctx.need_c
    grad_x = torch.empty_like(x) if need_x else None
    grad_y = torch.zeros_like(y) if need_y else None
    grad_c = torch.zeros_like(curvature) if need_c else None
    y_leaf = y.detach().requires_grad_(need_y)
    c_leaf = curvature.detach().requires_grad_(need_c)
    for start, stop in _blocks(x.shape[0], plan.rows_per_block):
        x_leaf = x[start:stop].detach().requires_grad_(need_x)
        inputs = [t for t, need in ((x_leaf, need_x), (y_leaf, need_y), (c_leaf, need_c)) if need]
        with torch.enable_grad() if inputs else torch.no_grad():
            s = geom.pairwise_logits(x_leaf, y_leaf, plan.geometry, plan.logit, c_leaf)
        with torch.no_grad():
            grad_s = block_gradient(s.detach(), start, stop)
        if not inputs:
            continue
        # The curvature is unused outside the hyperbolic geometry: allow_unused, and None means 0.
        grads = iter(torch.autograd.grad(s, inputs, grad_s, allow_unused=True))
        del s, grad_s
        if need_x:
            g = next(grads)
            grad_x[start:stop] = 0 if g is None else g
        if need_y:
            g = next(grads)
            if g is not None:
                grad_y += g
        if need_c:
            g = next(grads)
            if g is not None:
                grad_c += g
    return grad_x, grad_y, grad_c


class _BlockedCrossEntropy(torch.autograd.Function):
    """Row- (and column-) wise cross-entropy of ``t · s(x, y)``, block by block; see :func:`blocked_cross_entropy`."""

    @staticmethod
    def forward(ctx, x, y, curvature, scale, row_ids, col_ids, plan: _Plan):
        rows, cols = x.shape[0], y.shape[0]
        row_lse, row_positive = x.new_empty(rows), x.new_empty(rows)
        row_count = col_count = col_lse = col_positive = None
        if row_ids is not None:
            row_count = x.new_empty(rows)
        if plan.columns:
            col_lse = x.new_full((cols,), float("-inf"))
            col_positive = x.new_zeros(cols)
            if row_ids is not None:
                col_count = x.new_zeros(cols)
        diagonal_sum, total_sum = x.new_zeros(()), x.new_zeros(())
        for start, stop in _blocks(rows, plan.rows_per_block):
            s = geom.pairwise_logits(x[start:stop], y, plan.geometry, plan.logit, curvature)
            diagonal_sum += _diagonal_sums(s, plan, start)
            total_sum += s.sum()
            z = s.mul_(scale)
            row_lse[start:stop] = torch.logsumexp(z, 1)
            if plan.columns:
                col_lse = torch.logaddexp(col_lse, torch.logsumexp(z, 0))
            positives = _positive_mask(row_ids, col_ids, start, stop)
            if positives is None:
                own = z.diagonal(plan.diagonal + start)
                row_positive[start:stop] = own
                if plan.columns:
                    col_positive[plan.diagonal + start:plan.diagonal + stop] = own
            else:
                masked = torch.where(positives, z, 0.0)
                count = positives.sum(1)
                row_count[start:stop] = count
                row_positive[start:stop] = masked.sum(1) / count
                if plan.columns:
                    col_positive += masked.sum(0)
                    col_count += positives.sum(0)
                del masked
            del z, s
        loss_rows = (row_lse - row_positive).mean()
        if plan.columns:
            loss_cols = (col_lse - (col_positive if col_count is None else col_positive / col_count)).mean()
        else:
            loss_cols = x.new_zeros(())
        ctx.plan = plan
        ctx.need_x, ctx.need_y, ctx.need_c, ctx.need_scale = ctx.needs_input_grad[:4]
        ctx.save_for_backward(x, y, curvature, scale, row_lse, col_lse, row_count, col_count, row_ids, col_ids)
        ctx.mark_non_differentiable(diagonal_sum, total_sum)
        return loss_rows, loss_cols, diagonal_sum, total_sum

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad_rows, grad_cols, _grad_diagonal, _grad_total):
        x, y, curvature, scale, row_lse, col_lse, row_count, col_count, row_ids, col_ids = ctx.saved_tensors
        plan: _Plan = ctx.plan
        a = grad_rows / x.shape[0]  # ∂L/∂z = a (softmax_row − target_row) + b (softmax_col − target_col)
        b = grad_cols / y.shape[0] if plan.columns else None
        grad_scale = torch.zeros_like(scale)

        def block_gradient(s: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            nonlocal grad_scale
            w = torch.mul(s, scale).sub_(row_lse[start:stop, None]).exp_().mul_(a)
            if plan.columns:
                w.add_(torch.mul(s, scale).sub_(col_lse).exp_().mul_(b))
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

        grad_x, grad_y, grad_c = _push_blocks(ctx, block_gradient)
        return grad_x, grad_y, grad_c, grad_scale if ctx.need_scale else None, None, None, None


class _BlockedSigmoid(torch.autograd.Function):
    """``Σ −log σ(y ∘ (t · s(x, y) + b))``, block by block; see :func:`blocked_sigmoid_sum`."""

    @staticmethod
    def forward(ctx, x, y, curvature, scale, bias, row_ids, col_ids, plan: _Plan):
        loss = x.new_zeros(())
        diagonal_sum, total_sum = x.new_zeros(()), x.new_zeros(())
        for start, stop in _blocks(x.shape[0], plan.rows_per_block):
            s = geom.pairwise_logits(x[start:stop], y, plan.geometry, plan.logit, curvature)
            diagonal_sum += _diagonal_sums(s, plan, start)
            total_sum += s.sum()
            yz = s.mul_(scale).add_(bias).neg_()  # y ∘ z with y = −1 everywhere, then +1 on the positives
            positives = _positive_mask(row_ids, col_ids, start, stop)
            if positives is None:
                if plan.diagonal is not None:
                    yz.diagonal(plan.diagonal + start).neg_()
            else:
                yz = torch.where(positives, yz.neg(), yz)
            # −log σ rather than softplus(−·): torch's softplus is linear beyond 20, a 1e-9 relative error.
            loss -= F.logsigmoid(yz).sum()
            del yz, s
        ctx.plan = plan
        ctx.need_x, ctx.need_y, ctx.need_c, ctx.need_scale, ctx.need_bias = ctx.needs_input_grad[:5]
        ctx.save_for_backward(x, y, curvature, scale, bias, row_ids, col_ids)
        ctx.mark_non_differentiable(diagonal_sum, total_sum)
        return loss, diagonal_sum, total_sum

    @staticmethod
    @once_differentiable
    @float32_backward
    def backward(ctx, grad_loss, _grad_diagonal, _grad_total):
        x, y, curvature, scale, bias, row_ids, col_ids = ctx.saved_tensors
        plan: _Plan = ctx.plan
        grad_scale, grad_bias = torch.zeros_like(scale), torch.zeros_like(bias)

        def block_gradient(s: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            nonlocal grad_scale, grad_bias
            w = torch.mul(s, scale).add_(bias).sigmoid_()  # ∂/∂z −log σ(y z) = σ(z) − [y = +1]
            positives = _positive_mask(row_ids, col_ids, start, stop)
            if positives is None:
                if plan.diagonal is not None:
                    w.diagonal(plan.diagonal + start).sub_(1)
            else:
                w.sub_(positives.to(w.dtype))
            w.mul_(grad_loss)
            if ctx.need_bias:
                grad_bias = grad_bias + w.sum()
            if ctx.need_scale:
                grad_scale = grad_scale + frobenius_inner(w, s)
            return w.mul_(scale)

        grad_x, grad_y, grad_c = _push_blocks(ctx, block_gradient)
        return (grad_x, grad_y, grad_c, grad_scale if ctx.need_scale else None,
                grad_bias if ctx.need_bias else None, None, None, None)


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
    plan = _Plan(geometry, logit, rows_per_block, diagonal, columns)
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
    plan = _Plan(geometry, logit, rows_per_block, diagonal)
    return _BlockedSigmoid.apply(x, y, curvature, scale, bias, row_ids, col_ids, plan)
