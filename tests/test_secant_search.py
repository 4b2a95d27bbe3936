"""AN-PGD's secant search: the bisection's resolution, a verified crossing, and far fewer passes.

Along a ray the criterion is a 1-D function of the step ``η``. A toy model
makes it any function we like with a known root: the input carries ``(z, c)``,
the ray moves ``z`` only, and the logits are ``[0, g(z − c)]`` so that SLM =
``g(z − c)`` with the root at ``η = c``.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from maxmargin.attacks import anpgd_search
from maxmargin.attacks.anpgd import secant_search
from maxmargin.losses import soft_logit_margin

SHAPES = {
    "linear": lambda t: t,
    "convex": lambda t: torch.exp(3 * t) - 1,
    "concave": lambda t: 1 - torch.exp(-3 * t),
    "cubic": lambda t: t + 40 * t ** 3,
    "saturating": lambda t: torch.tanh(25 * t),
    "kink at the root": lambda t: torch.where(t < 0, 0.2 * t, 8 * t),
    "kink below the root": lambda t: torch.where(t < -0.05, 6 * (t + 0.05) - 0.05, t),
}
BOX = (-100.0, 100.0)


class Ray(nn.Module):
    """Logits ``[0, g(z − c)]`` for inputs ``(z, c)``; counts its forward passes."""

    def __init__(self, g) -> None:
        super().__init__()
        self.g, self.passes = g, 0

    def forward(self, x: Tensor) -> Tensor:
        self.passes += 1
        return torch.stack([torch.zeros_like(x[:, 0]), self.g(x[:, 0] - x[:, 1])], 1)


def problem(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    roots = 0.05 + 0.35 * torch.rand(n, generator=g)
    x = torch.stack([torch.zeros(n), roots], 1)
    u = torch.tensor([1.0, 0.0]).expand(n, 2)
    return x, torch.zeros(n, dtype=torch.long), u, roots


@pytest.mark.parametrize("shape", SHAPES)
def test_secant_search_returns_a_verified_point_within_the_resolution_of_the_root(shape):
    model = Ray(SHAPES[shape])
    x, y, u, roots = problem()
    n, top = len(y), 0.5
    tol = torch.full((n,), top / 2 ** 10)
    with torch.no_grad():
        f0 = soft_logit_margin(model(x), y)
        # PGD's last value near eps_init = 0.3, as AN-PGD passes it: an estimate, here 10 % off
        e0 = torch.full((n,), 0.3)
        f_near = 1.1 * soft_logit_margin(model(x + e0[:, None] * u), y)
    model.passes = 0
    hi, found, spent = secant_search(model, x, y, u, torch.zeros(n), torch.full((n,), top), f0, f0,
                                     torch.zeros(n, dtype=torch.bool), soft_logit_margin, tol, BOX, 20,
                                     through=(e0, f_near), first_half=0.05 * e0)
    passes = model.passes
    assert bool(found.all())
    with torch.no_grad():
        at_hi = soft_logit_margin(model(x + hi[:, None] * u), y)
    assert bool((at_hi >= 0).all()), "a returned point must be verified adversarial"
    assert bool((hi >= roots - 1e-6).all()) and bool((hi - roots <= tol + 1e-6).all())
    # 10 bisections take 10 passes of n points; this search takes at most 6 passes, and no more points
    assert passes <= 6, f"{passes} passes"
    assert spent <= 10 * n


def test_rows_without_a_crossing_below_the_top_come_back_unfound_at_the_top():
    model = Ray(SHAPES["linear"])
    x, y, u, roots = problem(16)
    x[8:, 1] = 0.7                     # beyond the top 0.5
    n = len(y)
    with torch.no_grad():
        f0 = soft_logit_margin(model(x), y)
        e0 = torch.full((n,), 0.2)
        f_near = soft_logit_margin(model(x + e0[:, None] * u), y)
    hi, found, _ = secant_search(model, x, y, u, torch.zeros(n), torch.full((n,), 0.5), f0, f0,
                                 torch.zeros(n, dtype=torch.bool), soft_logit_margin, torch.full((n,), 0.5 / 1024),
                                 BOX, 20, through=(e0, f_near))
    assert bool(found[:8].all()) and not bool(found[8:].any())
    assert torch.allclose(hi[8:], torch.full((8,), 0.5))
    assert bool(((hi[:8] - roots[:8]).abs() <= 0.5 / 1024 + 1e-6).all())


def _relu_net(seed: int = 0):
    """A random ReLU net, sharpened, and the inputs it classifies with SLM < 0 under its own labels."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.rand(128, 1, 6, 6)
    with torch.no_grad():
        model[-1].weight.mul_(30)
        model[-1].bias.mul_(30)
        logits = model(x)
        y = logits.argmax(1)
        keep = soft_logit_margin(logits, y) < 0
    return model, x[keep], y[keep]


@pytest.mark.parametrize("norm,e0,emax", [("linf", 0.05, 0.3), ("l2", 0.3, 2.0)])
def test_anpgd_secant_meets_the_bisection_crossing_on_a_relu_net_in_fewer_passes(norm, e0, emax):
    model, x, y = _relu_net()
    passes = {"n": 0}
    model.register_forward_hook(lambda m, i, o: passes.__setitem__("n", passes["n"] + (not torch.is_grad_enabled())))
    out = {}
    for search in ("bisect", "secant"):
        torch.manual_seed(0)
        passes["n"] = 0
        out[search] = anpgd_search(model, x, y, norm, eps_init=e0, eps_max=emax, steps=10, search=search)
        out[search + " passes"] = passes["n"]
    b, s = out["bisect"], out["secant"]
    resolution = emax / 2 ** 10
    with torch.no_grad():
        assert bool((soft_logit_margin(model(s.x_adv), y)[s.found] >= 0).all())
    both = b.found & s.found
    assert int(both.sum()) >= 0.9 * len(y)
    # along a ray through a ReLU net the crossing is usually unique: both searches must meet it
    close = (b.eps - s.eps).abs()[both] <= 2 * resolution + 1e-6
    assert float(close.float().mean()) >= 0.95
    # the clean pass is shared; the bisection spends 10 search passes, the secant at most half
    assert out["secant passes"] <= 6 < out["bisect passes"], (out["secant passes"], out["bisect passes"])


def test_secant_search_needs_no_pass_at_eps_init_on_the_official_bracket():
    # f(eps_init) comes from PGD's last iterate: an MMA step's search is three passes of its batch
    model, x, y = _relu_net(1)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]) if not torch.is_grad_enabled() else None)
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(x)
    calls.clear()
    anpgd_search(model, x, y, "linf", eps_init=0.05, eps_max=0.3, steps=10, search="secant", clean_logits=logits)
    assert calls[0] == 2 * len(x), "the first pass after PGD is the first pair, not a pass at eps_init"
    assert sum(calls) <= 5 * len(x), calls
