"""TRADES, AMM and DDN: exact properties on linear models, and a few real training steps each."""
from __future__ import annotations

import pytest
import torch
from conftest import linear_problem

from maxmargin.attacks import ddn
from maxmargin.data import load_dataset
from maxmargin.margin import estimate_margin
from maxmargin.methods import AMM, MMA, TRADES
from maxmargin.methods.amm import deepfool_perturbation
from maxmargin.methods.trades import kl_divergence, kl_pgd
from maxmargin.models import SmallCNN
from maxmargin.norms import get_norm

WIDE = (-100.0, 100.0)


# ------------------------------------------------------------------ DDN

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ddn_within_5_percent_of_exact_l2_margin_on_binary_linear_models(seed):
    lin, x, y, exact = linear_problem("l2", classes=2, seed=seed)
    m = estimate_margin(lin, x, y, norm="l2", eps_max=10.0, bounds=WIDE, attack="ddn", steps=100)
    ratio = m / exact
    assert float(ratio.min()) >= 1 - 1e-4 and float(ratio.max()) <= 1.05


def test_ddn_returns_adversarial_points_inside_the_box_and_keeps_invariants():
    lin, x, y, exact = linear_problem("l2", classes=2, seed=4)
    lin.train()
    x0 = x.clone()
    x_adv = ddn(lin, x, y, steps=60, bounds=WIDE)
    assert torch.equal(x, x0) and lin.training
    with torch.no_grad():
        assert bool((lin(x_adv).argmax(1) != y).all())
    assert bool((get_norm("l2").measure(x_adv - x) >= exact * (1 - 1e-4)).all())
    with pytest.raises(ValueError, match="gamma"):
        ddn(lin, x, y, gamma=1.5, bounds=WIDE)


# ------------------------------------------------------------------ AMM

def binary_linear_float64(seed=0):
    lin, x, y, exact = linear_problem("l2", dim=6, classes=2, batch=8, seed=seed)
    return lin.double(), x.double(), y, exact.double()


def test_amm_deepfool_norm_is_the_exact_distance_on_a_binary_linear_model():
    lin, x, y, exact = binary_linear_float64()
    df = deepfool_perturbation(lin, x, y, overshoot=0.0, grad_eps=0.0)
    w = lin.weight[1] - lin.weight[0]
    # DeepFool steps 1e-4 (in logit units) past the boundary to make sure it flips
    assert torch.allclose(df.norm.detach(), exact + 1e-4 / w.norm(), rtol=1e-6, atol=1e-9)
    assert bool(df.success.all()) and bool(df.correct.all())
    df2 = deepfool_perturbation(lin, x, y, overshoot=0.02, grad_eps=0.0)
    assert torch.allclose(df2.norm.detach(), 1.02 * df.norm.detach(), rtol=1e-9)


def test_amm_penalty_gradient_flows_through_the_perturbation_finite_difference():
    lin, x, y, _ = binary_linear_float64(seed=1)
    amm = AMM(lam=2.0, c=3.0, d=1.0, grad_eps=0.0)

    def penalty() -> torch.Tensor:
        return amm.penalty(lin, x, y)[0]

    p = penalty()
    (g,) = torch.autograd.grad(p, lin.weight)
    assert float(g.abs().max()) > 0
    h = 1e-6
    num = torch.zeros_like(lin.weight)
    with torch.no_grad():
        for i in range(lin.weight.shape[0]):      # a test may loop over the few weights
            for j in range(lin.weight.shape[1]):
                lin.weight[i, j] += h
                up = float(penalty())
                lin.weight[i, j] -= 2 * h
                down = float(penalty())
                lin.weight[i, j] += h
                num[i, j] = (up - down) / (2 * h)
    assert torch.allclose(g, num, rtol=1e-4, atol=1e-8)


def test_amm_min_aggregation_keeps_at_most_one_example_per_class():
    norm = torch.tensor([0.1, 0.2, 0.05, 0.3, 0.01, 0.5, 0.02, 0.9, 0.7, 0.6])
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    eligible = torch.ones(10, dtype=torch.bool)
    keep = AMM._smallest_per_class(norm, y, eligible)
    assert keep.sum() >= 1
    kept = keep.nonzero().squeeze(1)
    assert len(set(y[kept].tolist())) == len(kept)
    assert bool((norm[kept] <= torch.quantile(norm, 0.2)).all())


# ------------------------------------------------------------------ TRADES

def test_trades_kl_is_zero_at_x_and_its_pgd_increases_it():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        assert float(kl_divergence(model(x), model(x)).abs().max()) < 1e-6
    x_adv = kl_pgd(model, x, "linf", 0.3, 10, 0.03)
    with torch.no_grad():
        kl_start = kl_divergence(model(x), model(kl_pgd(model, x, "linf", 0.3, 0, 0.03)))
        kl_end = kl_divergence(model(x), model(x_adv))
    assert float(kl_end.mean()) > 10 * float(kl_start.mean())
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


# ------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def digits_batch():
    ds = load_dataset("digits")
    idx = torch.arange(64)
    return ds.train.images(idx), ds.train.y[idx], idx


@pytest.mark.parametrize("name", ["trades", "amm-avg", "amm-min", "mma-ddn"])
def test_a_few_training_steps_reduce_the_objective(digits_batch, name):
    torch.manual_seed(0)
    x, y, idx = digits_batch
    model = SmallCNN()
    method = {
        "trades": TRADES("linf", 0.1, steps=3, beta=6.0),
        "amm-avg": AMM(lam=1.0, c=2.0, d=1.0, top_k=3, iters=2),
        "amm-min": AMM(lam=1.0, c=2.0, d=1.0, top_k=3, iters=2, aggregation="min"),
        "mma-ddn": MMA("l2", d_max=2.0, eps_min=0.5, steps=5, num_examples=64, inner="ddn"),
    }[name]
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    losses = []
    for step in range(40):
        model.train()
        method.step = step
        torch.manual_seed(step)
        loss, _ = method.loss(model, x, y, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses


def test_mma_ddn_needs_l2():
    with pytest.raises(ValueError, match="l2"):
        MMA("linf", 0.45, 0.1, 5, 10, inner="ddn")
