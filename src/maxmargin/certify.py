"""Certified margins: per-example LOWER bounds on the distance to the decision boundary.

Together with :func:`maxmargin.margin.estimate_margin` (an upper bound from an
attack) they sandwich the true margin::

    certified_margin(...) <= true margin <= estimate_margin(...)

A radius ``r`` is certified when a sound bound (:mod:`maxmargin.bounds`)
proves ``f_y − f_j > 0`` for every ``j ≠ y`` over the whole ``r``-ball
intersected with the input box; the largest such radius is found by
bisection on the bound. A proof at ``r`` covers every smaller ball, so each
returned value is a radius that was actually proven.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks._common import Bounds, check_count, check_inputs, check_labels, frozen
from .bounds import Region, Reuse, margin_lower_bounds, trace
from .linesearch import largest_proven
from .losses import logit_margin
from .norms import get_norm, per_example

# the default first, then the others from the tightest to the cheapest (the same as maxmargin.bounds.METHODS)
METHODS = ("crown", "alpha-crown", "crown-ibp", "ibp")

# the methods whose search starts from CROWN-IBP's radius, and how far above it they look
_STAGED = ("crown", "alpha-crown")
_GROWTH = 2.0


def certified_margin(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    method: str = "crown",
    eps_max: float | Tensor = 0.5,
    bounds: Bounds = (0.0, 1.0),
    search_steps: int = 12,
    batch_size: int = 50,
    progress: bool = False,
) -> Tensor:
    """Per-example certified radius in ``[0, eps_max]``: no point of that ball (inside the box) is misclassified.

    ``method`` (tightest and slowest first): ``"alpha-crown"`` (CROWN with
    the lower ReLU slopes optimized per example and margin), ``"crown"``
    (full CROWN: linear bounds for every layer), ``"crown-ibp"`` (CROWN for
    the margins over interval bounds of the layers where CROWN is costly) or
    ``"ibp"`` (interval bounds; cheap); each is never looser than IBP.
    ``search_steps`` bound
    evaluations per batch: one at ``eps_max``, the rest shrink ``[0, eps_max]``
    by secant steps on the bound, with a bisection whenever one end moved twice
    running (exact on linear models after one step). ``"crown"`` and
    ``"alpha-crown"`` first run CROWN-IBP's search (their cost grows with the
    radius: every unstable neuron is a backward pass), then search with
    ``search_steps // 2`` evaluations of their own bound between CROWN-IBP's
    radius and twice it: never below CROWN-IBP's radius, never above twice it.
    Layer bounds found at a radius where the search failed tighten the later
    (smaller) radii, and α-CROWN's slopes carry over from one radius to the next. Misclassified
    examples, and those where nothing can be proven, get 0. A model with a
    layer the bounds cannot handle raises a ``ValueError`` naming it.
    """
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    nrm = get_norm(norm)
    if method not in METHODS:    # checked before any work; the bounds check again
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    cap = per_example(eps_max, x, "eps_max")
    if bool((cap <= 0).any()):
        raise ValueError("eps_max must be > 0")
    check_count(search_steps, "search_steps", 1)
    check_count(batch_size, "batch_size", 1)
    out = torch.zeros_like(cap)
    if x.shape[0] == 0:
        return out
    with frozen(model), torch.no_grad():
        nodes = trace(model, x)
        starts = range(0, x.shape[0], batch_size)
        for s in tqdm(starts, desc=f"certify ({method})", disable=not progress, leave=False):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            logits = model(xb)
            check_labels(logits, yb)
            lm = logit_margin(logits, yb)
            idx = (lm < 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            lg, yi = logits[idx], yb[idx]
            keep = torch.ones_like(lg, dtype=torch.bool).scatter_(1, yi[:, None], False)
            clean = (lg.gather(1, yi[:, None]) - lg)[keep].reshape(len(yi), -1)    # f_y − f_j, j ≠ y ascending
            out[s + idx] = _bisect(nodes, xb[idx], yi, clean, lg.abs().amax(1), cap[s + idx], nrm, lo, hi,
                                   method, search_steps)
    return out


def _bisect(nodes, x: Tensor, y: Tensor, clean: Tensor, scale: Tensor, cap: Tensor, nrm, lo: float, hi: float,
            method: str, steps: int) -> Tensor:
    """Largest proven radius in ``[0, cap]`` from ``steps`` bound evaluations.

    ``L_j(r)``, the lower bound of ``f_y − f_j`` over the ``r``-ball, falls from
    the clean value ``L_j(0)`` as ``r`` grows; ``r`` is proven where every
    ``L_j(r) > 0``. The search is :func:`maxmargin.linesearch.largest_proven`:
    a secant step per class ``j`` (the smallest root), bisecting whenever one
    end of the bracket has moved twice in a row.
    """
    # A bound within rounding of 0 proves nothing: the sums behind it carry
    # float error of a few ulps of the logits' size, so demand a clear margin.
    slack = (64 * torch.finfo(x.dtype).eps * (1 + scale))[:, None]

    def bound_with(how: str, reuse: Reuse | None = None) -> Callable[[Tensor], Tensor]:
        def bound(r: Tensor) -> Tensor:
            low = margin_lower_bounds(nodes, Region(x, r, nrm, lo, hi), y, how, reuse) - slack
            if reuse is not None:
                # where r is not proven it becomes the bracket's upper end: every later radius is smaller
                reuse.keep(low.amin(1) <= 0)
            return low
        return bound

    if method not in _STAGED:
        return largest_proven(bound_with(method, Reuse()), clean - slack, cap, steps)
    # Full CROWN at a radius far beyond the answer finds nearly every neuron unstable, a backward row for
    # each: its cost grows with the radius. So CROWN-IBP's search (cheap) comes first; its radius is
    # proven, and the tighter bound searches above it, up to _GROWTH times it (cap / _GROWTH² where
    # CROWN-IBP proved nothing), with half the steps: the bracket starts that much narrower.
    start = largest_proven(bound_with("crown-ibp", Reuse()), clean - slack, cap, steps)
    top = torch.minimum(cap, torch.where(start > 0, _GROWTH * start, cap / _GROWTH ** 2))
    return largest_proven(bound_with(method, Reuse()), bound_with("crown-ibp")(start), top,
                          max(1, steps // 2), start=torch.minimum(start, top))
