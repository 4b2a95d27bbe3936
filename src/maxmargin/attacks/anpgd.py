"""Adaptive-Norm PGD (AN-PGD): the MMA paper's approximate shortest successful perturbation.

PGD at a per-example radius ``eps_init`` picks a direction ``u``; a batched
search along ``x + η·u`` then finds where the criterion (SLM by default)
crosses zero. Two brackets are supported:

* official code (``eps_inc=None``): search ``η ∈ [0, eps_max]``;
* preprint Algorithm 1 (``eps_inc`` given): ``[0, eps_init]`` when PGD
  succeeded, ``[eps_init, min(eps_init + eps_inc, eps_max)]`` when it failed,
  and with ``refine=True`` a second PGD at the radius found.

The search runs under ``torch.no_grad`` in eval mode; one PGD and one search
serve the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses import LossFn, get_loss
from ..norms import Norm, bcast, get_norm, per_example
from ._common import Bounds, check_count, check_inputs, check_labels, frozen
from .pgd import pgd_steps


@dataclass
class ANPGDResult:
    """Per-example outcome of AN-PGD.

    ``eps`` is the norm of ``x_adv − x`` as returned; ``found`` says whether
    ``x_adv`` was verified to reach the criterion (always true for examples
    that already did at ``x``, which come back unchanged with ``eps = 0``).
    """

    x_adv: Tensor
    eps: Tensor
    found: Tensor
    clean_logits: Tensor


def line_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    u: Tensor,
    lo: Tensor,
    hi: Tensor,
    found: Tensor,
    crit: LossFn,
    steps: int,
    box: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Bisect ``η`` on ``crit(x + η·u) ≥ 0`` between ``lo`` (not adversarial) and ``hi``.

    Returns the final ``hi`` and whether an adversarial point was ever seen
    (``found`` on entry says whether ``hi`` is known to be adversarial).
    """
    found = found.clone()
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            adv = crit(model(torch.clamp(x + bcast(mid, x) * u, *box)), y) >= 0
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
            found |= adv
    return hi, found


def anpgd_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str | Norm = "linf",
    eps_init: float | Tensor = 0.1,
    eps_max: float | Tensor = 0.4725,
    steps: int = 40,
    search_steps: int = 10,
    eps_inc: float | None = None,
    refine: bool = False,
    bounds: Bounds = (0.0, 1.0),
    random_init: bool = True,
    step_size: float | Tensor | None = None,
    criterion: str = "slm",
) -> ANPGDResult:
    """AN-PGD with the full per-example outcome; :func:`anpgd` is the public short form.

    ``criterion`` is the loss whose zero crossing is searched: ``"slm"`` (the
    paper, for training) or ``"lm"`` (the true decision boundary, for margin
    estimation). Examples at or past the crossing at ``x`` are not attacked,
    nor are those with ``eps_max = 0``; ``eps_init`` is capped at ``eps_max``
    so every output lies inside the ``eps_max`` ball.
    """
    x, y, lo_box, hi_box = check_inputs(x, y, bounds)
    nrm = get_norm(norm)
    crit = get_loss(criterion)
    e0 = per_example(eps_init, x, "eps_init")
    emax = per_example(eps_max, x, "eps_max")
    check_count(steps, "steps", 0)
    check_count(search_steps, "search_steps", 0)
    if eps_inc is not None and not float(eps_inc) >= 0:
        raise ValueError(f"eps_inc must be >= 0 or None, got {eps_inc!r}")
    box = (lo_box, hi_box)

    with frozen(model):
        with torch.no_grad():
            clean_logits = model(x)
        check_labels(clean_logits, y)
        x_adv = x.clone()
        eps_out = torch.zeros_like(e0)
        c0 = crit(clean_logits, y)
        found_out = c0 >= 0
        idx = ((c0 < 0) & (emax > 0)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return ANPGDResult(x_adv, eps_out, found_out, clean_logits)
        xs, ys, emaxs = x[idx], y[idx], emax[idx]
        e0s = torch.minimum(e0[idx], emaxs)
        if bool((e0s <= 0).any()):
            raise ValueError("eps_init must be > 0 for examples that are attacked")
        step = 2.5 * e0s / max(steps, 1) if step_size is None else per_example(step_size, x, "step_size")[idx]

        xa = pgd_steps(model, xs, ys, nrm, e0s, steps, step, crit, random_init, lo_box, hi_box)
        u = (xa - xs) / bcast(e0s, xs)

        if eps_inc is None:
            lo = torch.zeros_like(e0s)
            hi = emaxs
            known = torch.zeros_like(e0s, dtype=torch.bool)
        else:
            with torch.no_grad():
                hit = crit(model(xa), ys) >= 0
            lo = torch.where(hit, torch.zeros_like(e0s), e0s)
            hi = torch.where(hit, e0s, torch.minimum(e0s + float(eps_inc), emaxs))
            known = hit
        eta, found = line_search(model, xs, ys, u, lo, hi, known, crit, search_steps, box)
        xa = torch.clamp(xs + bcast(eta, xs) * u, *box)

        if refine:
            step2 = 2.5 * eta / max(steps, 1)
            xa = pgd_steps(model, xs, ys, nrm, eta, steps, step2, crit, random_init, lo_box, hi_box)

        x_adv[idx] = xa
        eps_out[idx] = nrm.measure(xa - xs)
        found_out[idx] = found
    return ANPGDResult(x_adv, eps_out, found_out, clean_logits)


def anpgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps_init: float | Tensor = 0.1,
    eps_max: float | Tensor = 0.4725,
    steps: int = 40,
    search_steps: int = 10,
    eps_inc: float | None = None,
    refine: bool = False,
    bounds: Bounds = (0.0, 1.0),
    random_init: bool = True,
) -> tuple[Tensor, Tensor]:
    """AN-PGD on the soft logit margin; returns ``(x_adv, eps)``.

    ``eps`` is the per-example norm of ``x_adv − x`` as returned. Examples
    whose SLM is already ``≥ 0`` (all misclassified ones among them) come back
    unchanged with ``eps = 0``. Where no crossing is found the point at the
    bracket's top is returned.
    """
    r = anpgd_search(model, x, y, norm=norm, eps_init=eps_init, eps_max=eps_max, steps=steps,
                     search_steps=search_steps, eps_inc=eps_inc, refine=refine, bounds=bounds,
                     random_init=random_init)
    return r.x_adv, r.eps
