"""Bound ops behind one interface: soundness of each relaxation, of whole networks, the registry and its errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxmargin.attacks import pgd
from maxmargin.bounds import (
    AdaptiveAvgPool,
    AvgPool,
    BoundOp,
    LeakyRelu,
    Mean,
    Region,
    Sigmoid,
    Standardize,
    Tanh,
    Unsupported,
    bound_op,
    layer_bounds,
    margin_lower_bounds,
    registry,
    trace,
)
from maxmargin.certify import certified_margin
from maxmargin.margin import estimate_margin
from maxmargin.norms import get_norm

NORMS = ["linf", "l2"]
METHODS = ["ibp", "crown"]


# ------------------------------------------------------------- relaxations, op by op

def _intervals(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals of every kind: straddling 0 (the kink or the inflection point), one-sided, wide, tiny, points."""
    g = torch.Generator().manual_seed(0)
    centre = torch.cat([torch.randn(400, generator=g) * 3, torch.randn(100, generator=g) * 30,
                        torch.zeros(20), torch.tensor([-8.0, 8.0, 0.5, -0.5])])
    width = torch.cat([torch.rand(300, generator=g) * 10, torch.rand(150, generator=g) * 100,
                       torch.full((40,), 1e-6), torch.zeros(34)])
    lo = (centre - width[: len(centre)] * torch.rand(len(centre), generator=g)).to(dtype)
    return lo, lo + width[: len(centre)].to(dtype)


ELEMENTWISE = [Sigmoid(), Tanh(), LeakyRelu(0.01), LeakyRelu(0.2), LeakyRelu(0.0), LeakyRelu(1.0),
               LeakyRelu(1.5), LeakyRelu(-0.3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ELEMENTWISE, ids=lambda op: f"{type(op).__name__}{getattr(op, 'alpha', '')}")
def test_relaxation_lines_and_interval_enclose_the_function_on_every_interval(op, dtype):
    lo, hi = _intervals(dtype)
    sl, bl, su, bu = op.lines(lo, hi)
    ilo, ihi = op.interval([(lo, hi)])
    t = torch.linspace(0, 1, 513, dtype=dtype)[:, None]
    z = lo + t * (hi - lo)                                      # a dense grid of each interval, ends included
    fz = _reference(op, z)
    # evaluating a line at z rounds by a few ulps of |z| and |f| (the intercept cancels the slope's term)
    tol = (1e-13 if dtype == torch.float64 else 3e-6) * (1 + fz.abs() + z.abs())
    assert bool((sl * z + bl <= fz + tol).all()), "a lower line crosses the function"
    assert bool((su * z + bu >= fz - tol).all()), "an upper line crosses the function"
    assert bool((ilo <= fz + tol).all() and (ihi >= fz - tol).all())


def _reference(op: BoundOp, z: torch.Tensor) -> torch.Tensor:
    """The activation computed independently of the op (in float64)."""
    zd = z.double()
    if isinstance(op, Sigmoid):
        out = torch.sigmoid(zd)
    elif isinstance(op, Tanh):
        out = torch.tanh(zd)
    else:
        out = torch.where(zd >= 0, zd, op.alpha * zd)
    return out.to(z.dtype)


@pytest.mark.parametrize("op", [Sigmoid(), Tanh()], ids=["sigmoid", "tanh"])
def test_s_shaped_relaxations_touch_the_function(op):
    """Sound but not vacuous: across the inflection point each line meets the function (tangent or chord)."""
    lo = torch.tensor([-3.0, -0.5, -6.0, -1.0], dtype=torch.float64)
    hi = torch.tensor([0.5, 3.0, 6.0, 1.0], dtype=torch.float64)
    sl, bl, su, bu = op.lines(lo, hi)
    z = lo + torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None] * (hi - lo)
    fz = op.f(z)
    assert float((su * z + bu - fz).amin(0).max()) < 1e-6
    assert float((fz - sl * z - bl).amin(0).max()) < 1e-6


