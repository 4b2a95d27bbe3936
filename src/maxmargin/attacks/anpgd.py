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
from . import graphs
from ._common import Bounds, check_count, check_inputs, check_labels, frozen
from .pgd import pgd_start, pgd_steps
from .steps import pgd_loop


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


def _at(model: nn.Module, x: Tensor, y: Tensor, u: Tensor, eta: Tensor, crit: LossFn,
        box: tuple[float, float]) -> Tensor:
    return crit(model(torch.clamp(x + bcast(eta, x) * u, *box)), y)


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
            adv = _at(model, x, y, u, mid, crit, box) >= 0
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
            found |= adv
    return hi, found


def secant_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    u: Tensor,
    lo: Tensor,
    hi: Tensor,
    f_lo: Tensor,
    f_hi: Tensor,
    crit: LossFn,
    tol: Tensor,
    box: tuple[float, float],
    max_evals: int,
) -> tuple[Tensor, Tensor, int]:
    """Illinois regula falsi on ``crit`` values, to the resolution ``steps`` bisections would reach.

    Needs ``f_lo < 0 ≤ f_hi`` (rows where ``f_hi < 0`` are returned unfound at
    ``hi``). Each row stops once its bracket is no wider than ``tol`` (pass
    the resolution the bisection would reach); only unfinished rows are
    evaluated, and a row whose bracket did not halve takes a bisection step
    next, so the bracket at least halves every two evaluations. Returns
    ``hi``, ``found`` and the number of example-evaluations spent.
    """
    found = f_hi >= 0
    lo, hi, f_lo, f_hi = lo.clone(), hi.clone(), f_lo.clone(), f_hi.clone()
    bisect_next = torch.zeros_like(found)
    last = torch.zeros_like(lo, dtype=torch.int8)   # +1: hi moved last, -1: lo moved last
    spent = 0
    with torch.no_grad():
        for _ in range(max_evals):
            act = (found & (hi - lo > tol)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            a_lo, a_hi, a_flo, a_fhi = lo[act], hi[act], f_lo[act], f_hi[act]
            width = a_hi - a_lo
            interp = a_lo - a_flo * width / (a_fhi - a_flo)
            # An estimate within the tolerance of an end is nudged to just under the tolerance
            # from that end: if the root is really there, this one evaluation closes the bracket.
            a_tol = 0.99 * tol[act]
            interp = torch.where(a_hi - interp < a_tol, a_hi - a_tol, interp)
            interp = torch.where(interp - a_lo < a_tol, a_lo + a_tol, interp)
            eta = torch.where(bisect_next[act], (a_lo + a_hi) / 2, interp)
            f = _at(model, x[act], y[act], u[act], eta, crit, box)
            spent += act.numel()
            adv = f >= 0
            a_last = last[act]
            # Illinois: halve the value of an end that stayed put twice running
            a_flo = torch.where(adv & (a_last == 1), a_flo / 2, a_flo)
            a_fhi = torch.where(~adv & (a_last == -1), a_fhi / 2, a_fhi)
            lo[act] = torch.where(adv, a_lo, eta)
            f_lo[act] = torch.where(adv, a_flo, f)
            hi[act] = torch.where(adv, eta, a_hi)
            f_hi[act] = torch.where(adv, f, a_fhi)
            last[act] = torch.where(adv, 1, -1).to(torch.int8)
            bisect_next[act] = (hi[act] - lo[act]) > width / 2
    return hi, found, spent


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
    search: str = "bisect",
    clean_logits: Tensor | None = None,
    attack_loss: str | None = None,
) -> ANPGDResult:
    """AN-PGD with the full per-example outcome; :func:`anpgd` is the public short form.

    ``criterion`` is the loss whose zero crossing is searched: ``"slm"`` (the
    paper, for training) or ``"lm"`` (the true decision boundary, for margin
    estimation). The PGD ascends ``attack_loss`` (default: the criterion);
    the official trainer's validation margin runs PGD on SLM and bisects on
    LM. Examples at or past the crossing at ``x`` are not attacked,
    nor are those with ``eps_max = 0``; ``eps_init`` is capped at ``eps_max``
    so every output lies inside the ``eps_max`` ball.

    ``search="bisect"`` halves the bracket ``search_steps`` times (the paper);
    ``"secant"`` interpolates on the criterion's values at the bracket ends and
    stops each example at the same resolution, usually after far fewer
    forward passes (see :func:`secant_search`). ``clean_logits``, when the
    caller has them, save the clean forward pass.
    """
    x, y, lo_box, hi_box = check_inputs(x, y, bounds)
    nrm = get_norm(norm)
    crit = get_loss(criterion)
    pgd_loss = crit if attack_loss is None else get_loss(attack_loss)
    e0 = per_example(eps_init, x, "eps_init")
    emax = per_example(eps_max, x, "eps_max")
    check_count(steps, "steps", 0)
    check_count(search_steps, "search_steps", 0)
    if search not in ("bisect", "secant"):
        raise ValueError(f"search must be 'bisect' or 'secant', got {search!r}")
    if eps_inc is not None and not float(eps_inc) >= 0:
        raise ValueError(f"eps_inc must be >= 0 or None, got {eps_inc!r}")
    box = (lo_box, hi_box)

    with frozen(model):
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = model(x)
        clean_logits = clean_logits.detach()
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

        if eps_inc is None and search == "bisect":
            # the paper's form: a fixed-shape PGD + bisection, one CUDA graph when graphs are on
            body = _pgd_then_bisect(model, nrm, pgd_loss, crit, box, search_steps)
            args = (xs, ys, pgd_start(xs, nrm, e0s, random_init, lo_box, hi_box), e0s, step, emaxs)
            first = lambda t: check_labels(t, ys)   # noqa: E731
            tag = ("anpgd-bisect", nrm.name, pgd_loss, crit, box, search_steps)
            xa, eta, found = (graphs.graphed(model, tag, body, args, steps, first) if graphs.usable(xs)
                              else body(list(args), steps, first))
        else:
            xa, eta, found = _pgd_then_secant(model, xs, ys, c0[idx], nrm, e0s, emaxs, steps, step, pgd_loss,
                                              crit, random_init, box, eps_inc, search, search_steps)

        if refine:
            step2 = 2.5 * eta / max(steps, 1)
            xa = pgd_steps(model, xs, ys, nrm, eta, steps, step2, crit, random_init, lo_box, hi_box)

        x_adv[idx] = xa
        eps_out[idx] = nrm.measure(xa - xs)
        found_out[idx] = found
    return ANPGDResult(x_adv, eps_out, found_out, clean_logits)


