"""Full CROWN's rows sent as spatial windows give the same bounds as rows sent over whole maps, for far less work."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxmargin.bounds import Region, layer_bounds, margin_lower_bounds, propagate, trace, windows
from maxmargin.norms import get_norm


class _Block(nn.Module):
    """A residual block with a strided, dilated and grouped convolution, a normalization and a max pool with padding."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.c3 = nn.Conv2d(4, 3, (2, 3), padding=(0, 1))
        self.fc = nn.Linear(3 * 2 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - 0.5) * 2.0                                  # an input normalization: a shift and a scale
        h = torch.relu(self.bn(self.c1(z)))
        h = h + torch.sigmoid(self.c2(h))                    # a residual sum over a non-ReLU activation
        h = torch.relu(self.c3(self.pool(h)))
        return self.fc(h.flatten(1))


def _block(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = _Block()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval().double()


def _lenet_like(seed: int) -> nn.Module:
    """conv → ReLU → max pool → conv → ReLU → average pool → FC: an average pool has no window form (dense fallback)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 1 * 2, 3)).eval().double()


class _Odd(nn.Module):
    """A difference of two branches, a per-channel normalization tensor, a stride that differs between height and
    width with a dilation, a dilated max pool, LeakyReLU and Tanh, and a padding wider than the kernel's reach."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("std", torch.tensor([0.5, 2.0]).reshape(1, 2, 1, 1))
        self.c1 = nn.Conv2d(2, 3, 3, stride=(2, 1), padding=2, dilation=2)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.c3 = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2, stride=1, dilation=2)
        self.c4 = nn.Conv2d(3, 2, 1, padding=2)
        self.fc = nn.Linear(2 * 8 * 15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.c1(x / self.std), 0.1)
        h = torch.tanh(self.c2(h)) - torch.relu(self.c3(h))
        h = torch.relu(self.c4(self.pool(h)))
        return self.fc(h.flatten(1))


def _odd(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _Odd().eval().double()


NETS = [_block, _lenet_like, _odd]


@pytest.mark.parametrize("norm,r", [("linf", 0.1), ("l2", 0.6)])
@pytest.mark.parametrize("make", NETS)
@pytest.mark.parametrize("tile", [1, 2, 3])
def test_window_rows_give_the_dense_rows_bounds(monkeypatch, make, tile, norm, r):
    net = make(0)
    x = torch.rand(4, 2, 11, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nodes = trace(net, x)
    region = Region(x, torch.full((4,), r, dtype=torch.float64), get_norm(norm), 0.0, 1.0)
    monkeypatch.setattr(propagate, "TILE", 0)
    dense = layer_bounds(nodes, region, "crown")
    y = net(x).argmax(1)
    dense_margin = margin_lower_bounds(nodes, region, y, "crown")
    monkeypatch.setattr(propagate, "TILE", tile)
    tiled = layer_bounds(nodes, region, "crown")
    ibp = layer_bounds(nodes, region, "ibp")
    tightened = 0
    for i, ((dlo, dhi), (tlo, thi)) in enumerate(zip(dense, tiled)):
        assert torch.allclose(dlo, tlo, rtol=0, atol=1e-10), f"node {i} ({nodes[i].name}): lower bounds differ"
        assert torch.allclose(dhi, thi, rtol=0, atol=1e-10), f"node {i} ({nodes[i].name}): upper bounds differ"
        tightened += int(windows.spatial(nodes[i].shape) and bool((tlo > ibp[i][0] + 1e-9).any()))
    assert tightened >= 1, "the test net must have a convolutional layer that full CROWN tightens"
    assert torch.allclose(margin_lower_bounds(nodes, region, y, "crown"), dense_margin, rtol=0, atol=1e-10)


def test_a_window_pads_back_to_the_map_and_merges_on_the_union():
    a = torch.arange(6.0).reshape(1, 1, 2, 3)
    full = windows.dense(a, (1, 2), (1, 4, 6))
    assert full.shape == (1, 1, 4, 6) and torch.equal(full[..., 1:3, 2:5], a) and float(full.sum()) == 15.0
    b = torch.ones(1, 1, 1, 1)
    merged, at = windows.merge(a, (1, 2), b, (0, 0), (1, 4, 6))
    assert at == (0, 0) and merged.shape == (1, 1, 3, 5)
    assert torch.equal(windows.dense(merged, at, (1, 4, 6)), full + windows.dense(b, (0, 0), (1, 4, 6)))
    cut, where = windows.clip(torch.ones(1, 1, 4, 4), -1, 3, (1, 5, 5))
    assert where == (0, 3) and cut.shape == (1, 1, 3, 2)
    covered = torch.zeros(5, 7)
    for at, size in windows.tiles(5, 7, 2):
        windows.crop(covered, at, size).add_(1)
    assert bool((covered == 1).all())


@pytest.mark.parametrize("make", [_block, _odd])
def test_window_rows_give_the_dense_rows_bounds_in_float32(monkeypatch, make):
    net = make(0).float()
    x = torch.rand(4, 2, 11, 13, generator=torch.Generator().manual_seed(2))
    nodes = trace(net, x)
    region = Region(x, torch.full((4,), 0.05), get_norm("linf"), 0.0, 1.0)
    monkeypatch.setattr(propagate, "TILE", 0)
    dense = layer_bounds(nodes, region, "crown")
    monkeypatch.setattr(propagate, "TILE", 2)
    for (dlo, dhi), (tlo, thi) in zip(dense, layer_bounds(nodes, region, "crown")):
        scale = 1 + float(dhi.abs().max())
        assert float((dlo - tlo).abs().max()) <= 1e-5 * scale and float((dhi - thi).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("make", [_block, _odd])
def test_alpha_crown_tunes_window_rows_as_it_tunes_dense_rows(monkeypatch, make):
    net = make(1)
    x = torch.rand(3, 2, 11, 13, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nodes = trace(net, x)
    y = net(x).argmax(1)
    region = Region(x, torch.full((3,), 0.15, dtype=torch.float64), get_norm("linf"), 0.0, 1.0)
    crown = margin_lower_bounds(nodes, region, y, "crown")
    assert bool((crown.amin(1) <= 0).any()), "α-CROWN tunes only examples CROWN leaves unproven"
    monkeypatch.setattr(propagate, "TILE", 0)
    dense = margin_lower_bounds(nodes, region, y, "alpha-crown")
    monkeypatch.setattr(propagate, "TILE", 2)
    tiled = margin_lower_bounds(nodes, region, y, "alpha-crown")
    assert torch.allclose(dense, tiled, rtol=0, atol=1e-7)
    assert bool((tiled >= crown - 1e-9).all()) and bool((tiled > crown + 1e-6).any()), "α must tighten some margin"
