from __future__ import annotations

import pytest
import torch

from maxmargin.losses import cross_entropy, cw_loss, get_loss, logit_margin, soft_logit_margin
from maxmargin.norms import get_norm, per_example


def test_losses_on_known_logits():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5]])
    y = torch.tensor([0, 1])
    assert torch.allclose(logit_margin(logits, y), torch.tensor([-2.0, 0.5]))
    slm = soft_logit_margin(logits, y)
    assert torch.allclose(slm, torch.tensor([torch.log(torch.tensor(torch.e + 1)) - 3.0,
                                             torch.logsumexp(torch.tensor([0.0, 2.5]), 0) - 2.0]))
    assert bool((slm >= logit_margin(logits, y)).all())
    assert torch.allclose(cw_loss(logits, y), torch.tensor([48.0, 50.5]))
    assert torch.allclose(cw_loss(torch.tensor([[100.0, 0.0]]), torch.tensor([0])), torch.tensor([0.0]))
    assert torch.allclose(cross_entropy(logits, y), torch.nn.functional.cross_entropy(logits, y, reduction="none"))


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="loss"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="norm.*'linf'.*'l2'"):
        get_norm("l3")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_random_and_direction(norm):
    n = get_norm(norm)
    d = torch.randn(5, 3, 4, 4) * 3
    eps = torch.tensor([0.0, 0.1, 0.5, 1.0, 100.0])
    p = n.project(d, eps)
    assert bool((n.measure(p) <= eps * (1 + 1e-6) + 1e-7).all())
    # inside the ball nothing moves
    assert torch.allclose(p[4], d[4])
    r = n.random(d, eps)
    assert bool((n.measure(r) <= eps * (1 + 1e-6) + 1e-7).all())
    assert bool((n.measure(r[1:]) > 0).all())
    u = n.direction(d)
    assert torch.allclose(n.measure(u), torch.ones(5))
    # steepest ascent: <g, u> equals the dual norm of g
    assert torch.allclose((u * d).flatten(1).sum(1), n.dual(d), rtol=1e-5)
    assert torch.equal(n.direction(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_per_example_rejects_negative_and_wrong_length():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="eps"):
        per_example(-0.1, x)
    with pytest.raises(ValueError, match="eps"):
        per_example(torch.tensor([0.1, 0.2]), x)
    assert torch.equal(per_example(0.5, x), torch.full((3,), 0.5))
