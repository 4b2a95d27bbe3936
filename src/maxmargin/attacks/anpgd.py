"""Adaptive-Norm PGD (AN-PGD): the MMA paper's approximate shortest successful perturbation.

PGD at a per-example radius ``eps_init`` picks a direction ``u``; a batched
search along ``x + η·u`` then finds where the criterion (SLM by default)
crosses zero. Two brackets are supported:

* official code (``eps_inc=None``): search ``η ∈ [0, eps_max]``;
* preprint Algorithm 1 (``eps_inc`` given): ``[0, eps_init]`` when PGD
  succeeded, ``[eps_init, min(eps_init + eps_inc, eps_max)]`` when it failed,
  and with ``refine=True`` a second PGD at the radius found.

The search runs under ``torch.no_grad`` in eval mode; one PGD and one search
serve the whole batch. The searches themselves (bisection and secant) are
:mod:`maxmargin.linesearch`'s; this module evaluates them along the ray.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import linesearch
from ..linesearch import Bracket
from ..losses import LossFn, Objective, get_loss, get_objective
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


# Half-width of the secant search's first pair on the official bracket, as a share of eps_init:
# on LeNet5 0.02 left more rows outside their first pair and 0.1 more inside a wide one.
FIRST_SPREAD = 0.05


def _at(model: nn.Module, x: Tensor, y: Tensor, u: Tensor, eta: Tensor, crit: LossFn,
        box: tuple[float, float]) -> Tensor:
    return crit(model(torch.clamp(x + bcast(eta, x) * u, *box)), y)


def ray(model: nn.Module, x: Tensor, y: Tensor, u: Tensor, crit: LossFn,
        box: tuple[float, float]) -> linesearch.Evaluate:
    """``crit`` at ``clamp(x + η·u)`` as a function of the step, for :mod:`maxmargin.linesearch`."""
    def evaluate(eta: Tensor, rows: Tensor | None) -> Tensor:
        if rows is None:
            return _at(model, x, y, u, eta, crit, box)
        return _at(model, x[rows], y[rows], u[rows], eta, crit, box)
    return evaluate


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
    (``found`` on entry says whether ``hi`` is known to be adversarial). See
    :func:`maxmargin.linesearch.bisect`.
    """
    return linesearch.bisect(ray(model, x, y, u, crit, box), lo, hi, found, steps)


