"""Feature gathering across ``torch.distributed`` processes, so that every loss sees the global batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn

_LOCAL_ONLY = [False]


def distributed_world() -> int:
    """The number of processes a loss spans: the default group's size (1 without one, or inside
    :func:`single_process`)."""
    if _LOCAL_ONLY[0] or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


@contextmanager
def single_process() -> Iterator[None]:
    """Compute losses over this process's features alone, even inside a process group (e.g. a validation
    loss computed on the main process while the others wait)."""
    before = _LOCAL_ONLY[0]
    _LOCAL_ONLY[0] = True
    try:
        yield
    finally:
        _LOCAL_ONLY[0] = before


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def gather_features(image: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor | None,
                    gather_with_grad: bool, local_grad_scale: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All-gather ``(B, D)`` features from every process into ``(W·B, D)``, rank order.

    With ``gather_with_grad`` the gather is differentiable (its backward sums the gradients of
    all processes' losses onto each process's features). Without it, only this process's own
    chunk carries gradient, scaled by ``local_grad_scale``. When every process computes the same
    global loss, the chunk's gradient is then ``W`` times too small after
    DistributedDataParallel's averaging; ``local_grad_scale=W`` makes it exact, with no
    communication in backward.
    """
    if distributed_world() == 1:
        return image, text, caption_ids
    world, rank = dist.get_world_size(), dist.get_rank()
    if gather_with_grad:
        all_image = torch.cat(torch.distributed.nn.all_gather(image), dim=0)
        all_text = torch.cat(torch.distributed.nn.all_gather(text), dim=0)
    else:
        chunks_image = [torch.empty_like(image) for _ in range(world)]
        chunks_text = [torch.empty_like(text) for _ in range(world)]
        dist.all_gather(chunks_image, image.detach().contiguous())
        dist.all_gather(chunks_text, text.detach().contiguous())
        if local_grad_scale != 1:
            image, text = _ScaleGrad.apply(image, local_grad_scale), _ScaleGrad.apply(text, local_grad_scale)
        chunks_image[rank], chunks_text[rank] = image, text  # keep the local gradient path
        all_image, all_text = torch.cat(chunks_image), torch.cat(chunks_text)
    all_ids = None
    if caption_ids is not None:
        id_chunks = [torch.empty_like(caption_ids) for _ in range(world)]
        dist.all_gather(id_chunks, caption_ids.contiguous())
        all_ids = torch.cat(id_chunks)
    return all_image, all_text, all_ids