def test_backward_step_of_an_activation_is_a_lower_bound_for_both_signs():
    op = Tanh()
    lo, hi = torch.tensor([[-2.0, -0.3, 0.4]]), torch.tensor([[1.0, 0.2, 3.0]])
    a = torch.tensor([[[1.0, -2.0, 0.5], [-1.0, 3.0, -0.25]]])           # [B=1, S=2, 3]
    (coef,), const = op.backward(a, [(lo, hi)], [(3,)])
    z = lo + torch.rand(5000, 3) * (hi - lo)
    exact = (a[0][None] * torch.tanh(z)[:, None]).sum(2)               # [5000, S]
    linear = (coef[0][None] * z[:, None]).sum(2) + const[0]
    assert bool((linear <= exact + 1e-6).all())


# ------------------------------------------------------------- whole networks

def _mlp(act: nn.Module, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), act, nn.Linear(12, 10), _copy(act), nn.Linear(10, 4))


def _cnn(act: nn.Module, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), act, nn.AvgPool2d(2), nn.Conv2d(3, 4, 3), _copy(act),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 6), nn.LeakyReLU(0.1), nn.Linear(6, 4))


def _copy(m: nn.Module) -> nn.Module:
    return type(m)(**({"negative_slope": m.negative_slope} if hasattr(m, "negative_slope") else {}))


MLP_IN, CNN_IN = (1, 4, 4), (1, 8, 8)
NETS = [("mlp-sigmoid", lambda: _mlp(nn.Sigmoid(), 0), MLP_IN), ("mlp-tanh", lambda: _mlp(nn.Tanh(), 1), MLP_IN),
        ("mlp-leaky", lambda: _mlp(nn.LeakyReLU(0.2), 2), MLP_IN),
        ("cnn-sigmoid", lambda: _cnn(nn.Sigmoid(), 3), CNN_IN), ("cnn-tanh", lambda: _cnn(nn.Tanh(), 4), CNN_IN),
        ("cnn-leaky", lambda: _cnn(nn.LeakyReLU(0.05), 5), CNN_IN)]
NET_IDS = [n for n, _, _ in NETS]


def _scale_up(net: nn.Sequential, factor: float) -> nn.Sequential:
    """Larger weights push pre-activations across the S-curves' bends and the kinks, where bounds can fail."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(factor)
    return net


def _samples(x0: torch.Tensor, r: torch.Tensor, norm: str, k: int, seed: int) -> torch.Tensor:
    """``[k, B, *x]`` points of the ball ∩ box: inside, on the sphere, and (L∞) at vertices."""
    g = torch.Generator().manual_seed(seed)
    shape = (k, *x0.shape)
    rr = r.reshape(1, -1, *([1] * (x0.dim() - 1))).to(x0)
    if norm == "linf":
        u = torch.rand(shape, generator=g, dtype=x0.dtype) * 2 - 1
        u[: k // 2] = u[: k // 2].sign()
    else:
        u = torch.randn(shape, generator=g, dtype=x0.dtype)
        u = u / u.flatten(2).norm(dim=2).reshape(k, -1, *([1] * (x0.dim() - 1)))
        u[k // 2:] *= torch.rand((k - k // 2, x0.shape[0]) + (1,) * (x0.dim() - 1), generator=g, dtype=x0.dtype)
    return (x0 + rr * u).clamp(0, 1)      # clipping to the box moves each point towards x0: still in the ball


def _check_enclosure(net: nn.Sequential, x: torch.Tensor, r: float, norm: str, method: str, tol: float) -> None:
    with torch.no_grad():
        y = net(x).argmax(1)
        nodes = trace(net, x)
        assert len(nodes) == len(net) + 1, "one node per layer"
        radius = torch.full((x.shape[0],), r, dtype=x.dtype)
        region = Region(x, radius, get_norm(norm), 0.0, 1.0)
        bounds = layer_bounds(nodes, region, method)
        low = margin_lower_bounds(nodes, region, y, method)
        pts = _samples(x, radius, norm, 300, seed=7)
        flat = pts.reshape(-1, *x.shape[1:])
        for i, (lo, hi) in enumerate(bounds):
            v = net[:i](flat).reshape(pts.shape[0], *lo.shape)
            assert bool((v >= lo - tol).all() and (v <= hi + tol).all()), f"node {i} ({nodes[i].name}) escapes"
        logits = net(flat).reshape(pts.shape[0], x.shape[0], -1)
        diff = logits.gather(2, y[None, :, None].expand(pts.shape[0], -1, 1)) - logits
        keep = torch.ones_like(logits[0], dtype=torch.bool).scatter_(1, y[:, None], False)
        margins = diff[:, keep].reshape(pts.shape[0], x.shape[0], -1)
        assert bool((margins >= low - tol).all()), "a margin bound is above a sampled margin"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,factory,shape", NETS, ids=NET_IDS)
def test_bounds_enclose_sampled_activations_and_margins(name, factory, shape, norm, method):
    net = _scale_up(factory(), 3.0).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, *shape, generator=g, dtype=torch.float64)
    r = {"linf": 0.15, "l2": 0.6}[norm]
    _check_enclosure(net, x, r, norm, method, tol=1e-9)


@pytest.mark.parametrize("norm", NORMS)
def test_bounds_enclose_samples_in_float32(norm):
    for _, factory, shape in NETS[::2]:
        net = _scale_up(factory(), 3.0).eval()
        x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2))
        for method in METHODS:
            _check_enclosure(net, x, {"linf": 0.1, "l2": 0.4}[norm], norm, method, tol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,factory,shape", NETS, ids=NET_IDS)
def test_no_attack_breaks_a_certified_radius(name, factory, shape, norm):
    net = factory().eval()
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    cap = {"linf": 0.5, "l2": 2.0}[norm]
    est = estimate_margin(net, x, y, norm=norm, eps_max=cap, steps=30, targets=2, rounds=1)
    ibp, crown = (certified_margin(net, x, y, norm=norm, method=m, eps_max=cap) for m in METHODS)
    assert bool((crown >= ibp).all()) and bool((crown > 0).any())
    assert bool((crown <= est + 1e-6).all()), "a certified radius above an attack's margin"
    for loss in ("cw", "ce"):       # at CROWN's radius, the larger of the two
        x_adv = pgd(net, x, y, norm=norm, eps=crown, steps=30, loss=loss, restarts=4)
        with torch.no_grad():
            assert bool((net(x_adv).argmax(1) == y).all()), "PGD broke a certified example"


class _Functional(nn.Module):
    """The same activations called as functions and methods."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.a, self.b, self.c, self.d = nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.a(x.flatten(1)), 0.3)
        h = torch.sigmoid(self.b(h)) + F.leaky_relu(h, negative_slope=0.1)
        h = torch.tanh(self.c(h)) - self.c(h).sigmoid() * 0.5
        return self.d(F.leaky_relu(h) + h.tanh())


