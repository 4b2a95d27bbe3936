"""Where we follow the official MMA trainer, and where results would otherwise differ."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maxmargin.methods.mma as mma_mod
import maxmargin.methods.pgd_at as pgd_mod
import maxmargin.train as train_mod
from maxmargin.config import load_preset, preset_names
from maxmargin.evaluate import evaluate
from maxmargin.methods import MMA, PGDAT, build_method


def _net(bn: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net[-1].weight.mul_(30)       # confident logits, so that SLM < 0 holds for most examples
    return net


def _batch():
    """Labels: the BatchNorm net's own predictions (train mode), a quarter of them changed to be wrong."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = _net(bn=True).train()(x).argmax(1)
    y[::4] = (y[::4] + 1) % 5
    return x, y, torch.arange(16)


def _mma_with_record(monkeypatch, model, x, y, index):
    """Run MMA.loss, recording what AN-PGD returned, and the gradient of the loss."""
    seen = {}
    real = mma_mod.anpgd_search

    def spy(*args, **kwargs):
        r = real(*args, **kwargs)
        seen["r"] = r
        return r

    monkeypatch.setattr(mma_mod, "anpgd_search", spy)
    method = MMA("linf", d_max=0.05, eps_min=0.01, steps=5, num_examples=16)
    # some correct examples' radii reach d_max: hinge-dropped rows must be in the batch but not in the loss
    method.eps[:4] = 0.5
    loss, _ = method.loss(model, x, y, index)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads, seen["r"]


def _correct(model, x, y):
    from maxmargin.losses import soft_logit_margin
    with torch.no_grad():
        return soft_logit_margin(model(x), y) < 0


def test_mma_loss_is_one_forward_over_the_mixed_batch_with_batchnorm(monkeypatch):
    model = _net(bn=True).train()
    x, y, index = _batch()
    reference_model = copy.deepcopy(model)
    correct = _correct(copy.deepcopy(model).train(), x, y)
    loss, grads, r = _mma_with_record(monkeypatch, model, x, y, index)
    # the official form: clean forward, then ONE train-mode forward of the mixed batch, masked
    cidx = correct.nonzero().squeeze(1)
    x_mix = x.clone()
    x_mix[cidx] = r.x_adv
    use = torch.zeros(16, dtype=torch.bool)
    use[cidx] = r.found & (r.eps < 0.05)
    assert bool((~use[cidx]).any()) and bool(use.any()), "the batch must hold both kinds of correct rows"
    ce_clean = F.cross_entropy(reference_model(x), y)
    ce_mix = F.cross_entropy(reference_model(x_mix), y, reduction="none")
    ref = ce_clean / 3 + (2 / 3) * ce_mix[use | ~correct].sum() / 16
    ref_grads = torch.autograd.grad(ref, list(reference_model.parameters()))
    assert torch.allclose(loss, ref, atol=1e-6)
    for g, h in zip(grads, ref_grads):
        assert torch.allclose(g, h, atol=1e-5)


def test_mma_loss_without_batchnorm_equals_the_separate_forwards(monkeypatch):
    model = _net(bn=False).train()
    x, y, index = _batch()
    reference_model = copy.deepcopy(model)
    correct = _correct(model, x, y)
    loss, grads, r = _mma_with_record(monkeypatch, model, x, y, index)
    cidx = correct.nonzero().squeeze(1)
    use = r.found & (r.eps < 0.05)
    ce = F.cross_entropy(reference_model(x), y, reduction="none")
    adv = F.cross_entropy(reference_model(r.x_adv[use]), y[cidx][use], reduction="sum")
    ref = ce.mean() / 3 + (2 / 3) * (adv + ce[~correct].sum()) / 16
    ref_grads = torch.autograd.grad(ref, list(reference_model.parameters()))
    assert torch.allclose(loss, ref, atol=1e-6)
    for g, h in zip(grads, ref_grads):
        assert torch.allclose(g, h, atol=1e-5)


def test_mma_presets_choose_the_best_checkpoint_as_the_official_trainer():
    for name in preset_names():
        cfg = load_preset(name)
        if cfg.method != "mma" or cfg.dataset == "digits":
            continue
        assert cfg.margin_eps_max == pytest.approx(1.05 * cfg.d_max, rel=1e-5), name
        assert cfg.margin_attack_loss == "slm" and cfg.margin_eps_init == cfg.val_pgd_eps, name
        train_size = (60_000 if cfg.dataset == "mnist" else 50_000) - cfg.val_size
        assert abs(cfg.eval_every - train_size / cfg.batch_size) <= 1, name


def test_validation_margin_runs_pgd_on_slm_at_the_validation_eps(monkeypatch):
    from maxmargin.data import Split

    seen = {}
    real = train_mod.anpgd_search

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "anpgd_search", spy)
    cfg = load_preset("mnist-linf-mma-0.45")
    cfg.eval_size, cfg.val_pgd_steps, cfg.margin_steps = 8, 1, 1
    split = Split(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (8,)))
    torch.manual_seed(0)
    from maxmargin.models import LeNet5
    train_mod.validate(LeNet5(), cfg, split)
    assert seen["attack_loss"] == "slm" and seen["criterion"] == "lm"
    assert seen["eps_init"] == pytest.approx(0.3) and seen["eps_max"] == pytest.approx(0.4725)


def test_pgd_at_attack_loss(monkeypatch):
    seen = {}

    def spy(model, x, y, **kwargs):
        seen.update(kwargs)
        return x

    monkeypatch.setattr(pgd_mod, "pgd", spy)
    m = PGDAT("linf", 0.3, steps=2, attack_loss="slm")
    m.loss(_net(False), *_batch())
    assert seen["loss"] == "slm"
    with pytest.raises(ValueError, match="loss"):
        PGDAT("linf", 0.3, attack_loss="kl")
    assert load_preset("mnist-linf-pgd-0.3").attack_loss == "slm"
    assert load_preset("cifar10-l2-pgd-1.0").attack_loss == "slm"
    assert load_preset("quick-pgd").attack_loss == "ce"
    assert build_method(load_preset("mnist-linf-pgd-0.3"), 10, "cpu").attack_loss == "slm"


def test_mnist_linf_paper_grid_averages_0_1_to_0_4_and_reports_avgacc():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    x = torch.rand(12, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    r = evaluate(model, x, y, norm="linf", eps=[0.1, 0.2, 0.3, 0.4, 0.5], protocol="quick")
    assert r.averaged == [0.1, 0.2, 0.3, 0.4]
    acc = r.robust_accuracy
    assert r.average_robust_accuracy == pytest.approx(sum(acc[e] for e in r.averaged) / 4)
    assert r.avg_acc == pytest.approx((r.clean_accuracy + sum(acc[e] for e in r.averaged)) / 5)
    d = r.to_dict()
    assert d["averaged_eps"] == [0.1, 0.2, 0.3, 0.4] and d["avg_acc"] == pytest.approx(r.avg_acc)
    # a grid that stays below the universal radius averages everything
    r2 = evaluate(model, x, y, norm="linf", eps=[0.1, 0.2], protocol="quick")
    assert r2.averaged == [0.1, 0.2]
