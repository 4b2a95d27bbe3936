"""An augmented-Lagrangian minimal-norm L2 attack, after ALMA (Rony et al., CVPR 2021, arXiv 2011.11857).

The problem ``min ‖δ‖₂ s.t. x + δ misclassified, x + δ in the box`` is solved
as an augmented Lagrangian: gradient steps on ``‖δ‖₂ + P(z, ρ, μ)`` where
``z`` is a normalized logit difference (positive while the point is still
classified correctly), ``P`` is the paper's penalty-Lagrangian ``P2`` and the
multiplier ``μ`` follows ``∂P/∂z`` as an exponential moving average. Unlike
DDN and FMN, which put the iterate on a sphere whose radius they steer, the
distance here is part of the objective, and the steps are RMSProp steps: per
coordinate, not along the normalized gradient. On adversarially trained
networks, whose input gradients are small and sparse, that is what finds the
closer points (measured in ``benchmarks/RESULTS.md``, issue 19 item 6).

Why the pieces are there:

- ``z = (f_y − max_{j≠y} f_j + tol) / (top₁ − top₃)``: dividing by a logit
  spread makes the constraint blind to the logits' scale, so one ``ρ`` and
  one ``μ`` schedule serve every model; ``tol`` keeps a tie from counting.
- ``P2``: cubic outside the feasible set (it pulls hard while the point is
  still classified correctly), ``μz / (1 − ρz)`` inside (a bounded reward, so
  the distance term wins once the point is adversarial and walks it back to
  the boundary).
- ``ρ`` grows by ``γ`` every ``check_every`` steps for an example that has
  never been adversarial and whose ``z`` did not fall by the factor ``τ``.
- The step size decays exponentially from an example's first success to the
  last step, so the search settles on the boundary instead of circling it.

Written from the paper's description; adv-lib 0.2.8's ``alma`` (BSD) was read
for facts only: the default constants (the paper's), the RMSProp variant
(squared averages started at 1, momentum 0.9) and the step decay from an
example's first success.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses import logit_margin
from ..norms import bcast, get_norm, tiny
from ._common import Bounds, check_count, check_inputs, check_labels, frozen, input_grad


@dataclass
class ALMAResult:
    x_adv: Tensor    # the smallest adversarial point found; x where none was
    norm: Tensor     # ‖x_adv − x‖₂; inf where nothing was found
    found: Tensor    # whether x_adv is adversarial (misclassified examples: found at norm 0)


def _constraint(logits: Tensor, y: Tensor, tol: float, target: Tensor | None = None) -> Tensor:
    """``(f_y − max_{j≠y} f_j + tol) / (top₁ − top₃)``: > 0 while ``y`` is predicted (or tied).

    With a per-row ``target``, ``f_t`` replaces the max: the search heads for that class's boundary.
    With two classes there is no third logit; the difference is used as it is.
    """
    if logits.shape[1] >= 3:
        top = logits.topk(3, dim=1).values
        spread = top[:, 0] - top[:, 2]
    else:
        # two classes: top₁ − top₂ is |the difference itself|, which would make z ≡ ±1 with no gradient
        spread = torch.ones_like(logits[:, 0])
    if target is None:
        diff = -logit_margin(logits, y)
    else:
        diff = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return (diff + tol) / (spread + 1e-8)


def _p2_grad(z: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """``∂P2/∂z`` of ``P2(z) = μz + μρz² + ρ²z³/6`` (z ≥ 0) and ``μz / (1 − ρz)`` (z < 0).

    Only the derivative is needed: the penalty enters the step through it and
    the multiplier update is it. It is positive everywhere (P2 is increasing),
    so the step always moves ``z`` down, hard while ``z > 0`` and gently once
    the point is adversarial.
    """
    inside = mu / (1 - rho * z.clamp(max=0)) ** 2
    outside = mu + 2 * mu * rho * z + 0.5 * rho ** 2 * z ** 2
    return torch.where(z >= 0, outside, inside)


def lagrangian_search(model: nn.Module, x: Tensor, y: Tensor, steps: int, lo: float, hi: float,
                      lr: float | Tensor = 0.1, lr_reduction: float = 0.01, mu_init: float = 1.0, rho_init: float = 1.0,
                      check_every: int = 10, tau: float = 0.95, gamma: float = 1.2, avg: float = 0.9,
                      tol: float = 1e-4, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The smallest adversarial point found per example and its L2 distance to ``x`` (inf where none; ``x`` there).

    The model must already be in eval mode (callers hold :func:`frozen`);
    parameters' ``.grad`` is not touched (gradients are taken with
    ``torch.autograd.grad`` with respect to the input only). Success is
    ``LM > 0``, checked on the very forward pass whose norm is recorded.
    ``steps`` gradient steps are taken and the point after the last one is
    checked too (``steps + 1`` forward passes).
    """
    l2 = get_norm("l2")
    b = x.shape[0]
    dt, dev = x.dtype, x.device
    point = x.clone()                    # the iterate itself, always inside the box: what is evaluated is returned
    square_avg = torch.ones_like(x)      # as in the paper's RMSProp: the first steps are not blown up by 1/√g²
    momentum = torch.zeros_like(x)
    mu = torch.full((b,), mu_init, dtype=dt, device=dev)
    rho = torch.full((b,), rho_init, dtype=dt, device=dev)
    best = torch.full((b,), float("inf"), dtype=dt, device=dev)
    best_x = x.clone()
    ever = torch.zeros(b, dtype=torch.bool, device=x.device)
    first = torch.full((b,), float(steps), dtype=dt, device=dev)          # step of the first success; `steps` = not yet
    prev_z = torch.zeros(b, dtype=dt, device=dev)
    lr0 = torch.as_tensor(lr, dtype=dt, device=dev).expand(b)
    # constants that float16 can hold (1e12 overflows it, 1e-20 is 0 there)
    info = torch.finfo(x.dtype)
    mu_max, floor = min(1e12, info.max), max(1e-20, info.tiny)
    for i in range(steps + 1):
        xa = point.clone().requires_grad_(True)
        logits = model(xa)
        z = _constraint(logits, y, tol, target)
        with torch.no_grad():
            adv = logit_margin(logits, y) > 0        # strictly: a tie may still be classified as y
            delta = point - x
            n = l2.measure(delta)
            better = adv & (n < best)
            best = torch.where(better, n, best)
            best_x = torch.where(bcast(better, x), point, best_x)
            first = torch.where(adv & ~ever, torch.full_like(first, float(i)), first)
            ever |= adv
        if i == steps:
            break
        with torch.no_grad():
            zd = z.detach()
            if i == 0:
                prev_z = zd
            elif (i + 1) % check_every == 0:
                # raise the penalty only where the constraint is stuck and was never met
                stuck = ~(ever | (zd < tau * prev_z))
                rho = torch.where(stuck, gamma * rho, rho)
                prev_z = zd
            if i > 0:
                mu = (avg * mu + (1 - avg) * _p2_grad(zd, rho, mu)).clamp(1e-6, mu_max)
            weight = _p2_grad(zd, rho, mu)
        # ∇δ P(z) = P'(z) ∇δ z: one backward pass with the per-example weight (zeros for a model
        # that ignores or detaches its input, non-finite entries zeroed)
        g = input_grad((z * weight).sum(), xa)
        with torch.no_grad():
            if i > 0:
                # ∇‖δ‖₂ = δ/‖δ‖ (0 at δ = 0, where the first step is on the penalty alone)
                g = g + delta / bcast(n.clamp_min(tiny(n)), x)
            frac = (i - first).clamp_min(0) / (steps - first).clamp_min(1)
            step = lr0 * lr_reduction ** frac
            # where the gradient stays 0 (pixels held at the box) both averages decay as avg^i and reach
            # float32's denormals after ~850 steps, which made later steps 30x slower on a CPU; flooring
            # them changes no step (√1e-20 is far below the 1e-8 added to it)
            square_avg.mul_(avg).addcmul_(g, g, value=1 - avg).clamp_(min=floor)
            momentum.mul_(avg).add_(g / (square_avg.sqrt() + 1e-8))
            momentum.masked_fill_(momentum.abs() < floor, 0.0)
            point = torch.clamp(point - bcast(step, x) * momentum, lo, hi)
    return best_x, best


