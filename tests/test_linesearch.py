"""The shared line search on 1-D functions with known roots, in each of its three uses.

1. AN-PGD's bisection: the smallest unsafe step (function ``≥ 0``) to the bisection's resolution;
2. AN-PGD's secant search: the same point, verified, in few passes;
3. the certified radius: the largest step where every per-class bound is ``> 0``, never past the root.
"""
from __future__ import annotations

import pytest
import torch

from maxmargin.linesearch import Bracket, bisect, guarded, largest_proven, secant

SHAPES = {
    "linear": lambda t: t,
    "convex": lambda t: torch.exp(3 * t) - 1,
    "concave": lambda t: 1 - torch.exp(-3 * t),
    "cubic": lambda t: t + 40 * t ** 3,
    "kink at the root": lambda t: torch.where(t < 0, 0.2 * t, 8 * t),
}


def _roots(n: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.35 * torch.rand(n, generator=g, dtype=torch.float64)


def _crossing(shape, roots: torch.Tensor, counter: list[int] | None = None):
    """``g(η − c)`` per row: negative (safe) below the root ``c``, ``≥ 0`` (unsafe) from it on."""
    def evaluate(eta, rows):
        if counter is not None:
            counter.append(eta.numel())
        c = roots if rows is None else roots[rows]
        return SHAPES[shape](eta - c)
    return evaluate


# ------------------------------------------------------------------ 1. bisection (AN-PGD)

@pytest.mark.parametrize("shape", SHAPES)
def test_bisection_brackets_each_root_to_its_resolution(shape):
    roots = _roots()
    roots[:4] = 0.7                                    # beyond the top: nothing unsafe is seen
    n, top, steps = len(roots), 0.5, 12
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.full((n,), top, dtype=torch.float64)
    known = torch.zeros(n, dtype=torch.bool)
    got, found = bisect(_crossing(shape, roots), lo, hi, known, steps)
    assert not bool(found[:4].any()) and torch.equal(got[:4], hi[:4])
    assert bool(found[4:].all())
    assert bool((got[4:] >= roots[4:]).all()) and bool((got[4:] - roots[4:] <= top / 2 ** steps).all())
    assert torch.equal(lo, torch.zeros(n, dtype=torch.float64)) and not bool(known.any())  # inputs untouched


def test_bisection_keeps_a_known_top_as_found():
    roots = torch.tensor([0.2, 0.3], dtype=torch.float64)
    _, found = bisect(_crossing("linear", roots), torch.zeros(2, dtype=torch.float64),
                      torch.full((2,), 0.3, dtype=torch.float64), torch.tensor([True, True]), 0)
    assert found.tolist() == [True, True]


# ------------------------------------------------------------------ 2. secant search (AN-PGD)

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("top_known", [False, True])
def test_secant_search_returns_a_verified_point_within_tol_of_each_root(shape, top_known):
    roots = _roots()
    n, top = len(roots), 0.5
    evaluate = _crossing(shape, roots)
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), top, dtype=torch.float64)
    f_lo, f_hi = evaluate(lo, None), evaluate(hi, None)
    known = torch.full((n,), top_known)
    tol = torch.full((n,), top / 2 ** 10, dtype=torch.float64)
    # an unverified top needs a second point to extrapolate from: AN-PGD's is PGD's radius and last value
    e0 = torch.full((n,), 0.3, dtype=torch.float64)
    through = None if top_known else (e0, evaluate(e0, None))
    calls: list[int] = []
    got, found, spent = secant(_crossing(shape, roots, calls), Bracket(lo, hi, f_lo, f_hi, known), tol, 20,
                               through=through, first_half=None if top_known else 0.05 * e0)
    assert bool(found.all())
    assert bool((evaluate(got, None) >= 0).all()), "the returned step must be verified unsafe"
    assert bool((got >= roots).all()) and bool((got - roots <= tol + 1e-12).all())
    # what costs is a pass (a forward of the batch): fewer than the 10 a bisection takes to this resolution
    assert spent == sum(calls) and len(calls) <= 7


