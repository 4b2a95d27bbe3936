from __future__ import annotations

import pytest
import torch

from maxmargin.data import load_dataset
from maxmargin.methods import MMA, PGDAT, Standard
from maxmargin.models import SmallCNN


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", val_size=1000)
    return ds


def batch(ds, n=24, start=0):
    idx = torch.arange(start, start + n)
    return ds.train.images(idx), ds.train.y[idx], idx


def methods(n):
    return {
        "standard": Standard(),
        "pgd": PGDAT("linf", 0.3, steps=3),
        "pgdls": PGDAT("l2", 2.0, steps=3, ls_steps=10),
        "mma": MMA("linf", d_max=0.45, eps_min=0.1, steps=3, num_examples=n, search_steps=4),
        "omma-l2-preprint": MMA("l2", d_max=2.0, eps_min=0.5, steps=3, num_examples=n, clean_weight=0.0,
                                search_steps=4, eps_inc=0.5, refine=True),
        "mma-secant": MMA("linf", d_max=0.45, eps_min=0.1, steps=3, num_examples=n, search_steps=4,
                          search="secant"),
    }


@pytest.mark.parametrize("name", list(methods(1)))
def test_loss_finite_and_gradient_reaches_every_parameter(digits, name):
    torch.manual_seed(0)
    model = SmallCNN()
    x, y, idx = batch(digits)
    # sharpen the untrained model so some examples count as correct and MMA attacks them
    with torch.no_grad():
        model.classifier[-1].weight.mul_(30)
    method = methods(len(digits.train))[name]
    model.train()
    loss, stats = method.loss(model, x, y, idx)
    assert torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, pname
    assert model.training
    assert all(isinstance(v, float) for v in stats.values())


def test_mma_memory_moves_only_at_batch_indices_and_wrong_store_zero(digits):
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    # a few standard steps so that most examples are classified correctly
    for s in range(60):
        x, y, idx = batch(digits, 50, (s * 50) % 6000)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    n = len(digits.train)
    mma = MMA("linf", d_max=0.45, eps_min=0.1, steps=5, num_examples=n, search_steps=6)
    mma.eps.fill_(0.123)
    x, y, idx = batch(digits, 40, 100)
    y = y.clone()
    y[:5] = (y[:5] + 1) % 10          # surely misclassified
    before = mma.eps.clone()
    loss, _ = mma.loss(model, x, y, idx)
    changed = (mma.eps != before).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(idx.tolist())
    assert torch.equal(mma.eps[idx[:5]], torch.zeros(5))
    outside = torch.ones(n, dtype=torch.bool)
    outside[idx] = False
    assert bool((mma.eps[outside] == 0.123).all())
    correct = mma.eps[idx[5:]] > 0
    assert int(correct.sum()) >= 20, "a trained model should have most examples correct with a margin"
    assert bool((mma.eps[idx] <= 1.05 * 0.45 + 1e-6).all())


def test_mma_state_dict_roundtrip():
    a = MMA("linf", 0.45, 0.1, 3, num_examples=7)
    a.eps = torch.arange(7.0)
    b = MMA("linf", 0.45, 0.1, 3, num_examples=7)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.eps, b.eps)
    with pytest.raises(ValueError, match="memory"):
        MMA("linf", 0.45, 0.1, 3, num_examples=8).load_state_dict(a.state_dict())


def test_pgdls_radius_grows_linearly():
    m = PGDAT("linf", 0.3, ls_steps=100)
    radii = []
    for s in (0, 49, 99, 500):
        m.step = s
        radii.append(m.current_eps())
    assert radii == pytest.approx([0.003, 0.15, 0.3, 0.3])