def alma_search(model: nn.Module, x: Tensor, y: Tensor, steps: int = 1000, bounds: Bounds = (0.0, 1.0),
                lr: float = 0.1) -> ALMAResult:
    """The augmented-Lagrangian L2 attack with its full per-example outcome.

    Misclassified examples are found at norm 0 (``x_adv = x``). ``lr`` is the
    initial RMSProp step in input units (the paper's 0.1 for inputs in [0, 1]).
    """
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    check_count(steps, "steps", 1)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    with frozen(model):
        with torch.no_grad():
            logits = model(x)
        check_labels(logits, y)
        wrong = logit_margin(logits, y) >= 0 if logits.numel() else torch.zeros_like(y, dtype=torch.bool)
        x_adv, norm = lagrangian_search(model, x, y, steps, lo, hi, lr=lr)
    norm = torch.where(wrong, torch.zeros_like(norm), norm)
    x_adv = torch.where(bcast(wrong, x), x, x_adv)
    found = torch.isfinite(norm)
    return ALMAResult(x_adv, norm, found)


def alma(model: nn.Module, x: Tensor, y: Tensor, steps: int = 1000, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """L2 minimal-norm attack: the smallest adversarial point found (``x`` where none was)."""
    return alma_search(model, x, y, steps=steps, bounds=bounds).x_adv
