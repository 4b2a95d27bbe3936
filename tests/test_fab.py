"""The FAB-style L2 attack (attacks/fab.py), its box-constrained projection, and the L2 estimate's FAB stage."""
from __future__ import annotations

import pytest
import torch
from conftest import linear_problem, make_data, make_model

from maxmargin.attacks import fab_search
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm, l2_to_hyperplane

WIDE = (-100.0, 100.0)
L2 = get_norm("l2")


def _box_problem(rows: int = 300, dim: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    w[:, 0] = 0                                        # a coordinate the plane does not see
    p = torch.rand(rows, dim, generator=g, dtype=torch.float64)
    c = torch.randn(rows, generator=g, dtype=torch.float64)
    return w, c, -p, 1 - p


def _reference(w, c, lower, upper, iters: int = 200):
    """The same minimizer by bisection on λ in d = clip(λw): fine where no w_i is tiny."""
    lam_lo = torch.full_like(c, -1e6)
    lam_hi = torch.full_like(c, 1e6)
    for _ in range(iters):
        mid = (lam_lo + lam_hi) / 2
        h = (w * torch.minimum(torch.maximum(mid[:, None] * w, lower), upper)).sum(1)
        lam_lo, lam_hi = torch.where(h < c, mid, lam_lo), torch.where(h < c, lam_hi, mid)
    return torch.minimum(torch.maximum(lam_hi[:, None] * w, lower), upper)


def test_the_projection_meets_the_plane_inside_the_box_and_equals_the_minimizer():
    w, c, lower, upper = _box_problem()
    d = l2_to_hyperplane(w, c, lower, upper)
    assert bool(((d >= lower) & (d <= upper)).all())
    reach = (w * torch.where(w * c.sign()[:, None] > 0, upper, lower)).sum(1)
    feasible = reach.abs() >= c.abs()
    assert int(feasible.sum()) > 200
    assert float(((w * d).sum(1) - c)[feasible].abs().max()) < 1e-12
    # the minimizer of a strictly convex problem is unique: the reference must land on it too
    ref = _reference(w[feasible], c[feasible], lower[feasible], upper[feasible])
    assert torch.allclose(d[feasible], ref, atol=1e-9)
    assert bool((d[:, 0] == 0).all())


def test_out_of_reach_goes_to_the_faces_and_c_zero_stays_put():
    w, c, lower, upper = _box_problem(rows=50, seed=1)
    far = c.sign() * 1e3
    d = l2_to_hyperplane(w, far, lower, upper)
    face = torch.where(w * far.sign()[:, None] > 0, upper, lower)
    assert torch.equal(d[:, 1:], face[:, 1:]) and bool((d[:, 0] == 0).all())
    assert torch.equal(l2_to_hyperplane(w, torch.zeros_like(c), lower, upper), torch.zeros_like(w))


def test_a_tiny_weight_does_not_cost_precision():
    # breakpoints at 1e30: a bisection on λ would resolve λ only to ~1e12 here
    w = torch.tensor([[1e-30, 2.0, -1.0, 0.5]], dtype=torch.float64)
    lower, upper = torch.full_like(w, -0.3), torch.full_like(w, 0.3)
    c = torch.tensor([0.9], dtype=torch.float64)
    d = l2_to_hyperplane(w, c, lower, upper)
    assert abs(float((w * d).sum()) - 0.9) < 1e-12
    # λ = 0.24: the weight 2 sits at its face (0.6), −1 and 0.5 are free (0.24 + 0.06 = 0.3)
    assert torch.allclose(d, torch.tensor([[0.24e-30, 0.3, -0.24, 0.12]], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 10])
def test_fab_is_exact_on_linear_models(classes):
    lin, x, y, exact = linear_problem("l2", classes=classes, seed=classes)
    r = fab_search(lin.double(), x.double(), y, steps=30, bounds=WIDE)
    assert bool(r.found.all())
    ratio = r.norm / exact.double()
    assert float(ratio.min()) >= 1 - 1e-6 and float(ratio.max()) <= 1.01
    with torch.no_grad():
        assert bool((lin(r.x_adv).argmax(1) != y).all())
    assert torch.allclose(L2.measure(r.x_adv - x.double()), r.norm)


def test_the_fab_stage_never_loosens_the_l2_estimate():
    model = make_model("mlp", (1, 28, 28)).double().eval()
    x, _ = make_data(6, (1, 28, 28))
    x = x.double()
    with torch.no_grad():
        y = model(x).argmax(1)                        # correctly classified: margins are positive
    kw = dict(eps_max=8.0, steps=8, search_steps=8, targets=2, alma_steps=0)
    alone = fab_search(model, x, y, steps=20, classes=2).norm
    others = estimate_margin(model, x, y, norm="l2", fab_steps=0, fmn_steps=8, rounds=1, **kw)
    with_stage = estimate_margin(model, x, y, norm="l2", fab_steps=20, fmn_steps=8, rounds=1, **kw)
    # the estimate is the min over every stage's verified points, the FAB stage's included
    assert bool((with_stage <= alone.clamp(max=8.0) + 1e-9).all())
    assert bool((with_stage <= others + 1e-9).all()) and bool((with_stage < others - 1e-6).any())


def test_stage_options_are_checked_not_dropped():
    model = make_model("mlp", (1, 28, 28)).double().eval()
    x, y = make_data(4, (1, 28, 28))
    x = x.double()
    kw = dict(eps_max=8.0, steps=6, search_steps=6, targets=2)
    # with both L2 stages off, the defaults are the L∞ recipe (FMN and one PGD round): nothing changes silently
    former = estimate_margin(model, x, y, norm="l2", alma_steps=0, fab_steps=0, **kw)
    spelled = estimate_margin(model, x, y, norm="l2", alma_steps=0, fab_steps=0, fmn_steps=6, rounds=1, **kw)
    assert torch.equal(former, spelled)
    for bad, match in ((dict(norm="linf", fab_steps=5), "fab_steps"),
                       (dict(norm="l2", fab_steps=-1), "fab_steps"),
                       (dict(norm="l2", fmn_steps=0, alma_steps=0, fab_steps=0, rounds=0), "every stage"),
                       (dict(norm="l2", rounds=0, restarts=2), "restarts"),
                       (dict(norm="l2", attack="ddn", fab_steps=5), "does not apply")):
        with pytest.raises(ValueError, match=match):
            estimate_margin(model, x, y, **{**kw, **bad})
    with pytest.raises(ValueError, match="classes"):
        fab_search(model, x, y, steps=2, classes=0)