@pytest.mark.parametrize("norm", NORMS)
def test_functional_activations_are_traced_to_their_ops_and_bounds_hold(norm):
    net = _Functional().double().eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    nodes = trace(net, x)
    alphas = sorted(n.op.alpha for n in nodes if isinstance(n.op, LeakyRelu))
    assert alphas == [0.01, 0.1, 0.3]
    assert sum(isinstance(n.op, Sigmoid) for n in nodes) == 2 and sum(isinstance(n.op, Tanh) for n in nodes) == 2
    y = net(x).argmax(1)
    r = torch.full((5,), {"linf": 0.1, "l2": 0.3}[norm], dtype=torch.float64)
    region = Region(x, r, get_norm(norm), 0.0, 1.0)
    pts = _samples(x, r, norm, 400, seed=9).reshape(-1, *x.shape[1:])
    with torch.no_grad():
        logits = net(pts).reshape(400, 5, -1)
    for method in METHODS:
        lo, hi = layer_bounds(nodes, region, method)[-1]
        assert bool((logits >= lo - 1e-9).all() and (logits <= hi + 1e-9).all())
        low = margin_lower_bounds(nodes, region, y, method)
        assert bool((low <= _margins(logits, y).amin(0) + 1e-9).all())


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y − f_j`` for ``j ≠ y`` in ascending ``j``: ``[k, B, classes − 1]``."""
    diff = logits.gather(2, y[None, :, None].expand(logits.shape[0], -1, 1)) - logits
    keep = torch.ones_like(logits[0], dtype=torch.bool).scatter_(1, y[:, None], False)
    return diff[:, keep].reshape(logits.shape[0], logits.shape[1], -1)


def test_leaky_relu_slope_comes_from_the_module():
    net = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.25), nn.Linear(3, 2))
    (op,) = [n.op for n in trace(net, torch.rand(2, 2)) if isinstance(n.op, LeakyRelu)]
    assert op.alpha == 0.25


# ------------------------------------------------------------- average pooling on the input

def _dense(fn, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map of one example, column by column (float64)."""
    n = 1
    for s in shape:
        n *= s
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return fn(eye).reshape(n, -1).T


