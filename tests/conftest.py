"""Tiny models and data shared by the tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from maxmargin.norms import get_norm


class TinyMLP(nn.Module):
    def __init__(self, shape: tuple[int, ...], classes: int = 10) -> None:
        super().__init__()
        d = 1
        for s in shape:
            d *= s
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.net(x)


class TinyConv(nn.Module):
    """Has BatchNorm and Dropout so that a wrong mode during attacks changes results."""

    def __init__(self, shape: tuple[int, ...], classes: int = 10) -> None:
        super().__init__()
        c = shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
            nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(classes),
        )
        self.net(torch.zeros(2, *shape))  # materialize the lazy layer

    def forward(self, x):
        return self.net(x)


def make_model(kind: str, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyMLP(shape, classes) if kind == "mlp" else TinyConv(shape, classes)
    # Give BatchNorm non-trivial statistics so train and eval modes really differ.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def make_data(batch: int, shape: tuple[int, ...], classes: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x, y


def linear_problem(norm: str, dim: int = 20, classes: int = 10, batch: int = 64, seed: int = 0):
    """A random linear classifier, inputs it classifies, and their exact margins.

    With bounds that never bind, the margin is
    ``min_{j≠y} (f_y − f_j) / ‖w_y − w_j‖_*`` (dual norm).
    """
    torch.manual_seed(seed)
    lin = nn.Linear(dim, classes)
    x = torch.rand(batch, dim)
    with torch.no_grad():
        f = lin(x)
        y = f.argmax(1)
        diff = f.gather(1, y[:, None]) - f
        wd = lin.weight[y][:, None, :] - lin.weight[None]
        dual = get_norm(norm).dual(wd.reshape(batch * classes, dim)).reshape(batch, classes)
        d = diff / dual
        d[torch.arange(batch), y] = float("inf")
    return lin, x, y, d.min(1).values


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def tiny_preset(name: str):
    """A preset shrunk to a few steps and tiny evaluations, for end-to-end tests of whole commands."""
    from maxmargin.config import load_preset

    cfg = load_preset(name)
    for key, value in dict(steps=4, eval_every=4, batch_size=20, attack_steps=2, eval_size=20, val_pgd_steps=2,
                           margin_steps=2).items():
        setattr(cfg, key, value)
    return cfg
