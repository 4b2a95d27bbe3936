"""Tiny models and data shared by the tests."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

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


def own_confident_labels(model: nn.Module, x: Tensor, scale: float = 1000.0) -> Tensor:
    """Label ``x`` by ``model`` and sharpen its last layer so every example has SLM < 0 (AN-PGD attacks all)."""
    from maxmargin.losses import soft_logit_margin
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        y = model(x).argmax(1)
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        assert bool((soft_logit_margin(model(x), y) < 0).all())
    return y


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


def relu_net_2d(seed: int, width: int = 24, depth: int = 2, classes: int = 4) -> nn.Module:
    """A small non-linear classifier of points in the unit square."""
    torch.manual_seed(seed)
    layers, d = [], 2
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, classes))
    net = nn.Sequential(*layers)
    with torch.no_grad():      # bring the boundaries inside the square
        net[0].weight.mul_(6.0)
        net[0].bias.copy_(-(net[0].weight @ torch.full((2,), 0.5)) + torch.randn(width))
    return net


def exact_margin_2d(net: nn.Module, x: Tensor, y: Tensor, norm: str, rays: int = 720, radii: int = 400,
                    refine: int = 30, grid: int = 1500) -> Tensor:
    """Margins in the unit square to about 1e-3, each the norm of a verified adversarial point.

    The smaller of two dense searches (float64): along ``rays`` rays from
    ``x`` the first crossing on ``radii`` radii, bisected; and the nearest
    misclassified point of a ``grid × grid`` lattice of the square (rays
    alone miss adversarial slivers that touch the square's edge). Being
    norms of adversarial points, the values are never below the true margin,
    so ``certified ≤ exact`` is a rigorous check. inf where no point of the
    square is adversarial, 0 where ``x`` is misclassified.
    """
    side = torch.linspace(0, 1, grid, dtype=torch.float64)
    lattice = torch.cartesian_prod(side, side)
    with torch.no_grad():
        labels = net.double()(lattice).argmax(1)
    rays_only = _ray_margins(net, x, y, norm, rays, radii, refine)
    out = []
    for xi, yi, r in zip(x.double(), y, rays_only):
        wrong = lattice[labels != yi]
        near = get_norm(norm).measure(wrong - xi).min() if len(wrong) else torch.tensor(float("inf"))
        out.append(min(float(r), float(near)) if r > 0 else 0.0)
    net.float()
    return torch.tensor(out, dtype=torch.float64)


def _ray_margins(net: nn.Module, x: Tensor, y: Tensor, norm: str, rays: int, radii: int, refine: int) -> Tensor:
    from maxmargin.losses import logit_margin

    theta = torch.arange(rays, dtype=torch.float64) * (2 * torch.pi / rays)
    u = torch.stack([theta.cos(), theta.sin()], 1)
    u = u / get_norm(norm).measure(u)[:, None]                    # unit length in the norm
    t = torch.linspace(0, 1.5, radii + 1, dtype=torch.float64)[1:]
    net = net.double()
    out = []
    with torch.no_grad():
        for xi, yi in zip(x.double(), y):
            if logit_margin(net(xi[None]), yi[None]) >= 0:
                out.append(0.0)
                continue
            pts = xi + t[None, :, None] * u[:, None, :]             # [rays, radii, 2]
            inside = ((pts >= 0) & (pts <= 1)).all(-1)
            adv = (logit_margin(net(pts.reshape(-1, 2)), yi.expand(pts.shape[0] * pts.shape[1]))
                   .reshape(rays, radii) >= 0) & inside
            hit = adv.any(1)
            if not bool(hit.any()):
                out.append(float("inf"))
                continue
            first = adv.float().argmax(1)[hit]
            dirs = u[hit]
            hi = t[first]
            lo = torch.where(first > 0, t[(first - 1).clamp_min(0)], torch.zeros_like(hi))
            for _ in range(refine):
                mid = (lo + hi) / 2
                p = xi + mid[:, None] * dirs
                a = (logit_margin(net(p), yi.expand(len(mid))) >= 0) & ((p >= 0) & (p <= 1)).all(-1)
                hi, lo = torch.where(a, mid, hi), torch.where(a, lo, mid)
            out.append(float(hi.min()))
    return torch.tensor(out, dtype=torch.float64)


def train_digits_cnn(steps: int = 300):
    """A SmallCNN trained briefly with Adam on the bundled digits (eval mode), and the dataset."""
    from maxmargin.data import load_dataset
    from maxmargin.models import SmallCNN

    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(ds.train), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(ds.train.images(idx)), ds.train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), ds
