"""Attacks against linear models, whose optimal perturbations and margins are known exactly."""
from __future__ import annotations

import pytest
import torch
from conftest import linear_problem

from maxmargin.attacks import anpgd, anpgd_search, pgd
from maxmargin.losses import logit_margin, soft_logit_margin
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm

WIDE = (-100.0, 100.0)
CAP = {"linf": 2.0, "l2": 10.0}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimate_margin_within_5_percent_of_exact(norm, seed):
    lin, x, y, exact = linear_problem(norm, seed=seed)
    m = estimate_margin(lin, x, y, norm=norm, eps_max=CAP[norm], bounds=WIDE)
    ratio = m / exact
    assert float(ratio.min()) >= 1 - 1e-4, "an upper bound fell below the exact margin"
    assert float(ratio.max()) <= 1.05


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_estimate_margin_with_random_restarts_stays_tight(norm):
    lin, x, y, exact = linear_problem(norm, seed=3)
    m = estimate_margin(lin, x, y, norm=norm, eps_max=CAP[norm], restarts=2, bounds=WIDE)
    ratio = m / exact
    assert 1 - 1e-4 <= float(ratio.min()) and float(ratio.max()) <= 1.05


def test_estimate_margin_zero_for_misclassified():
    lin, x, y, _ = linear_problem("l2", seed=4)
    y_wrong = (y + 1) % 10
    m = estimate_margin(lin, x, y_wrong, norm="l2", eps_max=10.0, bounds=WIDE)
    with torch.no_grad():
        wrong = lin(x).argmax(1) != y_wrong
    assert bool(wrong.all()) and bool((m == 0).all())


def binary_problem(norm: str, dim: int = 12, batch: int = 16, seed: int = 0):
    """Two classes: SLM equals LM and is linear, so the margin is exactly |f_0 − f_1| / ‖w_0 − w_1‖_*."""
    lin, x, y, exact = linear_problem(norm, dim=dim, classes=2, batch=batch, seed=seed)
    return lin, x, y, exact


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("random_init", [False, True])
def test_anpgd_official_brackets_margin_from_far_eps_init(norm, scale, random_init):
    lin, x, y, exact = binary_problem(norm)
    eps_max = 30 * float(exact.max())
    x_adv, e = anpgd(lin, x, y, norm=norm, eps_init=scale * exact, eps_max=eps_max, steps=20,
                     search_steps=20, bounds=WIDE, random_init=random_init)
    resolution = eps_max / 2 ** 20
    assert bool((e >= exact * (1 - 1e-4)).all())
    if random_init:
        # 20 l2 steps from a random start leave the direction a little off.
        assert bool((e <= exact * 1.05).all())
    else:
        assert bool((e <= exact + 2 * resolution + 1e-5).all())
    with torch.no_grad():
        assert bool((soft_logit_margin(lin(x_adv), y) >= 0).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_anpgd_preprint_bracket_and_refine(norm, scale):
    lin, x, y, exact = binary_problem(norm)
    inc = 2 * float(exact.max())
    eps_max = 10 * float(exact.max())
    x_adv, e = anpgd(lin, x, y, norm=norm, eps_init=scale * exact, eps_max=eps_max, steps=20,
                     search_steps=20, eps_inc=inc, refine=True, bounds=WIDE, random_init=False)
    # The bracket holds the margin from either side; the second PGD at that
    # radius stays on the boundary of a linear model.
    assert torch.allclose(e, exact, rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        assert bool((soft_logit_margin(lin(x_adv), y) >= -1e-3).all())


def test_anpgd_preprint_reports_failure_outside_bracket():
    lin, x, y, exact = binary_problem("l2")
    # eps_init and eps_inc both far below the margin: nothing to find, the
    # result is the bracket's top (eps_init + eps_inc), not a crossing.
    x_adv, e = anpgd(lin, x, y, norm="l2", eps_init=0.1 * exact, eps_max=10.0, steps=10,
                     search_steps=10, eps_inc=float(0.1 * exact.min()), bounds=WIDE)
    assert bool((e < exact).all())
    with torch.no_grad():
        assert bool((logit_margin(lin(x_adv), y) < 0).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_init", [False, True])
def test_pgd_reaches_linear_optimum(norm, random_init):
    lin, x, y, _ = binary_problem(norm)
    eps = 0.05
    # From a random start, l2 PGD sheds the off-direction part by 1/(1 + step/eps)
    # per step: a step of eps/2 makes 50 steps converge to float precision.
    x_adv = pgd(lin, x, y, norm=norm, eps=eps, steps=50, step_size=eps / 2, random_init=random_init,
                bounds=WIDE)
    w = lin.weight
    g = w[1 - y] - w[y]                    # ascent direction of the binary loss
    if norm == "linf":
        expected = eps * g.sign()
    else:
        expected = eps * g / g.norm(dim=1, keepdim=True)
    assert torch.allclose(x_adv - x, expected, atol=1e-4)


def test_pgd_restarts_keep_a_misclassifying_point():
    # One restart is unlikely to find the small-margin direction from random
    # starts with one step; keeping the best over restarts must never lose a hit.
    lin, x, y, exact = linear_problem("linf", seed=5)
    eps = float(exact.median())
    single = pgd(lin, x, y, norm="linf", eps=eps, steps=1, step_size=1e-6, restarts=1, bounds=WIDE)
    multi = pgd(lin, x, y, norm="linf", eps=eps, steps=1, step_size=1e-6, restarts=8, bounds=WIDE)
    with torch.no_grad():
        hit1 = (lin(single).argmax(1) != y).sum()
        hit8 = lin(multi).argmax(1) != y
    assert int(hit8.sum()) >= int(hit1)
    assert bool((get_norm("linf").measure(multi - x) <= eps + 1e-6).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps_inc", [None, 0.5])
def test_secant_search_finds_the_bisection_margin_to_its_resolution(norm, eps_inc):
    # multi-class SLM along a ray is convex for a linear model: one crossing, so both searches must meet it
    lin, x, y, exact = linear_problem(norm, seed=6)
    with torch.no_grad():
        lin.weight.mul_(20)
        lin.bias.mul_(20)
    eps_max = CAP[norm]
    e0 = exact * torch.linspace(0.3, 1.5, len(y))
    kw = dict(norm=norm, eps_init=e0, eps_max=eps_max, steps=10, search_steps=10, eps_inc=eps_inc,
              bounds=WIDE, random_init=False)
    b = anpgd_search(lin, x, y, search="bisect", **kw)
    s = anpgd_search(lin, x, y, search="secant", **kw)
    assert bool((b.found == s.found).all())
    span = eps_max if eps_inc is None else eps_inc
    resolution = span / 2 ** 10
    both = b.found & s.found
    assert int(both.sum()) > len(y) // 2
    assert bool(((b.eps - s.eps).abs()[both] <= 2 * resolution + 1e-6).all())
