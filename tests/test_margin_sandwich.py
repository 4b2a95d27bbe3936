"""The margin sandwich: certified_margin <= true margin <= estimate_margin, each side tight."""
from __future__ import annotations

import pytest
import torch
from conftest import exact_margin_2d, linear_problem, make_data, make_model, relu_net_2d
from torch import nn

from maxmargin.attacks import pgd
from maxmargin.certify import certified_margin
from maxmargin.margin import estimate_margin, margin_search
from maxmargin.models import LeNet5, SmallCNN, WideResNet
from maxmargin.norms import get_norm

NORMS = ["linf", "l2"]


def _exact_linear(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """The linear problem's exact margins, in float64 so that the comparison is not float32 noise."""
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    f = x.double() @ w.T + b
    diff = f.gather(1, y[:, None]) - f
    wd = (w[y][:, None, :] - w[None]).reshape(-1, w.shape[1])
    d = diff / get_norm(norm).dual(wd).reshape(len(y), -1)
    d[torch.arange(len(y)), y] = float("inf")
    return d.min(1).values


@pytest.fixture(scope="module")
def nets_2d():
    """Three small ReLU nets on the unit square, 30 points each, with their exact margins per norm."""
    out = []
    for seed in range(3):
        net = relu_net_2d(seed)
        x = torch.rand(30, 2, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = net(x).argmax(1)
        exact = {norm: exact_margin_2d(net, x, y, norm) for norm in NORMS}
        out.append((net, x, y, exact))
    return out


# ------------------------------------------------------------------ lower side

@pytest.mark.parametrize("method", ["crown", "ibp"])
@pytest.mark.parametrize("norm", NORMS)
def test_certified_margin_of_linear_model_is_exact(norm, method):
    lin, x, y, _ = linear_problem(norm, seed=2)
    exact = _exact_linear(lin, x, y, norm)
    cap = {"linf": 2.0, "l2": 10.0}[norm]
    c = certified_margin(lin, x, y, norm=norm, method=method, eps_max=cap, bounds=(-100.0, 100.0)).double()
    ratio = c / exact
    assert float(ratio.max()) <= 1.0, "a certified radius exceeds the exact margin"
    assert float(ratio.min()) >= 0.99, f"certified radius {float(ratio.min()):.4f}× the exact margin"


@pytest.mark.parametrize("norm", NORMS)
def test_certified_below_exact_below_estimate_on_relu_nets(nets_2d, norm):
    for net, x, y, exact in nets_2d:
        ex = exact[norm]
        cert = certified_margin(net, x, y, norm=norm, eps_max=1.5).double()
        est = estimate_margin(net, x, y, norm=norm, eps_max=1.5).double()
        finite = torch.isfinite(ex)
        assert bool((cert <= ex).all()), "certified radius above a verified adversarial point's norm"
        # the oracle is accurate to ~1e-3 (its lattice spacing); an estimate is a verified point too
        assert bool((est[finite] >= ex[finite] - 2e-3).all())
        assert float(cert[finite].mean()) > 0.5 * float(ex[finite].mean()), "CROWN bounds uselessly loose"


@pytest.mark.parametrize("norm", NORMS)
def test_estimate_margin_is_tight_on_relu_nets(nets_2d, norm):
    ratios, search = [], []
    for net, x, y, exact in nets_2d:
        ex = exact[norm]
        ok = torch.isfinite(ex) & (ex > 0)
        ratios.append(estimate_margin(net, x, y, norm=norm, eps_max=1.5).double()[ok] / ex[ok])
        search.append(margin_search(net, x, y, norm, 1.5).double()[ok] / ex[ok])
    r, s = torch.cat(ratios), torch.cat(search)
    assert float(r.median()) <= 1.01 and float(r.quantile(0.9)) <= 1.10, (float(r.median()), float(r.quantile(0.9)))
    assert float(s.median()) <= 1.01 and float(s.quantile(0.9)) <= 1.10, (float(s.median()), float(s.quantile(0.9)))


@pytest.mark.parametrize("norm", NORMS)
def test_no_attack_finds_an_adversarial_point_inside_a_certified_radius(norm):
    for seed, kind in enumerate(["mlp", "conv", "mlp", "conv"]):
        model = make_model(kind, (1, 8, 8), classes=5, seed=seed).eval()
        x, _ = make_data(40, (1, 8, 8), classes=5, seed=seed)
        with torch.no_grad():
            y = model(x).argmax(1)
        cert = certified_margin(model, x, y, norm=norm, eps_max=2.0)
        assert bool((cert > 0).any())
        for loss in ("cw", "ce"):
            x_adv = pgd(model, x, y, norm=norm, eps=cert, steps=50, loss=loss, restarts=10)
            with torch.no_grad():
                assert bool((model(x_adv).argmax(1) == y).all()), "an attack broke a certified example"


@pytest.mark.parametrize("norm", NORMS)
def test_crown_is_never_looser_than_ibp(norm):
    nets = [relu_net_2d(5), make_model("conv", (1, 8, 8), classes=5, seed=1).eval(),
            make_model("mlp", (1, 8, 8), classes=5, seed=2)]
    for net in nets:
        shape = (2,) if isinstance(net, nn.Sequential) and net[0].in_features == 2 else (1, 8, 8)
        x = torch.rand(30, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = net(x).argmax(1)
        crown = certified_margin(net, x, y, norm=norm, method="crown", eps_max=1.0)
        ibp = certified_margin(net, x, y, norm=norm, method="ibp", eps_max=1.0)
        assert bool((crown >= ibp).all())
    assert float(crown.mean()) > float(ibp.mean())


def test_misclassified_examples_certify_zero_and_batch_does_not_matter():
    net = relu_net_2d(1)
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    wrong = (y + 1) % 4
    assert bool((certified_margin(net, x, wrong, eps_max=1.0) == 0).all())
    together = certified_margin(net, x, y, eps_max=1.0, batch_size=20)
    alone = torch.cat([certified_margin(net, x[i:i + 1], y[i:i + 1], eps_max=1.0) for i in range(3)])
    assert torch.allclose(together[:3], alone, rtol=1e-4)   # equal up to BLAS's batch-dependent rounding


@pytest.mark.parametrize("factory", [LeNet5, SmallCNN])
def test_project_models_certify_below_their_estimates(factory):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    est = estimate_margin(model, x, y, norm="linf", eps_max=0.5, steps=20, targets=2, rounds=1)
    for method in ("ibp", "crown"):
        cert = certified_margin(model, x, y, norm="linf", method=method, eps_max=0.5)
        assert bool((cert <= est).all())


def test_wide_resnet_certifies_with_ibp_and_its_standardization_bounds_hold():
    from maxmargin.bounds import Standardize

    torch.manual_seed(0)
    wrn = WideResNet(10, 1).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        y = wrn(x).argmax(1)
    cert = certified_margin(wrn, x, y, norm="linf", method="ibp", eps_max=0.05)
    assert cert.shape == (3,) and bool((cert >= 0).all())
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    blo, bhi = Standardize().interval([(lo, hi)])
    for _ in range(20):
        z = lo + (hi - lo) * torch.rand_like(x)
        s = wrn.standardize(z)
        assert bool((s >= blo - 1e-5).all() and (s <= bhi + 1e-5).all())


def test_bad_input_is_one_clear_error():
    net = relu_net_2d(0)
    x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="SiLU"):
        certified_margin(nn.Sequential(nn.Linear(2, 4), nn.SiLU(), nn.Linear(4, 3)), x, y)
    with pytest.raises(ValueError, match="eps_max"):
        certified_margin(net, x, y, eps_max=0.0)
    with pytest.raises(ValueError, match="shape"):
        certified_margin(net, torch.rand(4, 3), y)
    with pytest.raises(ValueError, match="method"):
        certified_margin(net, x, y, method="exact")


# ------------------------------------------------------------------ upper side

@pytest.mark.parametrize("norm", NORMS)
def test_estimate_margin_returns_the_verified_point_behind_each_value(norm):
    model = make_model("conv", (1, 8, 8), classes=5, seed=3).eval()
    x, y = make_data(30, (1, 8, 8), classes=5, seed=4)
    m, pts = estimate_margin(model, x, y, norm=norm, eps_max=5.0, steps=30, return_points=True)
    with torch.no_grad():
        pred = model(pts).argmax(1)
    hit = m < 5.0
    assert bool(hit.any())
    assert bool((pred[hit] != y[hit]).all()), "a returned point is not misclassified"
    assert bool(((pts >= 0) & (pts <= 1)).all())
    dist = get_norm(norm).measure(pts - x)
    assert torch.allclose(dist[hit], m[hit], rtol=1e-5, atol=1e-6)
    assert torch.equal(pts[~hit], x[~hit])
