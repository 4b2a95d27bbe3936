"""The PGD iteration itself: the one loop that eager attacks, CUDA-graph captures and AN-PGD all run."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..losses import LossFn
from ..norms import Norm, bcast
from ._common import input_grad


def pgd_loop(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: Norm, eps: Tensor, steps: int,
             step: Tensor, loss_fn: LossFn, lo: float, hi: float,
             first_logits: Callable[[Tensor], None] | None = None,
             last_logits: Callable[[Tensor], None] | None = None) -> Tensor:
    """``steps`` PGD iterations from ``x_adv``: the one loop both the eager and the graphed path run.

    ``first_logits`` sees the first iteration's logits (label checks; never
    during a capture, where a host sync is not allowed); ``last_logits`` sees
    the last iteration's (the point one step before the one returned).
    """
    step = bcast(step, x)
    for k in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if k == 0 and first_logits is not None:
            first_logits(logits)
        if k == steps - 1 and last_logits is not None:
            last_logits(logits.detach())
        g = input_grad(loss_fn(logits, y).sum(), x_adv)
        delta = x_adv.detach() + step * norm.direction(g) - x
        x_adv = torch.clamp(x + norm.project(delta, eps), lo, hi)
    return x_adv.detach()
