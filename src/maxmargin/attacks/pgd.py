"""Projected gradient descent (Madry et al.) with restarts, and FGSM."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import LossFn, Objective, as_objective, get_objective
from ..norms import Norm, get_norm, per_example
from . import graphs
from ._common import Bounds, check_count, check_inputs, check_labels, frozen
from .graphs import graphed_pgd_loop
from .steps import pgd_loop


def pgd_steps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Norm,
    eps: Tensor,
    steps: int,
    step_size: Tensor,
    loss_fn: Objective | LossFn,
    random_init: bool,
    lo: float,
    hi: float,
    clean_logits: Tensor | None = None,
) -> Tensor:
    """One PGD run on already-validated inputs; the model must already be in eval mode.

    ``loss_fn`` is an :class:`~maxmargin.losses.Objective` or a plain
    ``(logits, y)`` loss; ``clean_logits`` are passed on to objectives that
    read them. Gradients are taken w.r.t. the input only (``autograd.grad``),
    so parameter ``.grad`` is never touched and no weight gradients are
    computed. With CUDA graphs switched on (:mod:`.graphs`) the loop is
    replayed from a graph.
    """
    objective = as_objective(loss_fn)
    x_adv = pgd_start(x, norm, eps, random_init, lo, hi)

    def check(t: Tensor) -> None:
        check_labels(t, y)

    if graphs.usable(x):
        return graphed_pgd_loop(model, x, y, x_adv, norm, eps, steps, step_size, objective, lo, hi, check,
                                clean_logits=clean_logits)
    return pgd_loop(model, x, y, x_adv, norm, eps, steps, step_size, objective, lo, hi, check,
                    clean_logits=clean_logits)


def pgd_start(x: Tensor, norm: Norm, eps: Tensor, random_init: bool, lo: float, hi: float) -> Tensor:
    """PGD's starting point: uniform in the ball (or ``x``), in the box; drawn outside any CUDA graph."""
    delta = norm.random(x, eps) if random_init else torch.zeros_like(x)
    return torch.clamp(x + norm.project(delta, eps), lo, hi)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: float | Tensor = 0.3,
    steps: int = 40,
    step_size: float | Tensor | None = None,
    loss: str | Objective = "ce",
    random_init: bool = True,
    restarts: int = 1,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """PGD inside the ``norm`` ball of (per-example) radius ``eps`` and the box ``bounds``.

    ``loss`` names the objective ascended (:func:`maxmargin.losses.get_objective`):
    ``"ce"``, ``"cw"``, ``"slm"``, ``"lm"``, ``"kl"`` (``KL(f(x) ‖ f(x′))``,
    TRADES's inner maximization) or ``"targeted"`` (``y`` then holds the class
    each example is pushed towards), or is an :class:`~maxmargin.losses.Objective`.
    ``step_size=None`` uses ``2.5 * eps / steps``. With ``restarts > 1`` each
    further restart attacks only the examples no earlier restart brought to
    the objective's goal (misclassified; for a targeted objective, the target
    leading), and per example the strongest point is kept: one reaching the
    goal if any restart found one, otherwise the one with the highest value.
    """
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    nrm = get_norm(norm)
    loss_fn = get_objective(loss)
    eps_t = per_example(eps, x, "eps")
    check_count(steps, "steps", 0)
    check_count(restarts, "restarts", 1)
    if step_size is None:
        step_t = 2.5 * eps_t / max(steps, 1)
    else:
        step_t = per_example(step_size, x, "step_size")

    with frozen(model):
        clean = None
        if loss_fn.uses_clean_logits:
            with torch.no_grad():
                clean = model(x)
            check_labels(clean, y)
        best = pgd_steps(model, x, y, nrm, eps_t, steps, step_t, loss_fn, random_init, lo, hi, clean)
        if restarts == 1:
            return best
        with torch.no_grad():
            logits = model(best)
            check_labels(logits, y)
            best_loss = loss_fn(logits, y, clean)
            best_hit = loss_fn.reached(logits, y)
        for _ in range(restarts - 1):
            idx = (~best_hit).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs, ys = x[idx], y[idx]
            cs = None if clean is None else clean[idx]
            cand = pgd_steps(model, xs, ys, nrm, eps_t[idx], steps, step_t[idx], loss_fn, random_init, lo, hi, cs)
            with torch.no_grad():
                logits = model(cand)
                cand_loss = loss_fn(logits, ys, cs)
                cand_hit = loss_fn.reached(logits, ys)
            better = cand_hit | (cand_loss > best_loss[idx])
            take = idx[better]
            best[take] = cand[better]
            best_loss[take] = cand_loss[better]
            best_hit[take] = cand_hit[better]
    return best


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: float | Tensor = 0.3,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Fast gradient (sign) method: one full-radius CE step, no random start (FGM for l2)."""
    return pgd(model, x, y, norm=norm, eps=eps, steps=1, step_size=eps, loss="ce",
               random_init=False, restarts=1, bounds=bounds)
