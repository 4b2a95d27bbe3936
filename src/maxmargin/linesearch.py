"""One batched line search, for the three places that look along a ray for a radius.

Each looks, per example, along a ray ``η ≥ 0`` for where a quantity turns
from *safe* to *unsafe*, and keeps a :class:`Bracket` ``[lo, hi]``: ``lo``
is the largest step known safe, ``hi`` the smallest step known (or, before it
is evaluated, assumed) unsafe. The function behind the search is an
argument, so the module knows nothing of models, rays or bounds:

1. **AN-PGD's bisection** (:func:`bisect`; :func:`maxmargin.attacks.anpgd.anpgd`,
   :func:`maxmargin.margin.estimate_margin`): unsafe means the criterion at
   ``x + η·u`` is ``≥ 0`` (adversarial). It halves every bracket a fixed number
   of times with fixed shapes and no host syncs, so
   :mod:`maxmargin.attacks.graphs` captures it together with its PGD in one
   CUDA graph. The answer is ``hi``: the smallest adversarial radius seen.
2. **AN-PGD's secant search** (:func:`secant`): the same bracket, shrunk by
   regula falsi on the criterion's values, two points per example per pass;
   a row leaves once its bracket is within the bisection's resolution, so
   passes work on shrinking subsets (it runs eagerly). The answer is ``hi``.
3. **The certified radius** (:func:`largest_proven`; :mod:`maxmargin.certify`):
   unsafe means some class's lower bound ``L_j(r)`` of ``f_y − f_j`` over the
   ``r``-ball is not ``> 0``. The bracket shrinks by a secant step per class
   (the smallest root). The answer is ``lo``: the largest radius proven.

What they share is the bracket (its ends, the values there, whether ``hi``
was verified) and how evaluated points move it (:meth:`Bracket.move`,
:meth:`Bracket.narrow`), and the guarded step (:func:`guarded`): an
interpolated point is kept inside the bracket, and a row that keeps failing
to shrink its bracket takes the midpoint instead, so no search ever does
worse than a bisection for long. What counts as failing differs on purpose:
the secant search counts passes that did not halve the bracket (its pairs of
points can move both ends at once), the certified radius counts steps that
moved the same end (one point per step, and ``L_j`` is exact on linear
models after one step).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

# Evaluates the searched function: ``evaluate(eta, rows)`` is the value at step ``eta[i]`` of example
# ``rows[i]`` (``rows=None``: example ``i``); the values have one row per step.
Evaluate = Callable[[Tensor, "Tensor | None"], Tensor]


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A per-row mask ``[n]`` viewed so that it broadcasts against per-row values ``like`` (``[n]`` or ``[n, C]``)."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class Bracket:
    """Per-example bracket ``[lo, hi]`` of a line search: ``lo`` safe, ``hi`` unsafe or not yet verified.

    ``f_lo``/``f_hi`` are the searched function's values at the ends (any
    trailing shape, e.g. one value per class), ``None`` where a search does
    not interpolate; ``known`` says where ``hi`` was verified unsafe, ``None``
    where a search does not track it. :meth:`move` and :meth:`narrow` replace
    the tensors rather than write into them, so a bracket built on a caller's
    tensors leaves them alone; :meth:`put` writes into them.
    """

    lo: Tensor
    hi: Tensor
    f_lo: Tensor | None = None
    f_hi: Tensor | None = None
    known: Tensor | None = None

    def midpoint(self) -> Tensor:
        """The bisection's next point, ``(lo + hi) / 2``."""
        return (self.lo + self.hi) / 2

    def move(self, t: Tensor, unsafe: Tensor, f: Tensor | None = None) -> None:
        """Move ``hi`` to ``t`` where ``t`` was found ``unsafe``, ``lo`` to ``t`` elsewhere (one point per row).

        ``t`` must lie inside the bracket; ``f`` are the values at ``t``.
        """
        self.hi = torch.where(unsafe, t, self.hi)
        self.lo = torch.where(unsafe, self.lo, t)
        if self.known is not None:
            self.known = self.known | unsafe
        if f is not None:
            assert self.f_lo is not None and self.f_hi is not None, "values at t need the values at the ends"
            self.f_hi = torch.where(_rows(unsafe, f), f, self.f_hi)
            self.f_lo = torch.where(_rows(unsafe, f), self.f_lo, f)

    def narrow(self, pts: Tensor, unsafe: Tensor, f: Tensor) -> None:
        """Shrink the bracket by several points per row (``pts``, ``unsafe``, ``f``: shape ``[n, k]``).

        The new ``hi`` is the nearest unsafe point, if it lies below ``hi``;
        the new ``lo`` the farthest safe point below that, if it lies above
        ``lo``. With one point per row this is :meth:`move`, less the points
        that do not lie inside the bracket.
        """
        assert self.f_lo is not None and self.f_hi is not None and self.known is not None, \
            "narrow needs f_lo, f_hi and known"
        up = torch.where(unsafe, pts, torch.full_like(pts, float("inf"))).min(1)
        down = torch.where(~unsafe & (pts < up.values[:, None]), pts, torch.full_like(pts, float("-inf"))).max(1)
        move_hi = up.values < self.hi
        move_lo = down.values > self.lo
        self.hi = torch.where(move_hi, up.values, self.hi)
        self.f_hi = torch.where(move_hi, f.gather(1, up.indices[:, None]).squeeze(1), self.f_hi)
        self.known = self.known | move_hi
        self.lo = torch.where(move_lo, down.values, self.lo)
        self.f_lo = torch.where(move_lo, f.gather(1, down.indices[:, None]).squeeze(1), self.f_lo)

    def take(self, idx: Tensor) -> Bracket:
        """The bracket of rows ``idx`` (copies)."""
        rows: dict[str, Any] = {k: None if v is None else v[idx] for k, v in vars(self).items()}
        return replace(self, **rows)

    def put(self, idx: Tensor, sub: Bracket) -> None:
        """Write the bracket ``sub`` of rows ``idx`` back (the inverse of :meth:`take`)."""
        for k, v in vars(self).items():
            if v is not None:
                v[idx] = getattr(sub, k)


