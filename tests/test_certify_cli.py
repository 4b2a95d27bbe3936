"""`maxmargin margin/eval/report` with certified lower bounds, end to end on a briefly trained run."""
from __future__ import annotations

import json

import pytest
import torch

from maxmargin.cli import main
from maxmargin.diagnostics import certificate_flags, sandwich_flags


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cert") / "run"
    tiny = ["--set", "steps=60", "--set", "eval_every=60", "--set", "eval_size=40", "--set", "val_pgd_steps=2",
            "--set", "margin_steps=2", "--quiet"]
    assert main(["train", "--preset", "quick-standard", "--out", str(run), *tiny]) == 0
    return run


def test_margin_certify_writes_both_bounds_per_example(run, tmp_path):
    out = tmp_path / "m"
    assert main(["margin", str(run), "--n", "24", "--certify", "crown-ibp", "--out", str(out), "--quiet"]) == 0
    stats = json.loads((out / "margins.json").read_text())
    upper, lower = (torch.tensor(stats["per_example"][k]) for k in ("upper", "lower"))
    assert upper.shape == lower.shape == (24,)
    assert bool((lower <= upper + 1e-6).all()), "a certified lower bound above the attack's upper bound"
    assert bool((lower > 0).any())
    saved = torch.load(out / "margins.pt", weights_only=True)
    assert torch.allclose(saved["lower"], lower) and torch.allclose(saved["upper"], upper)
    cert, emp = stats["certified"]["accuracy"], stats["certified"]["empirical_accuracy"]
    assert set(cert) == set(emp) and all(cert[e] <= emp[e] for e in cert)
    assert (out / "margin_sandwich.png").is_file()
    assert stats["flags"] == []


def test_a_certificate_above_the_attack_is_flagged_in_margins_json(run, tmp_path, monkeypatch, capsys):
    import maxmargin.commands.margin as margin_cmd

    def too_high(model, x, y, **kw):
        return torch.full((x.shape[0],), 10.0)      # above every verified adversarial point's norm

    monkeypatch.setattr(margin_cmd, "certified_margin", too_high)
    out = tmp_path / "m"
    assert main(["margin", str(run), "--n", "8", "--certify", "ibp", "--out", str(out), "--quiet"]) == 0
    stats = json.loads((out / "margins.json").read_text())
    assert len(stats["flags"]) == 1 and "above the norm of a verified adversarial point" in stats["flags"][0]
    assert "WARNING" in capsys.readouterr().err
    assert sandwich_flags(torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.3])) == []


def test_eval_certify_adds_a_column_never_above_robust_accuracy(run, tmp_path):
    out = tmp_path / "e"
    assert main(["eval", str(run), "--eps", "0.02,0.05,0.1", "--n", "24", "--certify", "ibp", "--out", str(out),
                 "--quiet"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    cert = ev["certified"]["accuracy"]
    assert ev["certified"]["method"] == "ibp" and set(cert) == set(ev["robust_accuracy"])
    assert all(cert[e] <= ev["robust_accuracy"][e] for e in cert)
    assert "certified (ibp)" in (out / "report.md").read_text()
    assert not any("certified robust" in f for f in ev["flags"])
    assert main(["report", str(out), "--out", str(tmp_path / "cmp")]) == 0
    assert "· certified" in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_broken_certificate_is_flagged():
    robust = torch.tensor([[True, False, True], [True, False, False]])
    assert certificate_flags(robust, torch.tensor([0.3, 0.0, 0.1]), [0.1, 0.2]) == []
    flags = certificate_flags(robust, torch.tensor([0.3, 0.0, 0.25]), [0.1, 0.2])
    assert len(flags) == 1 and "ε=0.2" in flags[0]


def test_certify_bad_input_exits_2(run, tmp_path, capsys):
    assert main(["margin", str(run), "--eps-max", "0", "--certify", "crown", "--out", str(tmp_path)]) == 2
    assert "--eps-max" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["margin", str(run), "--certify", "exact"])
    assert e.value.code == 2
    assert not (tmp_path / "margins.json").exists()
