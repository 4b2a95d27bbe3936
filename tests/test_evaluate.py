"""Evaluation: exact answers on linear models, the every-attack-must-fail rule, masking flags, reports."""
from __future__ import annotations

import importlib
import json

import pytest
import torch
from conftest import linear_problem, tiny_preset, train_digits_cnn
from torch import nn

import maxmargin.evaluate as ev
from maxmargin.cli import main
from maxmargin.evaluate import AttackSpec, evaluate

WIDE = (-100.0, 100.0)


@pytest.mark.parametrize("protocol", ["quick", "paper"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_robust_accuracy_is_exact(protocol, norm):
    lin, x, y, exact = linear_problem(norm, dim=10, classes=4, batch=120, seed=2)
    grid = [float(torch.quantile(exact, q)) * 1.0001 for q in (0.2, 0.5, 0.8)]
    r = evaluate(lin, x, y, norm=norm, eps=grid, protocol=protocol, bounds=WIDE, batch_size=50)
    assert r.clean_accuracy == 1.0
    for e in grid:
        truth = int((exact > e).sum()) / exact.numel()
        got = r.robust_accuracy[e]
        # every counted break is a verified point inside the ball: never below the truth
        assert got >= truth - 1e-9, (e, got, truth)
        if protocol == "paper":
            assert got == pytest.approx(truth, abs=1e-9), (e, got, truth)
        else:
            # untargeted PGD can stall on the wrong class near the boundary: a few examples at most
            assert got <= truth + 0.03, (e, got, truth)
    assert r.flags == []


class OneHotModel(nn.Module):
    """Predicts the largest of the first C inputs: scripted attacks can flip it at will."""

    def forward(self, x):
        return 10 * x[:, :4]


def _scripted(broken: set[int], ids: torch.Tensor, calls: list, scale: float = 1.0) -> AttackSpec:
    def run(x, y, eps):
        # the id of each example rides in its last coordinate
        who = ids[(x[:, -1] * 1000).round().long()]
        calls.append(set(who.tolist()))
        flip = torch.tensor([int(w) in broken for w in who])
        x_adv = x.clone()
        r = torch.arange(len(y))
        x_adv[r[flip], y[flip]] -= eps[flip] * scale
        x_adv[r[flip], (y[flip] + 1) % 4] += eps[flip] * scale
        return x_adv
    return AttackSpec(f"scripted{sorted(broken)}", 1, 1, "white-box", run)


def test_robust_only_if_every_attack_failed_and_later_attacks_see_survivors(monkeypatch):
    n = 10
    y = torch.arange(n) % 4
    x = torch.full((n, 5), 0.5)
    x[torch.arange(n), y] = 0.6
    x[:, -1] = torch.arange(n) / 1000
    ids = torch.arange(n)
    calls_a, calls_b = [], []
    specs = [_scripted({0, 1}, ids, calls_a), _scripted({1, 2, 7}, ids, calls_b)]
    monkeypatch.setattr(ev, "build_protocol", lambda *a, **k: specs)
    monkeypatch.setattr(ev, "masking_flags", lambda *a, **k: [])
    r = evaluate(OneHotModel(), x, y, norm="linf", eps=[0.04, 0.1], protocol="quick")
    expected = torch.ones(n, dtype=torch.bool)
    expected[[0, 1, 2, 7]] = False
    assert torch.equal(r.robust[1], expected)
    assert r.robust_accuracy[0.1] == pytest.approx(0.6)
    assert r.by_attack["scripted[0, 1]"][0.1] == pytest.approx(0.8)
    assert r.by_attack["scripted[1, 2, 7]"][0.1] == pytest.approx(0.6)
    assert calls_b[-1] == set(range(n)) - {0, 1}, "the second attack must only see survivors"
    newly = {(row["attack"], row["eps"]): row["newly_broken"] for row in r.attacks}
    assert newly[("scripted[1, 2, 7]", 0.1)] == 2
    # at ε=0.04 the scripted steps are too small to flip anything
    assert bool(r.robust[0].all())
    # an attack that leaves the ball is refused, not counted
    specs[:] = [_scripted({3}, ids, [], scale=2.0)]
    with pytest.raises(RuntimeError, match="left the ε-ball"):
        evaluate(OneHotModel(), x, y, norm="linf", eps=[0.1], protocol="quick")


class Rounded(nn.Module):
    """Inputs rounded to 8-bit levels with no straight-through gradient: a classic masked model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


@pytest.fixture(scope="module")
def trained_small_cnn():
    model, ds = train_digits_cnn(300)
    return model, ds.test.images(slice(0, 100)), ds.test.y[:100]


def test_masked_gradients_raise_flags_and_a_plain_model_raises_none(trained_small_cnn):
    model, x, y = trained_small_cnn
    grid = [0.1, 0.3, 0.5]
    plain = evaluate(model, x, y, norm="linf", eps=grid, protocol="quick")
    assert plain.clean_accuracy > 0.85
    assert plain.flags == [], plain.flags
    masked = evaluate(Rounded(model), x, y, norm="linf", eps=grid, protocol="quick")
    assert masked.robust_accuracy[0.5] > 0.5, "PGD should be fooled by the masked gradients"
    text = " ".join(masked.flags)
    assert "input gradients are zero" in text and "chance" in text
    assert all("autoattack" in f for f in masked.flags)


def test_paper_protocol_catches_what_masked_pgd_misses(trained_small_cnn):
    model, x, y = trained_small_cnn
    x, y = x[:40], y[:40]
    masked = Rounded(model)
    r = evaluate(masked, x, y, norm="linf", eps=[0.3], protocol="paper", sources=[model], source_names=["plain"])
    # the transfer attack from the unmasked twin breaks what white-box PGD could not
    transfer = [row for row in r.attacks if row["attack"] == "transfer-pgd"][0]
    assert transfer["newly_broken"] > 0
    assert any("transfer attack from plain" in f for f in r.flags)
    assert r.robust_accuracy[0.3] < 0.3


def test_eval_and_margin_cli_write_reports_and_compare(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--set", "steps=30", "--set", "eval_every=30", "--set", "eval_size=40", "--set", "val_pgd_steps=2",
            "--set", "margin_steps=2", "--quiet"]
    assert main(["train", "--preset", "quick-standard", "--out", str(run), *tiny]) == 0
    assert main(["eval", str(run), "--eps", "0.1,0.2", "--n", "30", "--margins", "--quiet"]) == 0
    for f in ("eval.json", "report.md", "robust_accuracy.png", "margin_hist.png", "margin_cdf.png"):
        assert (run / f).is_file(), f
    data = json.loads((run / "eval.json").read_text())
    assert data["n"] == 30 and set(data["robust_accuracy"]) == {"0.1", "0.2"} and "margin" in data
    out = tmp_path / "m"
    assert main(["margin", str(run / "checkpoints/best.pt"), "--n", "20", "--out", str(out)]) == 0
    stats = json.loads((out / "margins.json").read_text())
    assert stats["n"] == 20 and 0 <= stats["mean"] <= stats["cap"]
    assert (out / "margin_cdf.png").is_file()
    assert main(["report", str(run), str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp/compare.md").is_file() and (tmp_path / "cmp/compare.png").is_file()


def _exit_2(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_eval_cli_error_paths(tmp_path, capsys):
    _exit_2(capsys, ["eval", str(tmp_path / "nope.pt")], "does not exist")
    _exit_2(capsys, ["eval", str(tmp_path)], "no checkpoints")
    _exit_2(capsys, ["report", str(tmp_path)], "eval.json")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    _exit_2(capsys, ["margin", str(bad)], "not a maxmargin checkpoint")
    run = tmp_path / "run"
    assert main(["train", "--preset", "quick-standard", "--out", str(run), "--set", "steps=2", "--set",
                 "eval_every=2", "--set", "eval_size=10", "--set", "val_pgd_steps=1", "--set", "margin_steps=1",
                 "--quiet"]) == 0
    _exit_2(capsys, ["eval", str(run), "--eps", "-0.1"], "--eps")
    _exit_2(capsys, ["eval", str(run), "--eps", "abc"], "--eps")
    try:
        importlib.import_module("pyautoattack")
    except ImportError:
        _exit_2(capsys, ["eval", str(run), "--protocol", "autoattack", "--n", "5"], "pip install")


def test_autoattack_protocol_when_installed(trained_small_cnn):
    pytest.importorskip("pyautoattack", reason="optional extra: pip install -e '.[autoattack]'")
    model, x, y = trained_small_cnn
    x, y = x[:16], y[:16]
    quick = evaluate(model, x, y, norm="linf", eps=[0.1], protocol="quick")
    aa = evaluate(model, x, y, norm="linf", eps=[0.1], protocol="autoattack")
    # AutoAttack is at least as strong as one PGD-CE and one PGD-CW run, up to a stray example
    assert aa.robust_accuracy[0.1] <= quick.robust_accuracy[0.1] + 1 / 16


def test_reproduce_quick_writes_one_report(tmp_path, monkeypatch):
    import maxmargin.commands.reproduce as rp

    monkeypatch.setattr(rp, "load_preset", tiny_preset)
    monkeypatch.setattr(rp, "GRID", [0.2])
    table = rp.reproduce("mnist-linf", scale="quick", out=tmp_path, n=8, progress=False)
    assert all(label in table for label in ("standard", "pgd-0.3", "mma-0.45"))
    text = (tmp_path / "quick" / "reproduce.md").read_text()
    assert "transfer" in text and (tmp_path / "quick" / "compare.png").is_file()
    ev = json.loads((tmp_path / "quick" / "mma-0.45" / "eval.json").read_text())
    sources = {row["source"] for row in ev["attacks"] if row["attack"] == "transfer-pgd"}
    assert sources == {"standard", "pgd-0.3"}
