"""The PGD engine's objectives: each is ascended, inside the ball and the box, through one loop.

Objectives are called as ``objective(logits, y, clean_logits)``; TRADES's KL
reads the clean logits, the targeted margin reads ``y`` as the class to reach.
"""
from __future__ import annotations

import pytest
import test_graphs
import torch
from conftest import make_data, make_model, own_confident_labels
from test_graphs import Emulated
from torch import nn

from maxmargin.attacks import anpgd_search, graphs, pgd
from maxmargin.attacks._common import frozen, input_grad
from maxmargin.losses import OBJECTIVES, Objective, get_loss, get_objective, kl_divergence, targeted_margin
from maxmargin.methods.trades import kl_pgd
from maxmargin.norms import bcast, get_norm, per_example

emulated = test_graphs.emulated   # the fixture: a CPU stand-in for a captured graph

SHAPE = (1, 8, 8)
EPS = {"linf": 0.1, "l2": 1.0}


def _values(objective: Objective, model: nn.Module, x_at, x, y):
    with torch.no_grad():
        return objective(model(x_at), y, model(x))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_is_ascended_inside_the_ball_and_the_box(kind, norm, name):
    model = make_model(kind, SHAPE).eval()
    x, y = make_data(32, SHAPE)
    objective = get_objective(name)
    if objective.targeted:
        y = (y + 3) % 10          # push towards another class than the data's
    eps = EPS[norm]
    torch.manual_seed(0)
    # the start is random: KL is flat at x itself (its minimum), so a PGD started there cannot move
    start = pgd(model, x, y, norm=norm, eps=eps, steps=0, loss=name)
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, norm=norm, eps=eps, steps=15, loss=name)
    before, after = _values(objective, model, start, x, y), _values(objective, model, x_adv, x, y)
    assert float(after.mean()) > float(before.mean()) + 1e-3
    assert float((after > before).float().mean()) >= 0.9
    assert bool((get_norm(norm).measure(x_adv - x) <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_kl_objective_reads_the_clean_logits():
    logits, clean = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.zeros(5, dtype=torch.long)
    kl = get_objective("kl")
    assert torch.equal(kl(logits, y, clean), kl_divergence(clean, logits))
    assert float(kl(clean, y, clean).abs().max()) < 1e-6          # zero at the clean point
    with pytest.raises(ValueError, match="clean_logits"):
        kl(logits, y)


def test_targeted_objective_and_its_goal():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5]])
    t = torch.tensor([1, 2])
    obj = get_objective("targeted")
    assert torch.equal(obj(logits, t, None), targeted_margin(logits, t))
    assert torch.allclose(obj(logits, t, None), torch.tensor([-2.0, 0.5]))
    assert obj.reached(logits, t).tolist() == [False, True]
    assert get_objective("ce").reached(logits, torch.tensor([0, 1])).tolist() == [False, True]


def test_targeted_restarts_keep_a_point_where_the_target_leads():
    model = make_model("mlp", SHAPE).eval()
    x, y = make_data(32, SHAPE)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 1) % 10
    torch.manual_seed(0)
    one = pgd(model, x, target, eps=0.05, steps=5, loss="targeted")
    torch.manual_seed(0)
    three = pgd(model, x, target, eps=0.05, steps=5, loss="targeted", restarts=3)
    with torch.no_grad():
        hit1, hit3 = model(one).argmax(1) == target, model(three).argmax(1) == target
    # the first restart is the single run; later ones only add points where the target leads
    assert bool(hit3[hit1].all()) and int(hit3.sum()) >= int(hit1.sum())
    assert torch.equal(three[hit1], one[hit1])


def test_kl_pgd_with_restarts_gives_every_subset_its_own_clean_logits():
    model = make_model("conv", SHAPE).eval()
    x, y = make_data(16, SHAPE)
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=0.1, steps=4, loss="kl", restarts=3)
    assert bool((get_norm("linf").measure(x_adv - x) <= 0.1 + 1e-6).all())


