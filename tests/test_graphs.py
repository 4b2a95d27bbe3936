"""The CUDA-graph path's bookkeeping, on a CPU: static buffers, padding to buckets, cache invalidation.

A stand-in for the captured graph reruns the captured loop on the static
buffers at every replay, which is what a replay does; everything around it
(padding, copies in and out, the cache keyed on parameter memory, label
checks) is the real code. tests/test_gpu.py checks real captures on a GPU.
"""
from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model, own_confident_labels

from maxmargin.attacks import anpgd, graphs, pgd
from maxmargin.norms import get_norm

SHAPE = (1, 12, 12)


class Emulated(graphs._Graphed):
    captures = 0

    def capture(self, run, seen, steps):
        Emulated.captures += 1
        run(1, seen)
        self._run = lambda: run(steps)
        self.out = self._run()

    def replay(self):
        for buf, new in zip(self.out, self._run()):
            buf.copy_(new)


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(graphs, "_Graphed", Emulated)
    monkeypatch.setattr(graphs, "usable", lambda x: graphs.cuda_graphs_enabled())
    Emulated.captures = 0
    graphs._graphs.clear()
    yield
    graphs._graphs.clear()


def _setup(batch):
    model = make_model("conv", SHAPE).double().eval()
    x, y = make_data(batch, SHAPE)
    return model, x.double(), y


def _confident(batch):
    """A model whose own (sharpened) predictions are the labels: SLM < 0 everywhere, so AN-PGD attacks all."""
    model, x, _ = _setup(batch)
    return model, x, own_confident_labels(model, x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_padded_replay_equals_the_eager_loop(emulated, norm, eps):
    model, x, y = _setup(21)
    for n in (21, 5, 16, 1):   # buckets 32, 16, 16, 16: padding rows must not leak into the result
        torch.manual_seed(n)
        eager = pgd(model, x[:n], y[:n], norm=norm, eps=eps, steps=6)
        with graphs.cuda_graphs():
            torch.manual_seed(n)
            replayed = pgd(model, x[:n], y[:n], norm=norm, eps=eps, steps=6)
        assert replayed.shape == eager.shape
        assert torch.allclose(replayed, eager, atol=1e-9, rtol=0)
    assert Emulated.captures == 2


def test_per_example_eps_and_anpgd_go_through_the_replay(emulated):
    model, x, y = _confident(11)
    eps = torch.linspace(0.0, 0.2, 11, dtype=torch.float64)
    torch.manual_seed(0)
    eager = pgd(model, x, y, eps=eps, steps=5)
    an_eager = anpgd(model, x, y, eps_init=0.05, eps_max=0.3, steps=5, search_steps=4)
    with graphs.cuda_graphs():
        torch.manual_seed(0)
        replayed = pgd(model, x, y, eps=eps, steps=5)
        an_replayed = anpgd(model, x, y, eps_init=0.05, eps_max=0.3, steps=5, search_steps=4)
    assert torch.allclose(replayed, eager, atol=1e-9)
    assert bool((get_norm("linf").measure(replayed - x) <= eps + 1e-12).all())
    assert torch.allclose(an_replayed[1], an_eager[1], atol=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_anpgd_bisection_is_captured_with_its_pgd_as_one_graph_and_equals_eager(emulated, norm):
    model, x, y = _confident(11)
    e0 = torch.linspace(0.02, 0.3, 11, dtype=torch.float64)
    kw = dict(norm=norm, eps_init=e0, eps_max=0.4 if norm == "linf" else 3.0, steps=5, search_steps=6)
    torch.manual_seed(0)
    eager = anpgd(model, x, y, **kw)
    assert bool((eager[1] > 0).all())
    with graphs.cuda_graphs():
        for _ in range(2):   # capture, then replay
            torch.manual_seed(0)
            replayed = anpgd(model, x, y, **kw)
            assert torch.allclose(replayed[0], eager[0], atol=1e-9) and torch.allclose(replayed[1], eager[1], atol=1e-9)
    tags = [key[0][0] for key in graphs._graphs[model]["graphs"]]
    assert tags == ["anpgd-bisect"] and Emulated.captures == 1, "PGD and the bisection must be one graph"


def test_secant_search_keeps_its_eager_subsets_around_a_graphed_pgd(emulated):
    model, x, y = _confident(9)
    kw = dict(eps_init=0.05, eps_max=0.4, steps=4, search_steps=6, search="secant")
    torch.manual_seed(0)
    eager = anpgd(model, x, y, **kw)
    with graphs.cuda_graphs():
        torch.manual_seed(0)
        replayed = anpgd(model, x, y, **kw)
    assert torch.allclose(replayed[1], eager[1], atol=1e-9)
    # the PGD (with its last value, which places the first pair) is one graph; the search stays eager
    assert [key[0][0] for key in graphs._graphs[model]["graphs"]] == ["pgd-value"]


def test_cache_follows_weight_updates_and_recaptures_when_parameters_move(emulated):
    model, x, y = _setup(8)

    def attack():
        return pgd(model, x, y, eps=0.1, steps=4, random_init=False)

    with graphs.cuda_graphs():
        first = attack()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.5)   # an optimizer step: same memory, new values
        updated = attack()
        assert Emulated.captures == 1
        model.float().double()   # new parameter tensors
        moved = attack()
        assert Emulated.captures == 2
    assert not torch.allclose(first, updated)
    assert torch.allclose(moved, attack(), atol=1e-9)


def test_labels_beyond_the_classes_are_refused_before_a_replay(emulated):
    model, x, y = _setup(8)
    with graphs.cuda_graphs():
        pgd(model, x, y, eps=0.1, steps=3)
        with pytest.raises(ValueError, match="label 10"):
            pgd(model, x, torch.full_like(y, 10), eps=0.1, steps=3)


def test_graphs_stay_off_for_cpu_inputs_and_outside_the_scope():
    x = torch.zeros(2, 3)
    with graphs.cuda_graphs():
        assert graphs.cuda_graphs_enabled() and not graphs.usable(x)
    assert not graphs.cuda_graphs_enabled()
