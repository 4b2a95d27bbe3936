"""Gradient-masking flags come from plain results: no model, no evaluator."""
from __future__ import annotations

import subprocess
import sys

import torch

from maxmargin.diagnostics import masking_flags

Y = torch.arange(10).repeat(10)          # 100 labels, chance 0.1
SHAPE, BOX = (1, 28, 28), (0.0, 1.0)


def _flags(acc, attacks=(), cdf=None, dead=0.0):
    return masking_flags(acc, list(attacks), "linf", Y, SHAPE, BOX, cdf, dead)


def test_an_honest_looking_result_raises_nothing():
    assert _flags({0.1: 0.9, 0.3: 0.5, 0.5: 0.0}, cdf={0.1: 0.9, 0.3: 0.49, 0.5: 0.0}) == []


def test_each_sign_of_masking_is_named():
    assert "rises with ε" in _flags({0.1: 0.5, 0.3: 0.8})[0]
    assert "exceeds chance" in _flags({0.1: 0.9, 0.5: 0.4})[0]
    fgsm = {"attack": "fgsm", "eps": 0.3, "newly_broken": 4, "source": "white-box"}
    assert "FGSM broke 4" in _flags({0.3: 0.5}, [fgsm])[0]
    search = {"attack": "margin-search", "eps": 0.3, "newly_broken": 9, "source": "white-box"}
    assert "margin search found" in _flags({0.3: 0.5}, [search])[0]
    assert "above what the margins predict" in _flags({0.3: 0.5}, cdf={0.3: 0.3})[0]
    assert "input gradients are zero" in _flags({0.3: 0.5}, dead=0.5)[0]


def test_the_flags_module_does_not_import_the_evaluator():
    code = "import sys, maxmargin.diagnostics; print('maxmargin.evaluate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
