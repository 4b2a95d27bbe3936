"""Models whose input gradient is missing (binarized or constant) are evaluated, never crash."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from maxmargin.attacks import anpgd, ddn, fgsm, pgd
from maxmargin.evaluate import evaluate
from maxmargin.margin import estimate_margin
from maxmargin.models import SmallCNN
from maxmargin.norms import get_norm


class Binarized(nn.Module):
    """Thresholds its input at 0.5 first: the classic defense whose gradient is zero or missing."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x > 0.5).float())


class Constant(nn.Module):
    """Ignores its input altogether and has no parameters."""

    def forward(self, x):
        return torch.tensor([0.0, 1.0, 0.5]).expand(x.shape[0], 3)


def _data(n=12):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["binarized", "constant"])
def test_attacks_return_points_in_the_ball_and_box(norm, kind):
    torch.manual_seed(0)
    model = Binarized(SmallCNN(num_classes=3)) if kind == "binarized" else Constant()
    x, y = _data()
    x0 = x.clone()
    nrm = get_norm(norm)
    eps = 0.3 if norm == "linf" else 3.0
    outs = [pgd(model, x, y, norm=norm, eps=eps, steps=3, restarts=2), fgsm(model, x, y, norm=norm, eps=eps),
            anpgd(model, x, y, norm=norm, eps_init=eps / 2, eps_max=eps, steps=3)[0],
            anpgd(model, x, y, norm=norm, eps_init=eps / 2, eps_max=eps, steps=3, search="secant")[0]]
    if norm == "l2":
        outs.append(ddn(model, x, y, steps=3))
    for x_adv in outs:
        assert bool(((x_adv >= 0) & (x_adv <= 1)).all())
    for x_adv in outs[:4]:
        assert bool((nrm.measure(x_adv - x) <= eps * (1 + 1e-5)).all())
    m = estimate_margin(model, x, y, norm=norm, eps_max=eps, steps=3, rounds=1)
    assert bool(((m >= 0) & (m <= eps)).all())
    assert torch.equal(x, x0)


def test_evaluate_a_binarizing_model_raises_the_dead_gradient_flag():
    torch.manual_seed(0)
    plain = SmallCNN(num_classes=3).eval()
    model = Binarized(plain).eval()
    x, y = _data(20)
    with torch.no_grad():
        y = model(x).argmax(1)
    r = evaluate(model, x, y, norm="linf", eps=[0.1, 0.3], protocol="paper", sources=[plain],
                 source_names=["plain"])
    assert r.clean_accuracy == 1.0
    names = {row["attack"] for row in r.attacks}
    assert {"random-search", "transfer-pgd"} <= names       # the gradient-free attacks still ran
    assert any("input gradients are zero" in f for f in r.flags)
    constant = evaluate(Constant(), x, torch.full_like(y, 1), norm="linf", eps=[0.1], protocol="quick")
    assert constant.clean_accuracy == 1.0 and any("input gradients are zero" in f for f in constant.flags)


def test_eval_and_margin_commands_on_a_binarizing_checkpoint(tmp_path, monkeypatch, capsys):
    import maxmargin.models as models
    from maxmargin.cli import main

    monkeypatch.setitem(models.MODELS, "binarized_cnn", lambda **kw: Binarized(SmallCNN(**kw)))
    run = tmp_path / "run"
    assert main(["train", "--preset", "quick-standard", "--set", "model=binarized_cnn", "--out", str(run),
                 "--set", "steps=20", "--set", "eval_every=20", "--set", "eval_size=20", "--set",
                 "val_pgd_steps=2", "--set", "margin_steps=2", "--quiet"]) == 0
    assert main(["eval", str(run), "--n", "20", "--eps", "0.1,0.3", "--quiet"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert any("input gradients are zero" in f for f in ev["flags"])
    assert main(["margin", str(run), "--n", "10", "--quiet"]) == 0
    assert json.loads((run / "margins.json").read_text())["n"] == 10
