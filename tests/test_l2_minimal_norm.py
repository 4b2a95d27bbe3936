"""What every L2 minimal-norm attack of the L2 estimate (ALMA, FAB) must do, and the estimate with each stage.

Labels are the model's own predictions, so every example has a boundary to
find: with random labels most examples are misclassified, answered at norm 0
with ``x`` itself, and a batch-equality or inside-the-box check passes
whatever the attack does.
"""
from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

from maxmargin.attacks import alma, alma_search, fab, fab_search
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm

L2 = get_norm("l2")
# name: (attack, attack with its full outcome, steps, the estimate's options running that stage alone)
ATTACKS = {"alma": (alma, alma_search, 60, dict(alma_steps=30, fab_steps=0)),
           "fab": (fab, fab_search, 20, dict(alma_steps=0, fab_steps=15))}


def _classified(kind: str, batch: int, double: bool = False):
    model = make_model(kind, (1, 28, 28)).eval()
    if double:
        model = model.double()
    x, _ = make_data(batch, (1, 28, 28))
    x = x.double() if double else x
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("name", ATTACKS)
def test_points_are_misclassified_inside_the_box_and_the_invariants_hold(name):
    _, search, steps, stage = ATTACKS[name]
    model, x, y = _classified("conv", 6)
    model.train()
    x0 = x.clone()
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i))
    modes = [m.training for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    r = search(model, x, y, steps=steps)
    m, pts = estimate_margin(model, x, y, norm="l2", eps_max=8.0, steps=5, search_steps=5, return_points=True,
                             **stage)
    assert torch.equal(x, x0)
    assert [mm.training for mm in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(b, b0) for b, b0 in zip(model.buffers(), buffers))
    assert bool((r.norm > 0).all()) and bool(((m > 0) & (m < 8.0)).any())
    for pt, found in ((r.x_adv, r.found), (pts, (m > 0) & (m < 8.0))):
        assert bool(found.any())
        assert float(pt.min()) >= 0 and float(pt.max()) <= 1
        with torch.no_grad():
            logits = model.eval()(pt[found])
        model.train()
        assert bool((logits.argmax(1) != y[found]).all())
    assert torch.allclose(L2.measure(r.x_adv - x)[r.found], r.norm[r.found])


@pytest.mark.parametrize("name", ATTACKS)
def test_one_example_alone_equals_the_same_example_in_a_batch(name):
    attack, _, steps, stage = ATTACKS[name]
    model, x, y = _classified("mlp", 4, double=True)
    batched = attack(model, x, y, steps=steps)
    alone = attack(model, x[2:3], y[2:3], steps=steps)
    assert not torch.equal(batched[2], x[2])
    assert torch.allclose(alone[0], batched[2], atol=1e-9)
    kw = dict(norm="l2", eps_max=8.0, steps=5, search_steps=5, **stage)
    m_b = estimate_margin(model, x, y, **kw)
    m_a = estimate_margin(model, x[2:3], y[2:3], **kw)
    assert torch.allclose(m_a[0], m_b[2], atol=1e-9)


@pytest.mark.parametrize("name", ATTACKS)
def test_misclassified_examples_get_norm_0_and_x_itself(name):
    _, search, _, _ = ATTACKS[name]
    model = make_model("mlp", (1, 28, 28)).eval()
    x, _ = make_data(5, (1, 28, 28))
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    r = search(model, x, wrong, steps=3)
    assert bool((r.norm == 0).all()) and bool(r.found.all()) and torch.equal(r.x_adv, x)
