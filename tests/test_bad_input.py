"""Bad arguments raise a ValueError whose message names the argument."""
from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

from maxmargin.attacks import anpgd, fgsm, pgd
from maxmargin.margin import estimate_margin


@pytest.fixture
def setup():
    model = make_model("mlp", (1, 8, 8))
    x, y = make_data(4, (1, 8, 8))
    return model, x, y


CASES = [
    (lambda m, x, y: pgd(m, x, y, eps=-0.1), "eps"),
    (lambda m, x, y: pgd(m, x, y, loss="hinge"), "loss"),
    (lambda m, x, y: pgd(m, x, y, norm="l7"), "norm"),
    (lambda m, x, y: pgd(m, x, y[:3]), "y"),
    (lambda m, x, y: pgd(m, x, y + 10), "y"),
    (lambda m, x, y: pgd(m, x, y.float()), "y"),
    (lambda m, x, y: pgd(m, x, y - 10), "y"),
    (lambda m, x, y: pgd(m, x[0, 0, 0], y), "x"),
    (lambda m, x, y: pgd(m, x * 3, y), "x"),
    (lambda m, x, y: pgd(m, x, y, steps=-1), "steps"),
    (lambda m, x, y: pgd(m, x, y, restarts=0), "restarts"),
    (lambda m, x, y: pgd(m, x, y, bounds=(1.0, 0.0)), "bounds"),
    (lambda m, x, y: fgsm(m, x, y, eps=torch.tensor([0.1, -0.1, 0.1, 0.1])), "eps"),
    (lambda m, x, y: anpgd(m, x, y, eps_init=0.1, eps_max=-1.0), "eps_max"),
    (lambda m, x, y: anpgd(m, x, y, eps_init=-0.1), "eps_init"),
    (lambda m, x, y: anpgd(m, x, y, eps_inc=-1.0), "eps_inc"),
    (lambda m, x, y: estimate_margin(m, x, y, eps_max=0.0), "eps_max"),
    (lambda m, x, y: estimate_margin(m, x, y, norm="linf", search_steps=0), "search_steps"),
]


@pytest.mark.parametrize("call,name", CASES)
def test_value_error_names_argument(setup, call, name):
    model, x, y = setup
    with pytest.raises(ValueError, match=name):
        call(model, x, y)
