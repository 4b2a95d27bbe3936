"""Full CROWN and α-CROWN: sound on small CNNs, ordered against CROWN-IBP and IBP, exact on linear models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from maxmargin.attacks import pgd
from maxmargin.bounds import METHODS, Region, Relu, Reuse, layer_bounds, margin_lower_bounds, propagate, trace
from maxmargin.certify import certified_margin
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm

NORMS = ["linf", "l2"]
LOOSEST_FIRST = ["ibp", "crown-ibp", "crown", "alpha-crown"]


def _cnn(seed: int, pool: str) -> nn.Sequential:
    """conv → BatchNorm (eval, non-trivial statistics) → ReLU → max/avg pool → conv → ReLU → FC → ReLU → FC."""
    torch.manual_seed(seed)
    pooling = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), pooling,
                        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, 4))
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


NETS = [("max", 0), ("avg", 1), ("max", 2)]


def _points(x: torch.Tensor, r: float, norm: str, k: int) -> torch.Tensor:
    """``[k, B, *x]`` points of the ball ∩ box: vertices and interior (L∞), sphere and interior (L2)."""
    g = torch.Generator().manual_seed(5)
    if norm == "linf":
        u = torch.rand((k, *x.shape), generator=g, dtype=x.dtype) * 2 - 1
        u[: k // 2] = u[: k // 2].sign()
    else:
        u = torch.randn((k, *x.shape), generator=g, dtype=x.dtype)
        u = u / u.flatten(2).norm(dim=2)[:, :, None, None, None]
        u[k // 2:] *= torch.rand((k - k // 2, x.shape[0], 1, 1, 1), generator=g, dtype=x.dtype)
    return (x + r * u).clamp(0, 1)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("pool,seed", NETS)
def test_full_crown_intermediate_bounds_enclose_sampled_activations(pool, seed, norm):
    net = _cnn(seed, pool).double()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    r = {"linf": 0.08, "l2": 0.5}[norm]
    nodes = trace(net, x)
    region = Region(x, torch.full((5,), r, dtype=torch.float64), get_norm(norm), 0.0, 1.0)
    full = layer_bounds(nodes, region, "crown")
    ibp = layer_bounds(nodes, region, "ibp")
    pts = _points(x, r, norm, 400).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        for i, (lo, hi) in enumerate(full):
            v = net[:i](pts).reshape(400, *lo.shape)
            assert bool((v >= lo - 1e-9).all() and (v <= hi + 1e-9).all()), f"node {i} ({nodes[i].name}) escapes"
            assert bool((lo >= ibp[i][0] - 1e-12).all() and (hi <= ibp[i][1] + 1e-12).all()), "looser than IBP"
    # the conv above the first pooling (node 5) and the FC (node 9) are tightened, not left at intervals
    for i in (5, 9):
        assert float((full[i][1] - full[i][0]).sum()) < float((ibp[i][1] - ibp[i][0]).sum()) * 0.99


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("pool,seed", NETS[:2])
def test_no_attack_breaks_a_certificate_of_any_method(pool, seed, norm):
    net = _cnn(seed, pool)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(10 + seed))
    with torch.no_grad():
        y = net(x).argmax(1)
    cap = {"linf": 0.5, "l2": 2.0}[norm]
    est = estimate_margin(net, x, y, norm=norm, eps_max=cap, steps=30, targets=2, rounds=1)
    certs = {m: certified_margin(net, x, y, norm=norm, method=m, eps_max=cap, search_steps=8) for m in METHODS}
    assert bool((certs["crown"] > 0).any())
    for method, cert in certs.items():
        assert bool((cert <= est + 1e-6).all()), f"{method}: a certified radius above an attack's margin"
        for loss in ("cw", "ce"):
            x_adv = pgd(net, x, y, norm=norm, eps=cert, steps=40, loss=loss, restarts=10)
            with torch.no_grad():
                assert bool((net(x_adv).argmax(1) == y).all()), f"PGD broke a {method} certificate"


def _bounds_at(net: nn.Module, x: torch.Tensor, r: float, norm: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        y = net(x).argmax(1)
    nodes = trace(net, x)
    region = Region(x, torch.full((x.shape[0],), r, dtype=x.dtype), get_norm(norm), 0.0, 1.0)
    return {m: margin_lower_bounds(nodes, region, y, m) for m in LOOSEST_FIRST}


@pytest.mark.parametrize("norm", NORMS)
def test_methods_are_ordered_per_example_and_margin(norm, monkeypatch):
    """α-CROWN ≥ CROWN ≥ CROWN-IBP ≥ IBP for every example and margin, and each step is strictly tighter somewhere.

    CROWN-IBP's budget is set to 0 so that, as on LeNet5 and SmallCNN, it uses
    interval bounds above the first layer (on nets this small it would use CROWN everywhere).
    """
    monkeypatch.setattr(propagate, "CROWN_INTERMEDIATE_BUDGET", 0.0)
    gains = {m: 0.0 for m in LOOSEST_FIRST[1:]}
    for pool, seed in NETS:
        net = _cnn(seed, pool).double()
        x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(20 + seed), dtype=torch.float64)
        low = _bounds_at(net, x, {"linf": 0.05, "l2": 0.4}[norm], norm)
        for looser, tighter in zip(LOOSEST_FIRST, LOOSEST_FIRST[1:]):
            assert bool((low[tighter] >= low[looser] - 1e-9).all()), f"{tighter} looser than {looser}"
            gains[tighter] += float((low[tighter] - low[looser]).sum())
    assert all(g > 1e-3 for g in gains.values()), gains


@pytest.mark.parametrize("norm", NORMS)
def test_certified_radii_are_ordered(norm):
    """The staged search: CROWN's radius is proven above CROWN-IBP's; α-CROWN's bound is CROWN's or better."""
    net = _cnn(3, "max")
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    cap = {"linf": 0.5, "l2": 2.0}[norm]
    cert = {m: certified_margin(net, x, y, norm=norm, method=m, eps_max=cap) for m in LOOSEST_FIRST}
    assert bool((cert["crown-ibp"] >= cert["ibp"]).all())
    assert bool((cert["crown"] >= cert["crown-ibp"]).all())
    # two searches take different paths: α-CROWN's radius may stop a search step short of CROWN's
    assert bool((cert["alpha-crown"] >= 0.97 * cert["crown"]).all())
    assert float(cert["alpha-crown"].mean()) >= float(cert["crown"].mean())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", NORMS)
def test_linear_models_are_certified_exactly_by_every_method(norm, method):
    torch.manual_seed(4)
    lin = nn.Linear(12, 5).double()
    x = torch.rand(15, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = lin(x).argmax(1)
    w, b = lin.weight.detach(), lin.bias.detach()
    f = x @ w.T + b
    wd = (w[y][:, None, :] - w[None]).reshape(-1, 12)
    exact = (f.gather(1, y[:, None]) - f) / get_norm(norm).dual(wd).reshape(15, -1)
    exact[torch.arange(15), y] = float("inf")
    exact = exact.min(1).values
    cert = certified_margin(lin, x, y, norm=norm, method=method, eps_max=5.0, bounds=(-100.0, 100.0))
    assert bool((cert <= exact).all()) and bool((cert >= 0.999 * exact).all())


def test_chunking_and_reuse_leave_the_bounds_sound_and_chunks_change_nothing(monkeypatch):
    net = _cnn(0, "max").double()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nodes = trace(net, x)
    norm = get_norm("linf")
    region = Region(x, torch.full((4,), 0.06, dtype=torch.float64), norm, 0.0, 1.0)
    whole = layer_bounds(nodes, region, "crown")
    monkeypatch.setattr(propagate, "CHUNK_ENTRIES", 300)       # a few rows per backward pass
    chunked = layer_bounds(nodes, region, "crown")
    for (lo, hi), (clo, chi) in zip(whole, chunked):
        assert torch.allclose(lo, clo, atol=1e-12) and torch.allclose(hi, chi, atol=1e-12)
    # bounds kept from a larger radius tighten a smaller one; those from a smaller radius are never used
    with torch.no_grad():
        y = net(x).argmax(1)
    reuse = Reuse()
    big = Region(x, torch.tensor([0.1, 0.1, 0.01, 0.1], dtype=torch.float64), norm, 0.0, 1.0)
    margin_lower_bounds(nodes, big, y, "crown", reuse)
    reuse.keep(torch.ones(4, dtype=torch.bool))
    plain = margin_lower_bounds(nodes, region, y, "crown")
    reused = margin_lower_bounds(nodes, region, y, "crown", reuse)
    assert bool((reused >= plain - 1e-12).all())
    assert torch.equal(reused[2], plain[2]), "bounds from radius 0.01 were used at radius 0.06"
    pts = _points(x, 0.06, "linf", 300).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        logits = net(pts).reshape(300, 4, -1)
    diff = logits.gather(2, y[None, :, None].expand(300, -1, 1)) - logits
    keep = torch.ones_like(logits[0], dtype=torch.bool).scatter_(1, y[:, None], False)
    assert bool((diff[:, keep].reshape(300, 4, -1) >= reused - 1e-9).all())


def test_any_relu_slope_gives_a_sound_bound():
    """α-CROWN's slopes are clamped into [0, 1] inside the op, so even wild values stay sound."""
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(3, 50, generator=g, dtype=torch.float64) - 0.5
    hi = lo + torch.rand(3, 50, generator=g, dtype=torch.float64) * 3
    a = torch.randn(3, 4, 50, generator=g, dtype=torch.float64)
    slopes = torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * 3
    (coef,), const = Relu().backward_tuned(a, [(lo, hi)], [(50,)], slopes)
    z = lo[None] + torch.rand(2000, 3, 50, generator=g, dtype=torch.float64) * (hi - lo)[None]
    exact = torch.einsum("bsn,kbn->kbs", a, z.clamp_min(0))
    linear = torch.einsum("bsn,kbn->kbs", coef, z) + const
    assert bool((linear <= exact + 1e-12).all())
