"""The PGD iteration itself: the one loop that eager attacks, CUDA-graph captures, AN-PGD and TRADES run."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..losses import Objective
from ..norms import Norm, bcast
from ._common import input_grad


def pgd_loop(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: Norm, eps: Tensor, steps: int,
             step: Tensor, objective: Objective, lo: float, hi: float,
             first_logits: Callable[[Tensor], None] | None = None,
             last_logits: Callable[[Tensor], None] | None = None,
             clean_logits: Tensor | None = None) -> Tensor:
    """``steps`` PGD iterations from ``x_adv`` ascending ``objective``, inside the ``eps`` ball and the box.

    Each iteration steps ``step`` along ``norm``'s steepest-ascent direction of
    ``objective(f(x_adv), y, clean_logits).sum()`` and projects back onto the
    ball around ``x`` and the box ``[lo, hi]``. ``clean_logits`` (``f(x)``,
    detached) are only read by objectives that compare with the clean point.
    The caller draws the start and puts the model in eval mode; gradients are
    taken w.r.t. the input only.

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
        g = input_grad(objective(logits, y, clean_logits).sum(), x_adv)
        delta = x_adv.detach() + step * norm.direction(g) - x
        x_adv = torch.clamp(x + norm.project(delta, eps), lo, hi)
    return x_adv.detach()