def _kl_pgd_by_hand(model, x, norm, eps, steps, step_size, start_std=0.001):
    """TRADES's inner maximization as it was written before the engine ran it."""
    nrm = get_norm(norm)
    e = per_example(eps, x, "eps")
    step = bcast(per_example(step_size, x, "step_size"), x)
    with frozen(model):
        with torch.no_grad():
            target = model(x)
        x_adv = torch.clamp(x + nrm.project(start_std * torch.randn_like(x), e), 0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            g = input_grad(kl_divergence(target, model(x_adv)).sum(), x_adv)
            d = x_adv.detach() + step * nrm.direction(g) - x
            x_adv = torch.clamp(x + nrm.project(d, e), 0.0, 1.0)
    return x_adv.detach()


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_trades_kl_pgd_through_the_engine_equals_the_hand_written_loop(kind, norm):
    model = make_model(kind, SHAPE)          # left in train mode: both must attack in eval mode
    x, _ = make_data(12, SHAPE)
    eps = EPS[norm]
    torch.manual_seed(5)
    engine = kl_pgd(model, x, norm, eps, 7, eps / 4)
    torch.manual_seed(5)
    by_hand = _kl_pgd_by_hand(model, x, norm, eps, 7, eps / 4)
    assert torch.equal(engine, by_hand)
    assert not torch.equal(engine, x) and model.training


def test_unknown_objectives_name_the_allowed_ones_and_loss_names_keep_their_message():
    with pytest.raises(ValueError, match=r"loss must be one of 'ce', 'cw', 'slm', 'lm', 'kl', 'targeted', got 'hinge'"):
        pgd(make_model("mlp", SHAPE), *make_data(2, SHAPE), loss="hinge")
    # PGD-AT checks its attack_loss against the losses: the same names and message as before objectives
    with pytest.raises(ValueError, match=r"^loss must be one of 'ce', 'cw', 'slm', 'lm', got 'hinge'$"):
        get_loss("hinge")
    for name in ("ce", "cw", "slm", "lm"):
        assert get_objective(name).fn is get_loss(name)


def test_anpgd_ascends_any_untargeted_objective():
    model = make_model("mlp", SHAPE).eval()
    x, _ = make_data(12, SHAPE)
    y = own_confident_labels(model, x)
    torch.manual_seed(0)
    r = anpgd_search(model, x, y, "linf", eps_init=0.05, eps_max=0.3, steps=5, attack_loss="kl")
    assert bool((r.eps <= 0.3 + 1e-6).all())
    with pytest.raises(ValueError, match="untargeted"):
        anpgd_search(model, x, y, "linf", eps_init=0.05, eps_max=0.3, steps=5, attack_loss="targeted")


@pytest.mark.parametrize("search", ["bisect", "secant"])
def test_clean_logits_are_padded_inputs_of_a_replayed_graph(emulated, search):
    model = make_model("conv", (1, 12, 12)).double().eval()
    x, _ = make_data(11, (1, 12, 12))
    x = x.double()
    y = own_confident_labels(model, x)
    kw = dict(eps_init=0.05, eps_max=0.4, steps=4, search_steps=6, search=search, attack_loss="kl")
    torch.manual_seed(0)
    eager_pgd = pgd(model, x, y, eps=0.1, steps=4, loss="kl")
    eager = anpgd_search(model, x, y, **kw)
    with graphs.cuda_graphs():
        torch.manual_seed(0)
        replayed_pgd = pgd(model, x, y, eps=0.1, steps=4, loss="kl")
        replayed = anpgd_search(model, x, y, **kw)
    assert torch.allclose(replayed_pgd, eager_pgd, atol=1e-9)
    assert torch.allclose(replayed.eps, eager.eps, atol=1e-9)
    assert Emulated.captures == 2 and not graphs._graphs[model]["broken"]
