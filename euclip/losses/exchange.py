"""Differentiable point-to-point exchange of tensors between neighbouring ``torch.distributed`` processes.

The sigmoid loss (:mod:`euclip.losses.sigmoid`) passes each process's text features around the ring of
processes instead of all-gathering them, as OpenCLIP's ``SigLipLoss`` does: a process then holds at most
its own texts and two received chunks at a time in the forward pass (plus what autograd keeps), and the
gradient of a received chunk travels back to the process that owns it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Route = tuple[int, int]  # (rank to send to, rank to receive from)


def _p2p(routes: tuple[Route, ...], tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Send ``tensors[k]`` to ``routes[k][0]`` and receive a tensor of its shape from ``routes[k][1]``, all at once."""
    received = tuple(torch.empty_like(t) for t in tensors)
    ops = [dist.P2POp(dist.isend, t.contiguous(), dst) for t, (dst, _) in zip(tensors, routes)]
    ops += [dist.P2POp(dist.irecv, r, src) for r, (_, src) in zip(received, routes)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _Exchange(torch.autograd.Function):
    """:func:`_p2p` whose backward sends each received tensor's gradient back to its sender."""

    @staticmethod
    def forward(ctx, routes: tuple[Route, ...], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.routes = routes
        return _p2p(routes, tensors)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        # The gradient of what came from `src` goes back to `src`; what we sent to `dst` gets its gradient from `dst`.
        back = tuple((src, dst) for dst, src in ctx.routes)
        return (None, *_p2p(back, tuple(g.contiguous() for g in grads)))


def exchange(routes: tuple[Route, ...], *tensors: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, ...]:
    """Send ``tensors[k]`` to rank ``routes[k][0]`` and return what rank ``routes[k][1]`` sent, same shapes.

    Every process must call it with matching routes (what one sends to ``r``, ``r`` receives from it).
    With ``with_grad`` the exchange is differentiable: its backward is the reverse exchange of the
    gradients. Integer tensors (caption ids) go with ``with_grad=False``.
    """
    if with_grad:
        return _Exchange.apply(routes, *tensors)
    return _p2p(routes, tensors)


def ring_neighbours() -> tuple[int, int, int, int]:
    """``(rank, world, left, right)`` of this process in the ring ``0 → 1 → … → W−1 → 0``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, (rank - 1) % world, (rank + 1) % world
