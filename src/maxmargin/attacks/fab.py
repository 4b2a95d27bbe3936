"""A targeted minimal-L2 search of the FAB kind (Croce & Hein, ICML 2020, arXiv 1907.02044).

Each step linearizes ``g = f_y − f_t`` (positive while ``y`` beats the
target ``t``) at the iterate ``p`` and projects two points onto the linear
decision boundary, inside the input box (:func:`maxmargin.norms.l2_to_hyperplane`):
``p`` itself and the original ``x``. The next iterate is a convex combination
of the two projections, slightly overshot (``η``), with at most ``α_max`` of
the weight on the projection of ``x``: that term is what keeps the search
near ``x`` rather than wherever the boundary was first crossed. Once the
iterate is adversarial it is pulled back towards ``x`` (by ``β``), so the
search walks along the boundary towards the closest point.

FAB's strength is where the others are weak: on smooth, adversarially trained
networks (TRADES) whose boundary is nearly flat near ``x``, the projection
lands close to the closest point in a few steps, where gradient-sign and
RMSProp steps wander (measured in docs/margins.md, issue 19 item 6).

Written from the paper; adv-lib 0.2.8's ``fab`` (BSD) was read for facts only:
the constants (``α_max`` 0.1, ``β`` 0.9, ``η`` 1.05, 100 iterations).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses import logit_margin
from ..norms import bcast, get_norm, l2_to_hyperplane, tiny
from ._common import Bounds, check_count, check_inputs, check_labels, frozen, input_grad


@dataclass
class FABResult:
    x_adv: Tensor    # the closest adversarial point found; x where none was
    norm: Tensor     # ‖x_adv − x‖₂; inf where nothing was found
    found: Tensor    # whether x_adv is adversarial (misclassified examples: found at norm 0)


def projection_search(model: nn.Module, x: Tensor, y: Tensor, classes: Tensor, steps: int, lo: float, hi: float,
                      alpha_max: float = 0.1, beta: float = 0.9, eta: float = 1.05) -> tuple[Tensor, Tensor]:
    """The closest adversarial point found per row and its L2 distance to ``x`` (inf and ``x`` where none).

    ``classes`` (``[rows, k]``) are the classes each row may head for: every
    step linearizes ``f_y − f_c`` for each of them (one forward pass, ``k``
    backward passes, and one more forward pass at the new iterate) and takes
    the one whose linear boundary is closest, as FAB's untargeted mode does
    over all classes. Success is ``LM > 0`` (any class beating ``y``),
    checked on the forward pass whose norm is recorded. The model must
    already be in eval mode; parameters' ``.grad`` is not touched.
    """
    l2 = get_norm("l2")
    b, k = classes.shape
    best = torch.full((b,), float("inf"), dtype=x.dtype, device=x.device)
    best_x = x.clone()
    point = x.clone()
    lo_x, hi_x = lo - x, hi - x
    for _ in range(steps):
        xa = point.clone().requires_grad_(True)
        logits = model(xa)
        gaps = logits.gather(1, y[:, None]) - logits.gather(1, classes)          # [b, k], > 0 while y wins
        # the class whose linearized boundary is nearest (FAB's choice: |gap| / ‖∇gap‖₂), kept as the
        # gradients come so that only one of them is held per row (k of them would be k × the input)
        ratio = torch.full((b,), float("inf"), dtype=x.dtype, device=x.device)
        w, g = torch.zeros_like(x), torch.zeros_like(ratio)
        for j in range(k):
            grad_j = input_grad(gaps[:, j].sum(), xa, retain_graph=j + 1 < k)
            with torch.no_grad():
                gap_j = gaps[:, j].detach()
                r = gap_j.abs() / l2.measure(grad_j).clamp_min(tiny(grad_j))
                nearer = r < ratio
                ratio = torch.where(nearer, r, ratio)
                w = torch.where(bcast(nearer, x), grad_j, w)
                g = torch.where(nearer, gap_j, g)
        with torch.no_grad():
            # the boundary g(p) + w·(z − p) = 0, reached from p and from x
            d_point = l2_to_hyperplane(w, -g, lo - point, hi - point)
            d_orig = l2_to_hyperplane(w, -g - (w * (x - point)).flatten(1).sum(1), lo_x, hi_x)
            n_point, n_orig = l2.measure(d_point), l2.measure(d_orig)
            alpha = (n_point / (n_point + n_orig).clamp_min(tiny(n_point))).clamp(0, alpha_max)
            a = bcast(alpha, x)
            point = torch.clamp((1 - a) * (point + eta * d_point) + a * (x + eta * d_orig), lo, hi)
            adv = logit_margin(model(point), y) > 0     # strictly: a tie may still be classified as y
            n = l2.measure(point - x)
            better = adv & (n < best)
            best = torch.where(better, n, best)
            best_x = torch.where(bcast(better, x), point, best_x)
            point = torch.where(bcast(adv, x), x + beta * (point - x), point)
    return best_x, best


def fab_search(model: nn.Module, x: Tensor, y: Tensor, steps: int = 100, bounds: Bounds = (0.0, 1.0),
               classes: int | None = None) -> FABResult:
    """The FAB-style L2 attack with its full per-example outcome.

    Each step heads for the nearest linearized boundary among the
    ``classes`` runner-up classes at ``x`` (all other classes by default, as
    in the paper; fewer cost fewer backward passes). Misclassified examples
    are found at norm 0 (``x_adv = x``).
    """
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    check_count(steps, "steps", 1)
    with frozen(model):
        with torch.no_grad():
            logits = model(x)
        check_labels(logits, y)
        k = logits.shape[1] - 1 if classes is None else check_count(classes, "classes", 1)
        k = min(k, logits.shape[1] - 1)
        wrong = logit_margin(logits, y) >= 0 if logits.numel() else torch.zeros_like(y, dtype=torch.bool)
        if k == 0 or x.shape[0] == 0:
            x_adv, norm = x.clone(), torch.full_like(y, float("inf"), dtype=x.dtype)
        else:
            runners = logits.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
            x_adv, norm = projection_search(model, x, y, runners, steps, lo, hi)
    norm = torch.where(wrong, torch.zeros_like(norm), norm)
    x_adv = torch.where(bcast(wrong, x), x, x_adv)
    return FABResult(x_adv, norm, torch.isfinite(norm))


def fab(model: nn.Module, x: Tensor, y: Tensor, steps: int = 100, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """L2 minimal-norm attack: the closest adversarial point found (``x`` where none was)."""
    return fab_search(model, x, y, steps=steps, bounds=bounds).x_adv
