"""Every certificate is below the exact worst margin, which a MILP finds on small CNNs with two max-pools.

Sampling and PGD (tests/test_full_crown.py) only probe a certificate from
above; the mixed-integer program gives the true minimum of ``f_y − f_j`` over
the L∞ ball ∩ box, so a bound above it is unsound, however rarely an attack
would find the point.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from maxmargin.bounds import METHODS, Region, margin_lower_bounds, trace
from maxmargin.norms import get_norm

pytest.importorskip("scipy.optimize")
from milp_exact import worst_margin


def _net(seed: int, pool: str) -> nn.Sequential:
    """conv → BatchNorm → ReLU → max/avg pool → conv → ReLU → max pool → FC → ReLU → FC, weights ×2."""
    torch.manual_seed(seed)
    first = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), first,
                        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)        # more unstable neurons, so the relaxations matter
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval().double()


@pytest.mark.parametrize("pool,seed", [("max", 0), ("avg", 1)])
def test_no_certificate_exceeds_the_exact_worst_margin(pool, seed):
    net = _net(seed, pool)
    eps, b = 0.05, 3
    x = torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    region = Region(x, torch.full((b,), eps, dtype=torch.float64), get_norm("linf"), 0.0, 1.0)
    nodes = trace(net, x[:1])
    with torch.no_grad():
        bounds = {m: margin_lower_bounds(nodes, region, y, m) for m in METHODS}
    others = torch.arange(4).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, 3)
    gaps = []
    for i in range(b):
        for k in range(3):
            exact, point = worst_margin(net, x[i], eps, int(y[i]), int(others[i, k]))
            # the MILP's point is real: inside the ball and box, and the network attains the value there
            assert (point - x[i]).abs().max() <= eps + 1e-9 and point.min() >= 0 and point.max() <= 1
            with torch.no_grad():
                out = net(point[None])[0]
            assert float(out[y[i]] - out[others[i, k]]) == pytest.approx(exact, abs=1e-6)
            for m in METHODS:
                assert float(bounds[m][i, k]) <= exact + 1e-7, (m, i, k)
            gaps.append(exact - float(bounds["alpha-crown"][i, k]))
    # the check has teeth: some certificates are not already exact
    assert max(gaps) > 0.01