def test_secant_search_leaves_rows_without_a_crossing_unfound_at_the_top():
    roots = _roots(8)
    roots[4:] = 0.9
    n = len(roots)
    evaluate = _crossing("convex", roots)
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.full((n,), 0.5, dtype=torch.float64)
    f0 = evaluate(lo, None)
    got, found, _ = secant(evaluate, Bracket(lo, hi, f0, f0, torch.zeros(n, dtype=torch.bool)),
                           torch.full((n,), 0.5 / 1024, dtype=torch.float64), 20)
    assert bool(found[:4].all()) and not bool(found[4:].any())
    assert torch.equal(got[4:], hi[4:])


# ------------------------------------------------------------------ 3. certified radius

def _bounds(kind: str, a: torch.Tensor, b: torch.Tensor, counter: list[int]):
    """Per-class lower bounds falling from ``a`` at 0: ``a − b·r`` (linear) or ``a − b·r²`` (concave)."""
    def bound(r):
        counter.append(1)
        rr = r[:, None] if kind == "linear" else r[:, None] ** 2
        return a - b * rr
    return bound


@pytest.mark.parametrize("kind", ["linear", "concave"])
@pytest.mark.parametrize("steps", [4, 12])
def test_largest_proven_never_passes_the_first_root_and_closes_in_on_it(kind, steps):
    g = torch.Generator().manual_seed(1)
    n, classes, cap = 40, 5, 1.0
    a = 0.1 + torch.rand(n, classes, generator=g, dtype=torch.float64)
    b = 0.2 + 3 * torch.rand(n, classes, generator=g, dtype=torch.float64)
    b[:3] = 0.01                                       # provable up to the cap
    root = ((a / b).amin(1) if kind == "linear" else (a / b).sqrt().amin(1)).clamp(max=cap)
    calls: list[int] = []
    r = largest_proven(_bounds(kind, a, b, calls), a, torch.full((n,), cap, dtype=torch.float64), steps)
    assert len(calls) == steps
    assert torch.equal(r[:3], torch.full((3,), cap, dtype=torch.float64))
    assert bool((_bounds(kind, a, b, [])(r).amin(1) > 0).all()), "every returned radius is proven"
    assert bool((r <= root).all())
    if kind == "linear":
        # a secant step per class is exact on linear bounds: one step after the cap, up to the hair inside
        assert bool((root - r <= 2e-4 * root).all())
    else:
        # the bracket halves at least every third step after the first evaluation
        assert bool((root - r <= cap / 2 ** ((steps - 1) // 3) + 1e-12).all())


def test_largest_proven_gives_zero_where_nothing_is_proven():
    a = torch.tensor([[-0.1, 1.0], [0.5, 0.5]], dtype=torch.float64)
    b = torch.ones(2, 2, dtype=torch.float64)
    r = largest_proven(_bounds("linear", a, b, []), a, torch.ones(2, dtype=torch.float64), 6)
    assert r[0] == 0 and 0.49 < float(r[1]) <= 0.5


# ------------------------------------------------------------------ the shared pieces

def test_bracket_moves_each_end_to_the_points_on_its_side():
    br = Bracket(torch.zeros(3), torch.ones(3), torch.full((3,), -1.0), torch.ones(3), torch.zeros(3, dtype=torch.bool))
    br.move(torch.full((3,), 0.5), torch.tensor([True, False, True]), torch.tensor([0.2, -0.3, 0.1]))
    assert br.lo.tolist() == [0.0, 0.5, 0.0] and br.hi.tolist() == [0.5, 1.0, 0.5]
    assert br.f_lo.tolist() == pytest.approx([-1.0, -0.3, -1.0]) and br.known.tolist() == [True, False, True]
    # two points per row: the nearest unsafe one becomes hi, the farthest safe one below it lo
    sub = br.take(torch.tensor([1]))
    sub.narrow(torch.tensor([[0.6, 0.8]]), torch.tensor([[False, True]]), torch.tensor([[-0.1, 0.2]]))
    br.put(torch.tensor([1]), sub)
    assert br.lo.tolist() == pytest.approx([0.0, 0.6, 0.0]) and br.hi.tolist() == pytest.approx([0.5, 0.8, 0.5])
    assert br.known.tolist() == [True, True, True]


def test_guarded_step_clamps_or_bisects():
    lo, hi = torch.zeros(3), torch.ones(3)
    out = guarded(torch.tensor([2.0, 0.25, float("nan")]), lo, hi, torch.tensor([False, False, True]))
    assert out.tolist() == [1.0, 0.25, 0.5]
