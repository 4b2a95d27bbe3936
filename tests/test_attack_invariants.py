"""Invariants every attack must keep, on tiny MLP and conv models and several shapes.

advertorch-style: the output stays in the ball and the box, the input is not
modified, the model's mode and parameter gradients are restored, per-example
radii are honoured, an example alone equals the same example in a batch, and
a fixed seed reproduces the result.
"""
from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

from maxmargin.attacks import anpgd, fgsm, pgd
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm

BASE_EPS = {"linf": 0.1, "l2": 1.0}


def run_pgd(model, x, y, norm, eps, random=True):
    return pgd(model, x, y, norm=norm, eps=eps, steps=5, random_init=random)


def run_pgd_cw_restarts(model, x, y, norm, eps, random=True):
    return pgd(model, x, y, norm=norm, eps=eps, steps=3, loss="cw", restarts=3, random_init=random)


def run_pgd_slm(model, x, y, norm, eps, random=True):
    return pgd(model, x, y, norm=norm, eps=eps, steps=3, loss="slm", random_init=random)


def run_pgd_lm(model, x, y, norm, eps, random=True):
    return pgd(model, x, y, norm=norm, eps=eps, steps=3, loss="lm", step_size=eps / 2,
               random_init=random)


def run_fgsm(model, x, y, norm, eps, random=True):
    return fgsm(model, x, y, norm=norm, eps=eps)


def run_anpgd(model, x, y, norm, eps, random=True, search="bisect"):
    x_adv, e = anpgd(model, x, y, norm=norm, eps_init=eps * 0.3, eps_max=eps, steps=3, search_steps=4,
                     random_init=random, search=search)
    assert torch.allclose(e, get_norm(norm).measure(x_adv - x), atol=1e-6)
    return x_adv


def run_anpgd_preprint(model, x, y, norm, eps, random=True, search="bisect"):
    x_adv, e = anpgd(model, x, y, norm=norm, eps_init=eps * 0.3, eps_max=eps, steps=3, search_steps=4,
                     eps_inc=0.2 * (eps if isinstance(eps, float) else float(eps.max())), refine=True,
                     random_init=random, search=search)
    assert torch.allclose(e, get_norm(norm).measure(x_adv - x), atol=1e-6)
    return x_adv


def run_anpgd_secant(model, x, y, norm, eps, random=True):
    return run_anpgd(model, x, y, norm, eps, random, search="secant")


def run_anpgd_preprint_secant(model, x, y, norm, eps, random=True):
    return run_anpgd_preprint(model, x, y, norm, eps, random, search="secant")


ATTACKS = {
    "pgd": run_pgd,
    "pgd_cw_restarts": run_pgd_cw_restarts,
    "pgd_slm": run_pgd_slm,
    "pgd_lm": run_pgd_lm,
    "fgsm": run_fgsm,
    "anpgd": run_anpgd,
    "anpgd_preprint": run_anpgd_preprint,
    "anpgd_secant": run_anpgd_secant,
    "anpgd_preprint_secant": run_anpgd_preprint_secant,
}
SHAPES = [(1, 28, 28), (3, 32, 32)]


def _grads_and_mode(model):
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i))
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_ball_box_input_mode_grads(attack, norm, kind, shape, batch):
    model = make_model(kind, shape)
    model.train()
    x, y = make_data(batch, shape)
    x0 = x.clone()
    modes = _grads_and_mode(model)
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    # Per-example radii, the first one 0: each example's own radius must bind.
    eps = BASE_EPS[norm] * torch.linspace(0.0, 1.0, batch) if batch > 1 else torch.tensor([BASE_EPS[norm]])

    x_adv = ATTACKS[attack](model, x, y, norm, eps)

    assert x_adv.shape == x.shape and x_adv.device == x.device
    assert torch.equal(x, x0), "input modified"
    assert [m.training for m in model.modules()] == modes, "model mode not restored"
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads)), ".grad touched"
    assert all(torch.equal(b, b0) for b, b0 in zip(model.buffers(), buffers)), "BatchNorm stats changed"
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    dist = get_norm(norm).measure(x_adv - x)
    assert bool((dist <= eps * (1 + 1e-5) + 1e-6).all()), (dist, eps)
    if batch > 1:
        assert torch.equal(x_adv[0], x[0]), "eps = 0 must leave the example unchanged"


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_alone_equals_in_batch(attack, norm, kind):
    # float64 so that batched and single convolutions agree well below sign flips.
    shape = (1, 28, 28)
    model = make_model(kind, shape).double().eval()
    x, y = make_data(8, shape)
    x = x.double()
    eps = BASE_EPS[norm]
    batched = ATTACKS[attack](model, x, y, norm, eps, random=False)
    for i in (0, 5):
        alone = ATTACKS[attack](model, x[i:i + 1], y[i:i + 1], norm, eps, random=False)
        assert torch.allclose(alone[0], batched[i], atol=1e-9), f"example {i} differs alone"


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_result(attack, norm):
    shape = (3, 32, 32)
    model = make_model("conv", shape).eval()
    x, y = make_data(6, shape)
    torch.manual_seed(7)
    a = ATTACKS[attack](model, x, y, norm, BASE_EPS[norm])
    torch.manual_seed(7)
    b = ATTACKS[attack](model, x, y, norm, BASE_EPS[norm])
    assert torch.equal(a, b)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_estimate_margin_invariants(norm, kind, batch):
    shape = (1, 28, 28)
    model = make_model(kind, shape).train()
    x, y = make_data(batch, shape)
    x0 = x.clone()
    modes = _grads_and_mode(model)
    grads = [p.grad.clone() for p in model.parameters()]
    cap = 4 * BASE_EPS[norm]
    m = estimate_margin(model, x, y, norm=norm, eps_max=cap, steps=5, search_steps=5, targets=3)
    assert torch.equal(x, x0)
    assert [mm.training for mm in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert m.shape == (batch,)
    assert bool(((m >= 0) & (m <= cap + 1e-6)).all())
    with torch.no_grad():
        wrong = model.eval()(x).argmax(1) != y
    assert bool((m[wrong] == 0).all()) and bool((m[~wrong] > 0).all())


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("shape", SHAPES)
def test_ddn_invariants(kind, shape):
    from maxmargin.attacks import ddn

    model = make_model(kind, shape).train()
    x, y = make_data(3, shape)
    x0 = x.clone()
    modes = _grads_and_mode(model)
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    x_adv = ddn(model, x, y, steps=5)
    assert torch.equal(x, x0)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(b, b0) for b, b0 in zip(model.buffers(), buffers))
    assert x_adv.shape == x.shape and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    batched = ddn(model.eval().double(), x.double(), y, steps=5)
    alone = ddn(model, x[1:2].double(), y[1:2], steps=5)
    assert torch.allclose(alone[0], batched[1], atol=1e-9)
