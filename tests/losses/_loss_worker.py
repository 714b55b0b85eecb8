"""Runs every loss case of ``test_sigmoid.py`` in each process of one ``torchrun`` launch (not collected by pytest).

    torchrun --nproc_per_node W tests/losses/_loss_worker.py JOBS.pt RESULTS.pt

JOBS.pt holds ``{"cases", "inputs"}``: each input is a global batch; process ``r`` takes rows
``r·B:(r+1)·B`` as leaves, computes its loss and backward, and rank 0 writes, per case, every process's
loss, the gradients of its features and scalars, and how many all-gathers the loss made.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)  # several processes on a two-core machine

from euclip.losses import contrastive_loss, sigmoid_loss  # noqa: E402

_all_gathers = [0]


def _counting(function):
    def wrapper(*args, **kwargs):
        _all_gathers[0] += 1
        return function(*args, **kwargs)
    return wrapper


# Count the all-gathers the losses make (the sigmoid loss must make none: its texts travel by point-to-point).
for module in (dist, torch.distributed.nn):
    for name in ("all_gather", "all_gather_into_tensor"):
        if hasattr(module, name):
            setattr(module, name, _counting(getattr(module, name)))


def run(case: dict, inputs: dict) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * inputs["image"].shape[0] // world, (rank + 1) * inputs["image"].shape[0] // world)
    image, text = (inputs[k][rows].clone().requires_grad_(True) for k in ("image", "text"))
    scale, bias, curvature = (inputs[k].clone().requires_grad_(True) for k in ("scale", "bias", "curvature"))
    ids = inputs["ids"][rows] if inputs["ids"] is not None else None
    _all_gathers[0] = 0
    if case["loss"] == "sigmoid":
        out = sigmoid_loss(image, text, case["geometry"], case["logit"], scale, bias, curvature, caption_ids=ids,
                           **case["options"])
    else:
        out = contrastive_loss(image, text, case["geometry"], case["logit"], scale, curvature, caption_ids=ids,
                               **case["options"])
    out.total.backward()
    zero = torch.zeros(())
    return dict(loss=out.total.detach(), image=image.grad, text=text.grad, scale=scale.grad,
                bias=bias.grad if bias.grad is not None else zero,
                curvature=curvature.grad if curvature.grad is not None else zero, all_gathers=_all_gathers[0])


def main() -> None:
    jobs = torch.load(sys.argv[1])
    dist.init_process_group("gloo")
    results = []
    for case, inputs in zip(jobs["cases"], jobs["inputs"]):
        mine = run(case, inputs)
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        results.append({k: [g[k] for g in gathered] for k in mine})
    if dist.get_rank() == 0:
        torch.save(results, sys.argv[2])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