def guarded(candidate: Tensor, lo: Tensor, hi: Tensor, bisect: Tensor) -> Tensor:
    """The next point: ``candidate`` clamped into ``[lo, hi]``, or the midpoint where ``bisect`` is set.

    A row whose interpolation keeps failing to shrink its bracket (or gives
    no finite point) bisects: interpolation is fast on smooth stretches and
    can crawl at a kink, where the midpoint still halves the bracket.
    """
    return torch.where(bisect, (lo + hi) / 2, torch.minimum(torch.maximum(candidate, lo), hi))


def bisect(evaluate: Evaluate, lo: Tensor, hi: Tensor, known: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Halve each bracket ``[lo, hi]`` ``steps`` times; a point is unsafe where ``evaluate`` is ``≥ 0``.

    ``lo`` must be safe; ``known`` says where ``hi`` is verified unsafe.
    Returns the final ``hi`` and whether an unsafe point was ever seen (or
    ``hi`` was known unsafe). Fixed shapes and no host syncs: CUDA graphs can
    capture it.
    """
    br = Bracket(lo, hi, known=known.clone())
    with torch.no_grad():
        for _ in range(steps):
            mid = br.midpoint()
            br.move(mid, evaluate(mid, None) >= 0)
    assert br.known is not None  # set above; move keeps it a tensor
    return br.hi, br.known


def secant(
    evaluate: Evaluate,
    bracket: Bracket,
    tol: Tensor,
    max_passes: int,
    through: tuple[Tensor, Tensor] | None = None,
    first_half: Tensor | None = None,
    spread: float = 0.05,
) -> tuple[Tensor, Tensor, int]:
    """Regula falsi on ``evaluate``'s values, two points per example per pass, to the resolution ``tol``.

    A point is unsafe where ``evaluate`` is ``≥ 0``; the bracket needs
    ``f_lo < 0`` and ``known`` (``f_hi`` is read only where ``known``). Where
    ``hi`` is unverified, the crossing is extrapolated along the line through
    ``(lo, f_lo)`` and ``through = (η, value)`` (default: ``η = 0`` with value
    ``f_lo``; later the last two points found short) until a point reaches
    it or ``hi`` itself is found short. The value at ``through`` may be an
    estimate: it only places the first points. A row stops once
    ``hi − lo ≤ tol``.

    Each pass evaluates, for every unfinished row, a pair of points around the
    interpolated crossing: ``±first_half`` (default ``spread·width``) on the
    first pass, ``±tol/2`` after it (inside the first pair's narrow bracket
    the interpolation is closer than that, so the second pair usually closes
    the row). A row whose bracket did not halve next takes its pair at the
    chord's estimate and at the one from the line through its last pair (on a
    convex or concave stretch they fall on either side of the crossing), or a
    ``±spread·width`` pair where that line says nothing; after two such passes
    running, a pair at its midpoint. Returns ``hi``, ``known`` and the number
    of evaluations spent.
    """
    assert bracket.f_lo is not None and bracket.f_hi is not None and bracket.known is not None, \
        "secant needs f_lo, f_hi and known"
    br = Bracket(bracket.lo.clone(), bracket.hi.clone(), bracket.f_lo.clone(), bracket.f_hi.clone(),
                 bracket.known.clone())
    assert br.f_lo is not None and br.known is not None  # for mypy: set just above, and put writes into them
    lo, f_lo = br.lo, br.f_lo
    # where hi is unverified: the line through (s_eta, s_f) and (lo, f_lo) is extrapolated
    s_eta, s_f = (torch.zeros_like(lo), f_lo.clone()) if through is None else (through[0].clone(), through[1].clone())
    stalls = torch.zeros_like(lo, dtype=torch.int8)    # passes running that did not halve the bracket
    last = torch.stack([lo, br.hi], 1)                  # the last pair evaluated and its values
    f_last = torch.stack([f_lo, f_lo], 1)              # (read only after a row's first pass)
    spent = 0
    with torch.no_grad():
        for k in range(max_passes):
            act = torch.where(br.known, br.hi - br.lo > tol, br.lo < br.hi).nonzero().squeeze(1)
            n = act.numel()
            if n == 0:
                break
            a = br.take(act)
            a_lo, a_hi, a_flo, a_fhi, a_known = a.lo, a.hi, a.f_lo, a.f_hi, a.known
            assert a_flo is not None and a_fhi is not None and a_known is not None  # for mypy: rows of br's
            a_tol, width = tol[act], a_hi - a_lo
            inside = a_lo - a_flo * width / (a_fhi - a_flo)
            slope = (a_flo - s_f[act]) / (a_lo - s_eta[act])
            beyond = torch.where(slope > 0, a_lo - a_flo / slope, a_hi)
            r = torch.where(a_known, inside, beyond)
            # a row that stalled twice running (or has no finite estimate) is bisected
            r = guarded(r, a_lo, a_hi, ~torch.isfinite(r) | (stalls[act] >= 2))
            wide = torch.maximum(spread * width, 0.495 * a_tol)
            if k == 0 and first_half is not None:
                wide = torch.maximum(first_half[act], 0.495 * a_tol)
            half = torch.where((stalls[act] > 0) | (k == 0), wide, 0.495 * a_tol)
            p2 = torch.minimum(r + half, a_hi)
            p1 = torch.maximum(r - half, a_lo)
            # A pair that fell on one side of the crossing leaves the chord's estimate on that side
            # of a convex or concave stretch; the line through that pair lands on the other side.
            # Next time the pair goes at those two estimates (or around them, when they agree).
            (la, lb), (fa, fb) = last[act].unbind(1), f_last[act].unbind(1)
            local = lb - fb * (lb - la) / (fb - fa)
            straddle = (stalls[act] == 1) & a_known & torch.isfinite(local) & (local > a_lo) & (local < a_hi)
            s1, s2 = torch.minimum(inside, local), torch.maximum(inside, local)
            agree = s2 - s1 < 0.99 * a_tol
            mid = (s1 + s2) / 2
            s1 = torch.where(agree, mid - 0.495 * a_tol, s1)
            s2 = torch.where(agree, mid + 0.495 * a_tol, s2)
            p1 = torch.where(straddle, torch.maximum(s1, a_lo), p1)
            p2 = torch.where(straddle, torch.minimum(s2, a_hi), p2)
            # a point pushed onto an end is of no use there: it goes halfway to the other one
            p1 = torch.where(p1 <= a_lo, (a_lo + p2) / 2, p1)
            # where hi is unverified, a top point within tol of it is taken at hi: that settles the row
            p2 = torch.where(~a_known & (a_hi - p2 <= a_tol), a_hi, p2)
            p2 = torch.where(a_known & (p2 >= a_hi), (p1 + a_hi) / 2, p2)
            pts = torch.stack([p1, p2], 1)
            f = evaluate(pts.reshape(-1), act.repeat_interleave(2)).reshape(n, 2)
            spent += 2 * n
            last[act], f_last[act] = pts, f
            adv = f >= 0
            short = ~adv.any(1) & ~a_known
            s_eta[act] = torch.where(short, p1, s_eta[act])
            s_f[act] = torch.where(short, f[:, 0], s_f[act])
            a.narrow(pts, adv, f)
            # an unverified row whose hi was evaluated short has nothing left to search
            a.lo = torch.where(short & (p2 >= a_hi), a_hi, a.lo)
            br.put(act, a)
            halved = a.hi - a.lo <= width / 2
            stalls[act] = torch.where(halved, 0, stalls[act] + 1).to(torch.int8)
    return br.hi, br.known, spent


def largest_proven(bound: Callable[[Tensor], Tensor], f0: Tensor, cap: Tensor, steps: int,
                   start: Tensor | None = None) -> Tensor:
    """Largest radius in ``[0, cap]`` proven by ``steps`` evaluations of ``bound``.

    ``start``: a radius already proven (by a cheaper bound) below ``cap``, with
    ``f0`` the values there; the bracket starts at ``[start, cap]``.

    ``bound(r)`` gives per-class lower bounds ``L_j(r)`` (shape ``[B, C]``)
    that fall from their values at ``r = 0``, ``f0``, as ``r`` grows; ``r``
    is proven where every ``L_j(r) > 0``. The first evaluation is at ``cap``;
    after it the bracket [proven, not proven] shrinks by a secant step per
    class ``j``, taking the smallest root: exact in one step where each
    ``L_j`` is linear in ``r`` (linear models), where a secant on
    ``min_j L_j`` would crawl along its kinks. Whenever one end has moved
    twice in a row the next step bisects, so the bracket still halves every
    third step. A proof at ``r`` covers every smaller radius, so the value
    returned was proven (0 where nothing was, ``cap`` where ``cap`` was).
    """
    with torch.no_grad():
        f_cap = bound(cap)
        done = f_cap.amin(1) > 0
        br = Bracket(torch.zeros_like(cap) if start is None else start.clone(), cap.clone(), f0, f_cap)
        assert br.f_lo is not None and br.f_hi is not None  # for mypy: set just above, and move keeps them tensors
        top = float(cap.max()) if cap.numel() else 0.0
        streak = torch.zeros_like(cap)         # +k: the proven end moved k times running, −k: the other end
        for _ in range(steps - 1):
            w = (br.hi - br.lo)[:, None]
            falls = (br.f_hi <= 0) & (br.f_lo > br.f_hi)
            roots = torch.where(falls, br.lo[:, None] + w * br.f_lo / (br.f_lo - br.f_hi).clamp_min(1e-30),
                                float("inf"))
            # a hair inside the root, so that a linear L_j is proven there rather than rounded onto 0
            secant_pt = br.lo + (1 - 1e-4) * (roots.amin(1).clamp(max=top) - br.lo)
            t = guarded(secant_pt, br.lo, br.hi, streak.abs() >= 2)
            f = bound(t)
            ok = f.amin(1) > 0
            streak = torch.where(ok, streak.clamp_min(0) + 1, streak.clamp_max(0) - 1)
            streak = torch.where(streak.abs() > 2, streak.sign(), streak)
            br.move(t, ~ok, f)
    return torch.where(done, cap, br.lo)
