"""The augmented-Lagrangian L2 attack (attacks/alma.py) and the L2 margin estimate that uses it."""
from __future__ import annotations

import pytest
import torch
from conftest import linear_problem, make_data, make_model

from maxmargin.attacks import alma_search
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm

WIDE = (-100.0, 100.0)
L2 = get_norm("l2")


@pytest.mark.parametrize("seed", [0, 1])
def test_alma_alone_is_never_below_the_exact_l2_margin_and_within_2_percent_on_most(seed):
    # binary: one boundary, so a local search has one answer; lr 0.01 suits margins of 0.01-0.8
    lin, x, y, exact = linear_problem("l2", classes=2, seed=seed)
    r = alma_search(lin, x, y, steps=300, bounds=WIDE, lr=0.01)
    assert bool(r.found.all())
    ratio = r.norm / exact
    assert float(ratio.min()) >= 1 - 1e-4 and float((ratio <= 1.02).float().mean()) >= 0.95
    assert float(ratio.max()) <= 1.05
    with torch.no_grad():
        assert bool((lin(r.x_adv).argmax(1) != y).all())
    assert torch.allclose(L2.measure(r.x_adv - x), r.norm)


@pytest.mark.parametrize("seed", [0, 1])
def test_l2_estimate_with_the_alma_stage_is_exact_on_linear_models(seed):
    lin, x, y, exact = linear_problem("l2", classes=10, seed=seed)
    m, pts = estimate_margin(lin, x, y, norm="l2", eps_max=10.0, bounds=WIDE, steps=20, alma_steps=200,
                             return_points=True)
    ratio = m / exact
    assert float(ratio.min()) >= 1 - 1e-4 and float(ratio.max()) <= 1.02
    with torch.no_grad():
        assert bool((lin(pts).argmax(1) != y).all())
    assert torch.allclose(L2.measure(pts - x), m, atol=1e-5)


def test_the_alma_stage_never_loosens_the_l2_estimate_and_linf_ignores_it():
    model = make_model("mlp", (1, 28, 28)).double().eval()
    x, _ = make_data(6, (1, 28, 28))
    x = x.double()
    with torch.no_grad():
        y = model(x).argmax(1)                        # correctly classified: margins are positive
    kw = dict(eps_max=8.0, steps=8, search_steps=8, targets=2)
    alone = alma_search(model, x, y, steps=40).norm
    with_stage = estimate_margin(model, x, y, norm="l2", alma_steps=40, **kw)
    # the estimate is the min over every stage's verified points, the ALMA stage's included
    assert bool((with_stage <= alone.clamp(max=8.0) + 1e-9).all()) and bool((alone > 0).all())
    linf = estimate_margin(model, x, y, norm="linf", eps_max=0.5, steps=8, search_steps=8)
    assert torch.equal(linf, estimate_margin(model, x, y, norm="linf", eps_max=0.5, steps=8, search_steps=8,
                                             alma_steps=0))
    with pytest.raises(ValueError, match="alma_steps"):
        estimate_margin(model, x, y, norm="linf", alma_steps=10)
    with pytest.raises(ValueError, match="alma_steps"):
        estimate_margin(model, x, y, norm="l2", alma_steps=-1)
