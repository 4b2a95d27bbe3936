"""A minimal-norm search of the FMN kind (Pintor et al., NeurIPS 2021), for any norm of :mod:`maxmargin.norms`.

PGD at a fixed radius followed by a line search along its direction depends
on a good radius: started far away it finds a far crossing and never comes
back. Here the radius moves with the search instead: it grows (by a linear
estimate of the distance to the boundary, then geometrically) while the
iterate is not adversarial, and shrinks below the smallest adversarial norm
found once it is. Steps are taken relative to the current radius and decay
on a cosine schedule, and the smallest adversarial iterate is kept per
example, so every result is a verified adversarial point.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..losses import LossFn, logit_margin
from ..norms import Norm, bcast, tiny
from ._common import input_grad


def _cosine(k: int, steps: int, start: float, end: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def fmn_search(model: nn.Module, x: Tensor, y: Tensor, nrm: Norm, loss_fn: LossFn, steps: int, eps: Tensor,
               lo: float, hi: float, gamma: float = 0.05, alpha: float = 1.0, alpha_min: float = 0.01
               ) -> tuple[Tensor, Tensor]:
    """The smallest adversarial perturbation found per example and its norm (inf where none).

    ``loss_fn`` is ascended (a targeted or untargeted margin); success is
    ``LM > 0`` whatever the target. ``eps`` is the starting radius. The model
    must already be in eval mode; parameters' ``.grad`` is not touched.
    """
    delta = torch.zeros_like(x)
    best = torch.full_like(eps, float("inf"))
    best_delta = torch.zeros_like(x)
    eps = eps.clone()
    for k in range(steps + 1):
        xa = (x + delta).requires_grad_(True)
        logits = model(xa)
        with torch.no_grad():
            adv = logit_margin(logits, y) > 0       # strictly: a tie may still be classified as y
            n = nrm.measure(delta)
            better = adv & (n < best)
            best = torch.where(better, n, best)
            best_delta = torch.where(bcast(better, x), delta, best_delta)
        if k == steps:
            break
        g = input_grad(loss_fn(logits, y).sum(), xa)
        with torch.no_grad():
            gam = _cosine(k, steps, gamma, gamma / 100)
            never = torch.isinf(best)
            # before any success: jump to a linear estimate of the boundary's distance
            reach = n + logit_margin(logits, y).abs() / nrm.dual(g).clamp_min(tiny(g))
            grow = torch.where(never, torch.maximum(eps * (1 + gam), reach), torch.minimum(eps * (1 + gam), best))
            eps = torch.where(adv, torch.minimum(eps, n) * (1 - gam), grow)
            step = _cosine(k, steps, alpha, alpha_min) * eps
            delta = delta + bcast(step, x) * nrm.direction(g)
            delta = torch.clamp(x + nrm.project(delta, eps), lo, hi) - x
    return best_delta, best
