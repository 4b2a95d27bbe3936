"""Our FGSM and PGD (no random start) agree with foolbox 3's independent implementation."""
from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

from maxmargin.attacks import fgsm, pgd
from maxmargin.norms import get_norm

fb = pytest.importorskip("foolbox", reason="foolbox is in the test extra: pip install -e '.[test]'")


@pytest.fixture(params=["mlp", "conv"])
def setting(request):
    shape = (1, 28, 28)
    model = make_model(request.param, shape).double().eval()
    x, y = make_data(16, shape)
    return model, x.double(), y


def test_fgsm_matches_foolbox(setting):
    model, x, y = setting
    eps = 0.1
    _, ref, _ = fb.attacks.FGSM()(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    ours = fgsm(model, x, y, norm="linf", eps=eps)
    assert torch.allclose(ours, ref, atol=1e-10)


def test_fgm_l2_matches_foolbox(setting):
    model, x, y = setting
    eps = 1.0
    _, ref, _ = fb.attacks.L2FastGradientAttack()(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    ours = fgsm(model, x, y, norm="l2", eps=eps)
    assert torch.allclose(ours, ref, atol=1e-8)


@pytest.mark.parametrize("norm,eps,attack", [
    ("linf", 0.1, "LinfPGD"),
    ("l2", 1.0, "L2PGD"),
])
def test_pgd_matches_foolbox(setting, norm, eps, attack):
    model, x, y = setting
    steps, step = 10, 2.5 * eps / 10
    atk = getattr(fb.attacks, attack)(abs_stepsize=step, steps=steps, random_start=False)
    _, ref, _ = atk(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    ours = pgd(model, x, y, norm=norm, eps=eps, steps=steps, random_init=False)
    assert torch.allclose(ours, ref, atol=1e-8)
    # and it is a real attack, not a no-op that trivially agrees
    assert float(get_norm(norm).measure(ours - x).max()) > eps / 2