def _pgd_then_bisect(model: nn.Module, nrm: Norm, pgd_loss: LossFn, crit: LossFn, box: tuple[float, float],
                     search_steps: int):
    """PGD at ``eps_init`` then the bisection on ``[0, eps_max]`` along its direction: no host syncs."""
    def body(b: list[Tensor], steps: int, first=None) -> tuple[Tensor, Tensor, Tensor]:
        xs, ys, x0, e0s, step, emaxs = b
        xa = pgd_loop(model, xs, ys, x0.clone(), nrm, e0s, steps, step, pgd_loss, box[0], box[1], first)
        u = (xa - xs) / bcast(e0s, xs)
        eta, found = line_search(model, xs, ys, u, torch.zeros_like(e0s), emaxs,
                                 torch.zeros_like(e0s, dtype=torch.bool), crit, search_steps, box)
        return torch.clamp(xs + bcast(eta, xs) * u, *box), eta, found
    return body


def _pgd_then_secant(model: nn.Module, xs: Tensor, ys: Tensor, f0: Tensor, nrm: Norm, e0s: Tensor, emaxs: Tensor,
                     steps: int, step: Tensor, pgd_loss: LossFn, crit: LossFn, random_init: bool,
                     box: tuple[float, float], eps_inc: float | None, search: str,
                     search_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """PGD, then the preprint's bracket (bisected) or the secant search; eager only (data-dependent shapes)."""
    lo_box, hi_box = box
    xa = pgd_steps(model, xs, ys, nrm, e0s, steps, step, pgd_loss, random_init, lo_box, hi_box)
    u = (xa - xs) / bcast(e0s, xs)
    with torch.no_grad():
        f_e0 = crit(model(xa), ys)
    hit = f_e0 >= 0
    top = emaxs if eps_inc is None else torch.minimum(e0s + float(eps_inc), emaxs)
    lo = torch.where(hit, torch.zeros_like(e0s), e0s)
    hi = torch.where(hit, e0s, top)
    known = hit
    if search == "bisect":
        eta, found = line_search(model, xs, ys, u, lo, hi, known, crit, search_steps, box)
    else:
        f_lo = torch.where(hit, f0, f_e0)
        f_hi = f_e0.clone()
        miss = (~hit).nonzero().squeeze(1)
        if miss.numel():
            # Where PGD failed, probe 10 % past the root of the line through (0, f(0)) and
            # (eps_init, f(eps_init)): SLM is close to convex along the ray, so the probe is
            # usually adversarial and closes a tight bracket at once.
            slope = (f_e0[miss] - f0[miss]) / e0s[miss]
            root = e0s[miss] - f_e0[miss] / slope.clamp_min(1e-12)
            probe = torch.where(slope > 0, 1.1 * root, hi[miss])
            probe = torch.minimum(torch.maximum(probe, e0s[miss]), hi[miss])
            with torch.no_grad():
                f_p = _at(model, xs[miss], ys[miss], u[miss], probe, crit, box)
            past = f_p >= 0
            lo[miss] = torch.where(past, lo[miss], probe)
            f_lo[miss] = torch.where(past, f_lo[miss], f_p)
            f_hi[miss] = f_p
            short = miss[~past & (probe < hi[miss])]
            hi[miss] = torch.where(past, probe, hi[miss])
            if short.numel():
                with torch.no_grad():
                    f_hi[short] = _at(model, xs[short], ys[short], u[short], hi[short], crit, box)
        span = emaxs if eps_inc is None else hi - lo
        eta, found, _ = secant_search(model, xs, ys, u, lo, hi, f_lo, f_hi, crit,
                                      span / 2 ** search_steps, box, 2 * search_steps)
    return torch.clamp(xs + bcast(eta, xs) * u, *box), eta, found


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
    search: str = "bisect",
) -> tuple[Tensor, Tensor]:
    """AN-PGD on the soft logit margin; returns ``(x_adv, eps)``.

    ``eps`` is the per-example norm of ``x_adv − x`` as returned. Examples
    whose SLM is already ``≥ 0`` (all misclassified ones among them) come back
    unchanged with ``eps = 0``. Where no crossing is found the point at the
    bracket's top is returned. ``search="secant"`` reaches the bisection's
    resolution with fewer forward passes (see :func:`anpgd_search`).
    """
    r = anpgd_search(model, x, y, norm=norm, eps_init=eps_init, eps_max=eps_max, steps=steps,
                     search_steps=search_steps, eps_inc=eps_inc, refine=refine, bounds=bounds,
                     random_init=random_init, search=search)
    return r.x_adv, r.eps
