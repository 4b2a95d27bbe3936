"""Certified training (IBP, CROWN-IBP): bounds checked by hand, their gradients, their schedules, and their effect."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxmargin.bounds import Region, margin_lower_bounds, trace
from maxmargin.certify import certified_margin
from maxmargin.commands.quickstart import presets_for
from maxmargin.config import load_preset, quick_methods
from maxmargin.errors import UserError
from maxmargin.methods import build
from maxmargin.methods.bound_losses import Chain, chain_of, margin_bounds, worst_logits
from maxmargin.models.small_cnn import SmallCNN
from maxmargin.norms import get_norm


def tiny() -> nn.Sequential:
    """2 → 2 → ReLU → 2; at x = (0.5, 0.5), ε = 0.1 (L∞) its bounds are worked out by hand below."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -0.5]))
        net[2].weight.copy_(torch.tensor([[2.0, 1.0], [1.0, -1.0]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.1]))
    return net


X = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.double)
Y = torch.tensor([0, 1])


def test_bounds_of_a_tiny_net_by_hand():
    # Box [0.4, 0.6]²: h1 = x1 − x2 ∈ [−0.2, 0.2] (unstable), h2 = x1 + x2 − 0.5 ∈ [0.3, 0.7] (active).
    # f0 − f1 = r1 + 2 r2 − 0.1. IBP with the specification folded into the last layer:
    #   y = 0: 0 + 2·0.3 − 0.1 = 0.5 (the logits' own intervals would give 0.3 − 0.0 = 0.3);
    #   y = 1: −0.2 − 2·0.7 + 0.1 = −1.5.
    # CROWN-IBP, y = 1: −r1 ≥ −(h1 + 0.2)/2 (the upper line of the unstable ReLU), r2 = h2, so
    #   f1 − f0 ≥ −2.5 x1 − 1.5 x2 + 1, least at x = (0.6, 0.6): −1.4; y = 0: r1 ≥ 0 (slope 0, as u = −l), 0.5.
    chain = Chain(tiny(), X)
    ibp = margin_bounds(chain, X, Y, 0.1, "linf", beta=0.0)
    crown = margin_bounds(chain, X, Y, 0.1, "linf", beta=1.0)
    half = margin_bounds(chain, X, Y, 0.1, "linf", beta=0.5)
    assert torch.allclose(ibp, torch.tensor([[0.5], [-1.5]], dtype=torch.double))
    assert torch.allclose(crown, torch.tensor([[0.5], [-1.4]], dtype=torch.double))
    assert torch.allclose(half, torch.tensor([[0.5], [-1.45]], dtype=torch.double))


def test_the_loss_is_kappa_clean_ce_plus_the_bound_ce_by_hand():
    net = tiny()
    method = build("ibp", norm="linf", options=build("ibp").Options(eps=0.1, kappa_end=0.25))
    method.step = 0                              # no warm-up, no ramp: eps 0.1 and kappa 0.25 at once
    loss, stats = method.loss(net, X, Y, torch.arange(2))
    clean = F.cross_entropy(net(X), Y)
    # worst-case logits: z_y = 0, z_j = −lower(f_y − f_j): [0, −0.5] for y = 0 and [1.5, 0] for y = 1
    bound = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1.5))) / 2
    assert float(loss.detach()) == pytest.approx(0.25 * float(clean.detach()) + 0.75 * bound, rel=1e-9)
    assert stats["eps"] == 0.1 and stats["kappa"] == 0.25 and stats["cert_acc"] == 0.5


def test_worst_logits_put_minus_the_bounds_beside_a_zero_at_the_label():
    low = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z = worst_logits(low, torch.tensor([1, 0]))
    assert torch.equal(z, torch.tensor([[-1.0, 0.0, -2.0], [0.0, -3.0, -4.0]]))


def test_bounds_equal_the_certifiers_ibp_and_enclose_sampled_margins():
    torch.manual_seed(0)
    net = SmallCNN(width=4).double()
    x, y = torch.rand(6, 1, 28, 28, dtype=torch.double), torch.randint(0, 10, (6,))
    eps = 0.02
    ours = margin_bounds(Chain(net, x), x, y, eps, "linf", beta=0.0)
    region = Region(x, torch.full((6,), eps, dtype=torch.double), get_norm("linf"), 0.0, 1.0)
    assert torch.allclose(ours, margin_lower_bounds(trace(net, x), region, y, "ibp"), atol=1e-10)
    crown = margin_bounds(Chain(net, x), x, y, eps, "linf", beta=1.0)
    with torch.no_grad():
        for _ in range(20):
            pts = (x + eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
            logits = net(pts)
            margins = logits.gather(1, y[:, None]) - logits
            keep = torch.ones_like(margins, dtype=torch.bool).scatter_(1, y[:, None], False)
            margins = margins[keep].reshape(6, 9)
            assert bool((margins >= ours - 1e-9).all()) and bool((margins >= crown - 1e-9).all())


def test_bounds_reach_every_parameter_and_follow_in_place_updates():
    torch.manual_seed(1)
    net = SmallCNN(width=4)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    chain = Chain(net, x)
    for beta in (0.0, 1.0):
        net.zero_grad()
        margin_bounds(chain, x, y, 0.05, "linf", beta).sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), (beta, name)
    with torch.no_grad():                        # what an optimizer step does: the same tensors, new values
        for p in net.parameters():
            p.mul_(1.5)
    for beta in (0.0, 1.0):
        kept = margin_bounds(chain, x, y, 0.05, "linf", beta)
        assert torch.allclose(kept, margin_bounds(Chain(net, x), x, y, 0.05, "linf", beta))