def secant_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    u: Tensor,
    lo: Tensor,
    hi: Tensor,
    f_lo: Tensor,
    f_hi: Tensor,
    known: Tensor,
    crit: LossFn,
    tol: Tensor,
    box: tuple[float, float],
    max_passes: int,
    through: tuple[Tensor, Tensor] | None = None,
    first_half: Tensor | None = None,
    spread: float = 0.05,
) -> tuple[Tensor, Tensor, int]:
    """The secant search of :func:`maxmargin.linesearch.secant` on ``crit(x + η·u)``, ``η ∈ [lo, hi]``.

    Needs ``f_lo < 0``; ``known`` says where ``hi`` is verified (``f_hi ≥ 0``).
    On the batch sizes of training a pass costs mostly its fixed part: two
    points per pass reach the bisection's resolution in about 3 passes where
    one point per pass took 10 to 13 (``benchmarks/RESULTS.md``). Returns
    ``hi``, ``found`` and the number of example-evaluations spent.
    """
    return linesearch.secant(ray(model, x, y, u, crit, box), Bracket(lo, hi, f_lo, f_hi, known), tol, max_passes,
                             through=through, first_half=first_half, spread=spread)


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
    estimation). The PGD ascends the objective ``attack_loss`` (default: the
    criterion; any untargeted name of :func:`maxmargin.losses.get_objective`,
    ``"kl"`` included: it reads the clean logits); the official trainer's
    validation margin runs PGD on SLM and bisects on LM. Examples at or past the crossing at ``x`` are not attacked,
    nor are those with ``eps_max = 0``; ``eps_init`` is capped at ``eps_max``
    so every output lies inside the ``eps_max`` ball.

    ``search="bisect"`` halves the bracket ``search_steps`` times (the paper);
    ``"secant"`` interpolates on the criterion's values and stops each example
    at the same resolution, evaluating two points per example per pass
    (see :func:`secant_search`): about 3 passes instead of 10. On the
    official bracket ``[0, eps_max]`` it spends no pass at ``eps_init``: the
    criterion at PGD's last iterate, one step from the point it returns,
    places the first pair (the returned point is always verified, the
    estimate only decides where to look). ``clean_logits``, when the caller
    has them, save the clean forward pass.
    """
    x, y, lo_box, hi_box = check_inputs(x, y, bounds, model)
    nrm = get_norm(norm)
    crit = get_loss(criterion)
    crit_obj = get_objective(criterion)      # the criterion as an objective: the refining PGD ascends it
    pgd_loss = crit_obj if attack_loss is None else get_objective(attack_loss)
    if pgd_loss.targeted:
        raise ValueError(f"attack_loss must be untargeted: AN-PGD's y are the true labels, got {attack_loss!r}")
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
        xs, ys, emaxs, cs = x[idx], y[idx], emax[idx], clean_logits[idx]
        e0s = torch.minimum(e0[idx], emaxs)
        if bool((e0s <= 0).any()):
            raise ValueError("eps_init must be > 0 for examples that are attacked")
        step = 2.5 * e0s / max(steps, 1) if step_size is None else per_example(step_size, x, "step_size")[idx]

        if eps_inc is None and search == "bisect":
            # the paper's form: a fixed-shape PGD + bisection, one CUDA graph when graphs are on
            body = _pgd_then_bisect(model, nrm, pgd_loss, crit, box, search_steps)
            args = (xs, ys, pgd_start(xs, nrm, e0s, random_init, lo_box, hi_box), e0s, step, emaxs, cs)

            def first(t: Tensor) -> None:
                check_labels(t, ys)

            tag = ("anpgd-bisect", nrm.name, pgd_loss, crit, box, search_steps)
            xa, eta, found = (graphs.graphed(model, tag, body, args, steps, first) if graphs.usable(xs)
                              else body(list(args), steps, first))
        else:
            xa, eta, found = _pgd_then_secant(model, xs, ys, cs, c0[idx], nrm, e0s, emaxs, steps, step, pgd_loss,
                                              crit, random_init, box, eps_inc, search, search_steps)

        if refine:
            step2 = 2.5 * eta / max(steps, 1)
            xa = pgd_steps(model, xs, ys, nrm, eta, steps, step2, crit_obj, random_init, lo_box, hi_box, cs)

        x_adv[idx] = xa
        eps_out[idx] = nrm.measure(xa - xs)
        found_out[idx] = found
    return ANPGDResult(x_adv, eps_out, found_out, clean_logits)


def _pgd_then_bisect(model: nn.Module, nrm: Norm, pgd_loss: Objective, crit: LossFn, box: tuple[float, float],
                     search_steps: int):
    """PGD at ``eps_init`` then the bisection on ``[0, eps_max]`` along its direction: no host syncs."""
    def body(b: list[Tensor], steps: int, first=None) -> tuple[Tensor, Tensor, Tensor]:
        xs, ys, x0, e0s, step, emaxs, clean = b
        xa = pgd_loop(model, xs, ys, x0.clone(), nrm, e0s, steps, step, pgd_loss, box[0], box[1], first,
                      clean_logits=clean)
        u = (xa - xs) / bcast(e0s, xs)
        eta, found = line_search(model, xs, ys, u, torch.zeros_like(e0s), emaxs,
                                 torch.zeros_like(e0s, dtype=torch.bool), crit, search_steps, box)
        return torch.clamp(xs + bcast(eta, xs) * u, *box), eta, found
    return body


def _pgd_and_value(model: nn.Module, nrm: Norm, pgd_loss: Objective, crit: LossFn, box: tuple[float, float]):
    """PGD at ``eps_init``, and ``crit`` at its last iterate (one step from the point returned): no host syncs."""
    def body(b: list[Tensor], steps: int, first=None) -> tuple[Tensor, Tensor]:
        xs, ys, x0, e0s, step, clean = b
        seen: list[Tensor] = []
        xa = pgd_loop(model, xs, ys, x0.clone(), nrm, e0s, steps, step, pgd_loss, box[0], box[1], first,
                      lambda logits: seen.append(crit(logits, ys)), clean_logits=clean)
        if not seen:    # no PGD step: the start itself
            with torch.no_grad():
                seen.append(crit(model(xa), ys))
        return xa, seen[0]
    return body


def _pgd_then_secant(model: nn.Module, xs: Tensor, ys: Tensor, cs: Tensor, f0: Tensor, nrm: Norm, e0s: Tensor,
                     emaxs: Tensor, steps: int, step: Tensor, pgd_loss: Objective, crit: LossFn, random_init: bool,
                     box: tuple[float, float], eps_inc: float | None, search: str,
                     search_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """PGD, then the secant search, or the preprint's bracket (bisected or secant); the searches run eagerly."""
    lo_box, hi_box = box
    if eps_inc is None:
        # The official bracket [0, eps_max] needs nothing verified at eps_init: PGD's last value,
        # one step from its returned point, places the first pair, and f(eps_init) costs no pass.
        body = _pgd_and_value(model, nrm, pgd_loss, crit, box)
        args = (xs, ys, pgd_start(xs, nrm, e0s, random_init, lo_box, hi_box), e0s, step, cs)

        def first(t: Tensor) -> None:
            check_labels(t, ys)

        tag = ("pgd-value", nrm.name, pgd_loss, crit, box)
        xa, f_near = (graphs.graphed(model, tag, body, args, steps, first) if graphs.usable(xs)
                      else body(list(args), steps, first))
        u = (xa - xs) / bcast(e0s, xs)
        zero = torch.zeros_like(e0s)
        eta, found, _ = secant_search(model, xs, ys, u, zero, emaxs, f0, f0, torch.zeros_like(f0, dtype=torch.bool),
                                      crit, emaxs / 2 ** search_steps, box, 2 * search_steps,
                                      through=(e0s, f_near), first_half=FIRST_SPREAD * e0s)
        return torch.clamp(xs + bcast(eta, xs) * u, *box), eta, found
    xa = pgd_steps(model, xs, ys, nrm, e0s, steps, step, pgd_loss, random_init, lo_box, hi_box, cs)
    u = (xa - xs) / bcast(e0s, xs)
    with torch.no_grad():
        f_e0 = crit(model(xa), ys)
    hit = f_e0 >= 0
    top = torch.minimum(e0s + float(eps_inc), emaxs)
    lo = torch.where(hit, torch.zeros_like(e0s), e0s)
    hi = torch.where(hit, e0s, top)
    known = hit
    if search == "bisect":
        eta, found = line_search(model, xs, ys, u, lo, hi, known, crit, search_steps, box)
    else:
        # hits: [0, eps_init] with both values known; misses: [eps_init, top], the crossing
        # extrapolated through (0, f(0)) and (eps_init, f(eps_init)) until a pair reaches it
        f_lo = torch.where(hit, f0, f_e0)
        eta, found, _ = secant_search(model, xs, ys, u, lo, hi, f_lo, f_e0, hit, crit, (hi - lo) / 2 ** search_steps,
                                      box, 2 * search_steps, through=(torch.zeros_like(e0s), f0))
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