POOLS = [
    ("avgpool2d", lambda: nn.AvgPool2d(2), (2, 6, 6)),
    ("avgpool2d-pad-exclude-ceil", lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
     (2, 7, 7)),
    ("avgpool2d-divisor", lambda: nn.AvgPool2d(3, 2, padding=1, divisor_override=5), (1, 6, 6)),
    ("avgpool1d-pad", lambda: nn.AvgPool1d(3, 2, padding=1), (2, 9)),
    ("adaptive2d-uneven", lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 8, 7)),
    ("adaptive1d", lambda: nn.AdaptiveAvgPool1d(4), (3, 10)),
]


class _FunctionalPool(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return F.avg_pool2d(x, 2, 1, count_include_pad=False, padding=1)
        if self.kind == "adaptive":
            return F.adaptive_avg_pool2d(x, 3)
        return x.mean(dim=(2, 3), keepdim=True)


POOLS += [("F.avg_pool2d", lambda: _FunctionalPool("avg"), (2, 5, 5)),
          ("F.adaptive_avg_pool2d", lambda: _FunctionalPool("adaptive"), (1, 7, 7)),
          ("mean", lambda: _FunctionalPool("mean"), (2, 4, 4))]


@pytest.mark.parametrize("name,factory,shape", POOLS, ids=[p[0] for p in POOLS])
def test_average_pooling_on_the_input_bounds_the_l2_ball_exactly(name, factory, shape):
    """Per neuron the bound is the dense computation's: the tighter of ``W x0 ± r‖W_i‖₂`` and the box's interval.

    Before pooling had ``W² z``, a pool applied to the input got only the box's
    interval: at this radius (no clipping, ``‖W_i‖₂ < ‖W_i‖₁``) that is looser, and the test failed.
    """
    pool = factory().double().eval()
    x = 0.3 + 0.4 * torch.rand(3, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = torch.tensor([0.05, 0.2, 0.3], dtype=torch.float64)
    net = nn.Sequential(pool, nn.Flatten())
    nodes = trace(net, x)
    op = nodes[1].op
    assert isinstance(op, (AvgPool, AdaptiveAvgPool, Mean))
    w = _dense(lambda z: pool(z), shape)                     # [out, in]
    ones = torch.ones(1, *shape, dtype=torch.float64)
    assert torch.allclose(op.sq_fn(ones).flatten(), (w * w).sum(1), atol=1e-12), "W² z is not the squared weights"
    centre = pool(x).flatten(1)
    ball = r[:, None] * (w * w).sum(1).sqrt()
    rr = r.reshape(-1, *[1] * len(shape))
    box_lo, box_hi = (x - rr).clamp(0, 1), (x + rr).clamp(0, 1)
    # W ≥ 0: the box's interval is the pool of the box's ends
    want_lo = torch.maximum(pool(box_lo).flatten(1), centre - ball)
    want_hi = torch.minimum(pool(box_hi).flatten(1), centre + ball)
    lo, hi = layer_bounds(nodes, Region(x, r, get_norm("l2"), 0.0, 1.0), "ibp")[1]
    assert torch.allclose(lo.flatten(1), want_lo, atol=1e-12) and torch.allclose(hi.flatten(1), want_hi, atol=1e-12)
    assert bool((want_hi - want_lo < pool(box_hi).flatten(1) - pool(box_lo).flatten(1) - 1e-6).any())
    pts = _samples(x, r, "l2", 500, seed=3)
    v = pool(pts.reshape(-1, *shape)).reshape(500, *lo.shape)
    assert bool((v >= lo - 1e-12).all() and (v <= hi + 1e-12).all())


@pytest.mark.parametrize("norm", NORMS)
def test_a_model_starting_with_average_pooling_certifies_soundly(norm):
    torch.manual_seed(0)
    net = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    for method in METHODS:
        _check_enclosure(net.double(), x.double(), {"linf": 0.1, "l2": 0.5}[norm], norm, method, tol=1e-9)
        net.float()
        cert = certified_margin(net, x, y, norm=norm, method=method, eps_max=2.0)
        assert bool((cert > 0).any())
        x_adv = pgd(net, x, y, norm=norm, eps=cert, steps=40, loss="cw", restarts=5)
        with torch.no_grad():
            assert bool((net(x_adv).argmax(1) == y).all())


# ------------------------------------------------------------- the registry and its errors

def test_unsupported_layer_names_its_module_path_and_type():
    net = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.SiLU()), nn.Linear(4, 2))
    with pytest.raises(ValueError) as err:
        certified_margin(net, torch.rand(3, 4), torch.zeros(3, dtype=torch.int64))
    msg = str(err.value)
    assert "layer '1.2' (torch.nn.modules.activation.SiLU)" in msg
    assert "%" not in msg and "call_module" not in msg and "num_users" not in msg


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.lin(x))


class WithBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), Block())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class RootFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).exp()


def test_unsupported_function_names_the_function_and_the_module_calling_it():
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError) as err:
        certified_margin(WithBlock(), x, y)
    msg = str(err.value)
    assert "torch.sin called in 'body.1' (" in msg and "Block)" in msg, msg
    assert "%" not in msg and "call_function" not in msg and "num_users" not in msg
    with pytest.raises(ValueError, match=r"torch\.Tensor\.exp called in the forward of .*RootFunction"):
        certified_margin(RootFunction(), x, y)


def test_a_configuration_an_op_refuses_is_named_with_the_reason():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(ValueError, match=r"layer '1' \(torch\.nn\.modules\.pooling\.MaxPool2d\): ceil_mode"):
        certified_margin(net, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))


class Cube(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x ** 3


def cube(x: torch.Tensor) -> torch.Tensor:
    """A plain function of ours: registered, the tracer must keep it as one call."""
    return x * x * x


class UsesCube(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.cube, self.b = nn.Linear(4, 5), Cube(), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(cube(self.cube(self.a(x))))


def test_adding_an_op_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))   # leave the real table as it was
    x, y = torch.rand(6, 4, dtype=torch.float64), torch.zeros(6, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"operator\.pow called in 'cube' \(.*Cube\)"):
        certified_margin(UsesCube().double(), x, y)

    @bound_op(Cube, cube)
    class CubeOp(BoundOp):
        """Monotone: the interval is exact; no linear bound (the driver uses the interval)."""

        def interval(self, ins):
            lo, hi = ins[0]
            return lo ** 3, hi ** 3

    net = UsesCube().double().eval()
    nodes = trace(net, x)
    assert sum(isinstance(n.op, CubeOp) for n in nodes) == 2
    with torch.no_grad():
        y = net(x).argmax(1)
    for norm in NORMS:
        r = torch.full((6,), 0.2, dtype=torch.float64)
        region = Region(x, r, get_norm(norm), 0.0, 1.0)
        pts = _samples(x, r, norm, 300, seed=1).reshape(-1, 4)
        with torch.no_grad():
            logits = net(pts).reshape(300, 6, -1)
        for method in METHODS:
            low = margin_lower_bounds(nodes, region, y, method)
            assert bool((low <= _margins(logits, y).amin(0) + 1e-9).all())
        assert bool((certified_margin(net, x, y, norm=norm, eps_max=1.0) >= 0).all())


def test_standardization_is_a_declared_op_and_bounds_does_not_import_models():
    from maxmargin.models import WideResNet

    wrn = WideResNet(10, 1).eval()
    nodes = trace(wrn, torch.rand(2, 3, 32, 32))
    assert [type(n.op) for n in nodes[:2]][1] is Standardize
    code = ("import sys, maxmargin.bounds, maxmargin.certify; "
            "bad = [m for m in sys.modules if m.startswith('maxmargin.models')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unsupported_is_refused_not_guessed():
    """torch.add with alpha, a product of two traced tensors and broadcasting sums are refused."""
    class AddAlpha(nn.Module):
        def forward(self, x):
            return torch.add(x, x, alpha=2.0)

    class Product(nn.Module):
        def forward(self, x):
            return x * x

    for model, what in ((AddAlpha(), "alpha"), (Product(), "two traced")):
        with pytest.raises(ValueError, match=what):
            trace(model, torch.rand(2, 3))
    assert issubclass(Unsupported, Exception)
