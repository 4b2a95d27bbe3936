"""`maxmargin eval` and `margin` flags: nothing silently ignored, clamped or skipped; every line says its norm."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from maxmargin.cli import main
from maxmargin.evaluate import EvalResult
from maxmargin.norm_tables import default_eps_grid
from maxmargin.report import margin_stats

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-run-313d404"
FAST = ["--n", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("flags") / "run"
    shutil.copytree(FIXTURE, run)
    return run


def _refused(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    # the fixture predates checksums: its checkpoint's one-line notice is not part of the error
    err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines() if "has no checksum" not in ln)
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    return err


def test_transfer_sources_outside_the_paper_protocol_are_refused(run, tmp_path, capsys):
    for protocol in ("quick", "autoattack"):
        _refused(capsys, ["eval", str(run), *FAST, "--protocol", protocol, "--transfer-from", str(run),
                          "--out", str(tmp_path)], "--transfer-from", "paper")
    assert not (tmp_path / "eval.json").exists()


def test_n_beyond_the_split_and_malformed_eps_lists_are_refused(run, capsys):
    _refused(capsys, ["eval", str(run), "--n", "99999", "--quiet"], "--n 99999", "the test split has", "examples")
    _refused(capsys, ["margin", str(run), "--n", "99999", "--quiet"], "--n 99999", "the test split has")
    for bad in ("0.1,,0.2", "0.1,", ",0.1", ","):
        _refused(capsys, ["eval", str(run), "--eps", bad, *FAST], "--eps", "empty")


def test_eval_states_its_size_names_the_norm_and_says_where_it_wrote(run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(run), *FAST, "--eps", "0.1,0.2", "--margins", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "evaluating 4 examples × 2 radii × 3 attacks (quick, linf) on cpu"
    summary, wrote = lines[1:-1], lines[-1]
    assert summary and all("linf" in line for line in summary), summary
    assert wrote.startswith(f"wrote {out / 'eval.json'}, ")
    names = wrote[len("wrote "):].split(", ")
    files = [Path(names[0])] + [out / n for n in names[1:]]
    assert {f.name for f in files} == {p.name for p in out.iterdir()}, "the line names every file written"


def test_cross_norm_evaluation_uses_that_norm_and_its_grid(run, tmp_path, capsys):
    assert main(["eval", str(run), *FAST, "--norm", "l2", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["norm"] == "l2" and ev["eps"] == default_eps_grid("digits", "l2")
    assert "(quick, l2)" in stdout and "robust accuracy (l2)" in stdout
    with pytest.raises(SystemExit) as refused:   # argparse's own refusal of an unknown choice
        main(["eval", str(run), "--norm", "l1"])
    assert refused.value.code == 2 and "--norm" in capsys.readouterr().err


def test_the_progress_bar_names_the_attack_and_radius(run, tmp_path, capsys):
    assert main(["eval", str(run), "--n", "4", "--device", "cpu", "--eps", "0.1,0.2", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    for desc in (f"{attack} (linf) at ε={e}" for attack in ("pgd-ce", "pgd-cw") for e in ("0.1", "0.2")):
        assert desc in err, err[-2000:]


def test_margin_reports_one_median_and_says_where_it_wrote(run, tmp_path, capsys):
    assert main(["margin", str(run), *FAST, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"measuring the margins of 4 examples \(linf, search capped at 0\.5\) on cpu", lines[0])
    assert "(linf)" in lines[1]
    assert lines[-1] == (f"wrote {tmp_path / 'margins.json'}, margins.pt, margin_hist.png, margin_cdf.png")
    assert all((tmp_path / f).is_file() for f in ("margins.json", "margins.pt", "margin_hist.png", "margin_cdf.png"))
    st = json.loads((tmp_path / "margins.json").read_text())
    assert st["median"] == st["quantiles"]["0.5"]


def test_median_is_the_half_quantile_everywhere():
    m = torch.tensor([0.1, 0.2, 0.4, 0.8])          # an even count: the lower middle (0.2) is not the median
    assert margin_stats(m)["median"] == pytest.approx(0.3) == margin_stats(m)["quantiles"]["0.5"]
    r = EvalResult(eps=[0.1], clean_accuracy=1.0, robust_accuracy={0.1: 1.0}, robust=torch.ones(1, 4, dtype=torch.bool),
                   by_attack={}, attacks=[], margins=m, certified=m, certify_method="crown")
    d = r.to_dict()
    assert d["margin"]["median"] == pytest.approx(0.3) == d["margin"]["quantiles"]["0.5"]
    assert d["certified"]["median"] == pytest.approx(0.3)


def test_autoattack_is_given_the_seed_of_the_evaluation(monkeypatch):
    """`eval --seed` reaches AutoAttack (which reseeds torch itself) instead of a constant it would silently use."""
    import sys
    import types

    from conftest import make_data, make_model

    from maxmargin.evaluate import evaluate

    seeds: list[int] = []

    class FakeAutoAttack:
        def __init__(self, model, norm, eps, version, seed, device):
            seeds.append(seed)

        def run_standard_evaluation(self, x, y, batch_size):
            return x.clone(), y

    monkeypatch.setitem(sys.modules, "pyautoattack", types.SimpleNamespace(AutoAttack=FakeAutoAttack))
    model = make_model("mlp", (1, 8, 8))
    x, _ = make_data(6, (1, 8, 8))
    with torch.no_grad():
        y = model(x).argmax(1)   # all correct, so AutoAttack has examples to attack
    for seed in (3, 4):
        torch.manual_seed(seed)
        evaluate(model, x, y, eps=[0.1], protocol="autoattack")
    assert seeds == [3, 4]
