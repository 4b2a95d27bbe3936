"""Decoupled Direction and Norm (DDN, Rony et al., CVPR 2019): a minimal-norm L2 attack.

Each step takes a normalized gradient step on the cross-entropy, then puts the
perturbation on a sphere whose radius shrinks by ``(1 − γ)`` while the point is
adversarial and grows by ``(1 + γ)`` while it is not. The smallest adversarial
point seen is kept per example.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses import cross_entropy
from ..norms import bcast, get_norm, per_example
from ._common import Bounds, check_count, check_inputs, check_labels, frozen, input_grad


@dataclass
class DDNResult:
    x_adv: Tensor    # the smallest adversarial point found; the last iterate where none was
    norm: Tensor     # ‖x_adv − x‖₂
    found: Tensor    # whether x_adv is adversarial (misclassified examples: found at norm 0)


def ddn_search(model: nn.Module, x: Tensor, y: Tensor, steps: int = 100, gamma: float = 0.05,
               init_norm: float | Tensor = 1.0, bounds: Bounds = (0.0, 1.0), alpha: float = 1.0,
               alpha_min: float = 0.01) -> DDNResult:
    """DDN with its full per-example outcome. The step size decays from ``alpha`` to
    ``alpha_min`` on a cosine schedule, in units of the current radius."""
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    check_count(steps, "steps", 1)
    if not 0 < gamma < 1:
        raise ValueError(f"gamma must lie in (0, 1), got {gamma}")
    eps = per_example(init_norm, x, "init_norm")
    if bool((eps <= 0).any()):
        raise ValueError("init_norm must be > 0")
    l2 = get_norm("l2")
    delta = torch.zeros_like(x)
    best = x.clone()
    best_norm = torch.full_like(eps, math.inf)
    with frozen(model):
        for k in range(steps):
            delta.requires_grad_(True)
            x_adv = torch.clamp(x + delta, lo, hi)
            logits = model(x_adv)
            if k == 0:
                check_labels(logits, y)
            g = input_grad(cross_entropy(logits, y).sum(), delta)
            with torch.no_grad():
                x_adv = x_adv.detach()
                norm = l2.measure(x_adv - x)
                adv = logits.argmax(1) != y
                better = adv & (norm < best_norm)
                best[better] = x_adv[better]
                best_norm = torch.where(better, norm, best_norm)
                step = alpha_min + (alpha - alpha_min) * (1 + math.cos(math.pi * k / steps)) / 2
                d = delta.detach() + bcast(step * eps, x) * l2.direction(g)
                eps = torch.where(adv, eps * (1 - gamma), eps * (1 + gamma))
                d = l2.direction(d) * bcast(eps, x)
                delta = torch.clamp(x + d, lo, hi) - x
        with torch.no_grad():
            x_last = torch.clamp(x + delta, lo, hi)
            logits = model(x_last)
            adv = logits.argmax(1) != y
            norm = l2.measure(x_last - x)
            better = adv & (norm < best_norm)
            best[better] = x_last[better]
            best_norm = torch.where(better, norm, best_norm)
    found = torch.isfinite(best_norm)
    x_out = torch.where(bcast(found, x), best, x_last)
    return DDNResult(x_out, l2.measure(x_out - x), found)


def ddn(model: nn.Module, x: Tensor, y: Tensor, steps: int = 100, gamma: float = 0.05,
        init_norm: float | Tensor = 1.0, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """L2 minimal-norm attack: the smallest adversarial point found (the last iterate where none was)."""
    return ddn_search(model, x, y, steps=steps, gamma=gamma, init_norm=init_norm, bounds=bounds).x_adv