def test_schedules_warm_up_then_ramp_eps_kappa_and_beta():
    opts = build("crown-ibp").Options(eps=0.4, warmup_steps=10, ramp_steps=20, kappa_end=0.5)
    method = build("crown-ibp", opts, norm="linf")
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    net = SmallCNN(width=4)
    seen = {}
    for step in (5, 19, 40):
        method.step = step
        seen[step] = method.loss(net, x, y, torch.arange(3))[1]
    assert seen[5]["eps"] == 0 and seen[5]["kappa"] == 1 and "cert_acc" not in seen[5]
    assert seen[19]["eps"] == pytest.approx(0.2) and seen[19]["kappa"] == pytest.approx(0.75)
    assert seen[19]["beta"] == pytest.approx(0.5)
    assert seen[40]["eps"] == pytest.approx(0.4) and seen[40]["kappa"] == pytest.approx(0.5)
    assert "beta" not in seen[40]                # beta 0: IBP alone, no CROWN pass


def test_models_the_bounds_cannot_cover_while_training_are_refused():
    bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(5, 1, 2, 2)
    with pytest.raises(UserError, match="BatchNorm in train mode"):
        chain_of(bn, x, {})
    bn.eval()
    chain_of(bn, x, {})                          # eval mode: a fixed affine map

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            z = z.flatten(1)
            return self.b(z + torch.relu(self.a(z)))

    with pytest.raises(UserError, match="chain"):
        Chain(Residual(), x)
    with pytest.raises(UserError, match="kappa_end"):
        build("ibp").Options(kappa_end=1.5)


@pytest.mark.parametrize("name, options", [
    ("ibp", dict(eps=0.1, ramp_steps=30, kappa_end=0.0)),
    ("crown-ibp", dict(eps=0.1, ramp_steps=30, kappa_end=0.0)),
    ("cert-mma", dict(d_max=0.3, grow=0.03)),
])
def test_a_few_steps_raise_the_certified_radius_of_a_toy_problem(name, options):
    torch.manual_seed(0)
    n = 200
    y = torch.randint(0, 2, (n,))
    x = (0.4 + 0.2 * y[:, None] + 0.1 * torch.randn(n, 20)).clamp(0, 1)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def train(loss_of, steps: int) -> None:
        for step in range(steps):
            opt.zero_grad()
            loss_of(step).backward()
            opt.step()

    train(lambda _: F.cross_entropy(net(x), y), 30)      # a standard start: accurate, barely certified
    before = certified_margin(net, x, y, method="ibp", eps_max=0.5).mean()
    start = copy.deepcopy((net.state_dict(), opt.state_dict()))
    train(lambda _: F.cross_entropy(net(x), y), 60)
    standard = certified_margin(net, x, y, method="ibp", eps_max=0.5).mean()
    net.load_state_dict(start[0])
    opt.load_state_dict(start[1])
    method = build(name, build(name).Options(**options), norm="linf", num_examples=n)

    def bound_loss(step: int) -> torch.Tensor:
        method.step = step
        return method.loss(net, x, y, torch.arange(n))[0]

    train(bound_loss, 60)
    after = certified_margin(net, x, y, method="ibp", eps_max=0.5).mean()
    # measured: 0.035 at the start, 0.046 after 60 more standard steps, 0.10 after 60 of IBP, CROWN-IBP or
    # cert-mma
    assert float(after) > 2 * float(before) and float(after) > 1.8 * float(standard)


def test_quick_presets_load_and_join_quickstart():
    assert {"ibp", "crown-ibp", "cert-mma"} <= set(quick_methods())
    assert presets_for("ibp,crown-ibp,cert-mma") == ("quick-ibp", "quick-crown-ibp", "quick-cert-mma")
    for name, method in (("quick-ibp", "ibp"), ("quick-crown-ibp", "crown-ibp"), ("mnist-linf-ibp-0.3", "ibp"),
                         ("mnist-linf-crown-ibp-0.3", "crown-ibp")):
        cfg = load_preset(name)
        assert cfg.method == method and cfg.norm == "linf"
        assert cfg.options.ramp_steps > 0 and cfg.options.kappa_end == 0.5
    assert load_preset("quick-cert-mma").method == "cert-mma"


def test_cert_mma_finds_proven_radii_and_remembers_them():
    torch.manual_seed(2)
    net = SmallCNN(width=4).double()
    x, y = torch.rand(5, 1, 28, 28, dtype=torch.double), torch.randint(0, 10, (5,))
    y = net(x).argmax(1)                         # correctly classified: each has a certified margin
    method = build("cert-mma", build("cert-mma").Options(d_max=0.05, search_steps=10), norm="linf",
                   num_examples=8)
    chain = Chain(net, x)
    for start in (torch.zeros(5), torch.full((5,), 0.01), torch.full((5,), 0.04)):
        found = method.certified(chain, x, y, start.double())
        reference = certified_margin(net, x, y, method="ibp", eps_max=0.05, search_steps=30)
        assert bool((margin_bounds(chain, x, y, found, "linf") > 0).all(1)[found > 0].all())
        assert torch.allclose(found, reference, atol=0.05 / 2**9)    # bisection resolution (warm or cold)
    index = torch.tensor([1, 3, 4, 6, 7])
    method.loss(net, x, y, index)
    assert torch.allclose(method.eps[index], found.float(), atol=0.05 / 2**9)
    assert bool((method.eps[[0, 2, 5]] == 0).all()) and bool((method.updated[index] == 0).all())
