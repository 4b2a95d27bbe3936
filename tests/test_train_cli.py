"""The run loop and the command line: smoke run, resume, and every error path (exit 2)."""
from __future__ import annotations

import csv
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pytest
import torch

from maxmargin.cli import main
from maxmargin.config import load_toml

TINY_ANY = ["--set", "batch_size=20", "--set", "eval_size=40", "--set", "val_pgd_steps=2", "--set", "margin_steps=2",
            "--set", "eval_batch_size=40", "--quiet"]
# the attacking methods' PGD steps too (the flat key of older runs, which --set still takes)
TINY = [*TINY_ANY, "--set", "attack_steps=3"]


def run_cli(*args: str) -> int:
    return main(list(args))


def test_smoke_run_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--preset", "quick-mma", "--out", str(out), "--set", "steps=6",
                   "--set", "eval_every=2", *TINY) == 0
    for name in ("config.toml", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    cfg = load_toml(out / "config.toml")
    assert cfg.steps == 6 and cfg.method == "mma" and cfg.batch_size == 20
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    best_row = max(rows, key=lambda r: float(r["val_margin"]))
    best = torch.load(out / "checkpoints/best.pt", weights_only=True)
    assert best["step"] == int(best_row["step"])
    assert best["val_margin"] == pytest.approx(float(best_row["val_margin"]))
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert last["method"]["eps"].shape == (7000,)
    written = tomllib.loads((out / "config.toml").read_text())
    assert {"d_max", "eps_min", "clean_weight", "search", "steps"} <= set(written["mma"])
    assert written["mma"]["steps"] == 3 and written["steps"] == 6, "--set attack_steps reaches the method's table"
    assert not set(written) & {"beta", "pgdls_steps", "attack_loss", "eps", "attack_step", "d_max", "attack_steps"}
    assert not any(k.startswith("amm_") for k in written)


@pytest.mark.parametrize("method,own,foreign", [
    ("pgd", {"eps", "attack_loss", "ls_steps", "steps"}, {"d_max", "beta", "lam"}),
    ("trades", {"eps", "beta", "steps"}, {"d_max", "attack_loss", "lam"}),
    ("amm", {"lam", "top_k"}, {"eps", "d_max", "beta", "steps"}),
    ("mart", {"eps", "beta", "steps"}, {"d_max", "attack_loss", "lam"}),
])
def test_a_runs_config_keeps_the_methods_options_in_its_table(method, own, foreign):
    from maxmargin.config import Config, from_dict, to_toml
    written = tomllib.loads(to_toml(from_dict({"method": method}, base=Config())))
    assert own <= set(written[method]) and not set(written[method]) & foreign
    assert {"lr", "batch_size", "norm", "seed", "steps"} <= set(written)
    assert not (set(written) - {method}) & own - {"steps"}, "method options stay out of the top level"


def test_standard_training_has_no_table():
    from maxmargin.config import Config, to_toml
    assert "[" not in "".join(line for line in to_toml(Config()).splitlines() if not line.startswith("lr_"))


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    common = ["--preset", "quick-mma", "--set", "eval_every=20", "--seed", "5", *TINY]
    assert run_cli("train", "--out", str(tmp_path / "full"), "--set", "steps=60", *common) == 0
    assert run_cli("train", "--out", str(tmp_path / "cut"), "--set", "steps=40", *common) == 0
    assert run_cli("train", "--out", str(tmp_path / "cut"), "--resume", "--set", "steps=60", "--quiet") == 0
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 60
    assert float(a["method"]["eps"].max()) > 0, "MMA memory never moved: the test would not see a lost memory"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["method"]["eps"], b["method"]["eps"])
    rows_a = list(csv.DictReader((tmp_path / "full/metrics.csv").open()))
    rows_b = list(csv.DictReader((tmp_path / "cut/metrics.csv").open()))
    assert [r["val_margin"] for r in rows_a] == [r["val_margin"] for r in rows_b]


def _expect_exit_2(capsys, *args: str, match: str) -> None:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert match in err, err


def test_error_paths_exit_2_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "r")
    _expect_exit_2(capsys, "train", "--preset", "no-such-preset", "--out", out, match="unknown preset")
    _expect_exit_2(capsys, "train", "--preset", "quick-mma", "--out", out, "--set", "bogus=1", match="bogus")
    _expect_exit_2(capsys, "train", "--preset", "quick-mma", "--out", out, "--set", "steps=abc", match="steps")
    _expect_exit_2(capsys, "train", "--preset", "quick-pgd", "--out", out, "--set", "eps=-0.1", match="eps")
    _expect_exit_2(capsys, "train", "--preset", "quick-mma", "--out", out, "--set", "norm=l3", match="norm")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_exit_2(capsys, "train", "--preset", "mnist-linf-mma-0.45", "--data", str(empty), "--out", out,
                   match="missing")
    _expect_exit_2(capsys, "train", "--preset", "quick-mma", "--out", out, "--resume", match="does not exist")
    assert not (tmp_path / "r").exists(), "a failed start must leave nothing on disk"


def test_resume_errors_other_architecture_and_truncated(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("train", "--preset", "quick-standard", "--out", str(out), "--set", "steps=2",
                   "--set", "eval_every=2", *TINY_ANY) == 0
    _expect_exit_2(capsys, "train", "--out", str(out), "--resume", "--set", "model=lenet5",
                   "--set", "steps=4", match="small_cnn")
    _expect_exit_2(capsys, "train", "--preset", "quick-standard", "--out", str(out), match="--resume")
    last = out / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    _expect_exit_2(capsys, "train", "--out", str(out), "--resume", "--set", "steps=4", match="truncated")


def test_presets_lists_every_paper_model(capsys):
    assert run_cli("presets") == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    expected = {"mnist-linf-mma-0.45", "mnist-linf-omma-0.45", "mnist-standard", "cifar10-standard",
                "quick-standard", "quick-pgd", "quick-mma"}
    expected |= {f"mnist-linf-pgd-{e}" for e in ("0.1", "0.2", "0.3", "0.4")}
    expected |= {f"mnist-l2-{k}-{d}" for k in ("mma", "omma") for d in ("2.0", "4.0", "6.0")}
    expected |= {f"mnist-l2-pgd-{e}" for e in ("1.0", "2.0", "3.0", "4.0")}
    expected |= {f"cifar10-linf-{k}-{d}" for k in ("mma", "omma") for d in (12, 20, 32)}
    expected |= {f"cifar10-linf-pgd-{e}" for e in range(4, 33, 4)}
    expected |= {f"cifar10-l2-{k}-{d}" for k in ("mma", "omma") for d in ("1.0", "2.0", "3.0")}
    expected |= {f"cifar10-l2-pgd-{e}" for e in ("0.5", "1.0", "1.5", "2.0", "2.5")}
    assert expected <= listed


def test_paper_preset_values():
    from maxmargin.config import load_preset
    c = load_preset("cifar10-linf-mma-32")
    assert (c.model, c.optimizer, c.lr, c.batch_size, c.steps) == ("wrn28_4", "sgd", 0.3, 128, 50000)
    assert c.d_max == pytest.approx(32 / 255) and c.eps_min == 0.005 and c.attack_steps == 10
    assert c.lr_milestones == [20000, 30000, 40000] and c.lr_values == [0.09, 0.03, 0.009]
    m = load_preset("mnist-linf-omma-0.45")
    assert (m.model, m.lr, m.batch_size, m.steps, m.clean_weight) == ("lenet5", 1e-4, 50, 100000, 0.0)
    assert m.d_max == 0.45 and m.eps_min == 0.1 and m.attack_steps == 40 and m.val_size == 5000


def test_entry_point_exit_code_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "maxmargin", "train", "--preset", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("maxmargin: error: unknown preset")


def test_quickstart_trains_its_runs_and_writes_a_comparison(tmp_path, monkeypatch, capsys):
    import json

    from conftest import tiny_preset

    import maxmargin.commands.quickstart as qs
    from maxmargin.norm_tables import table_eps_grid

    monkeypatch.setattr(qs, "load_preset", tiny_preset)
    monkeypatch.setattr(qs, "N_TEST", 20)
    table = qs.quickstart(tmp_path, device="cpu", progress=False)
    assert all(name in table for name in qs.PRESETS)
    for name in qs.PRESETS:
        ev = json.loads((tmp_path / name / "eval.json").read_text())
        acc = [ev["robust_accuracy"][str(e)] for e in table_eps_grid("digits", "linf")]
        assert ev["n"] == 20 and acc == sorted(acc, reverse=True) and acc[0] <= ev["clean_accuracy"]
        for f in ("report.md", "robust_accuracy.png", "margin_hist.png", "margin_cdf.png"):
            assert (tmp_path / name / f).is_file(), f
    assert (tmp_path / "compare.md").is_file() and (tmp_path / "compare.png").is_file()
    # a second call reuses the finished runs instead of training again
    qs.quickstart(tmp_path, device="cpu", progress=False)
    assert capsys.readouterr().out.count("reusing the finished run") == len(qs.PRESETS)


def test_quickstart_methods_selects_presets_and_rejects_unknown(capsys):
    from maxmargin.commands.quickstart import presets_for

    assert presets_for(None) == ("quick-standard", "quick-pgd", "quick-mma", "quick-ibp")
    assert presets_for("trades, amm,mma-ddn") == ("quick-trades", "quick-amm", "quick-mma-ddn")
    assert run_cli("quickstart", "--methods", "standard,bogus", "--out", "/nonexistent/qs") == 2
    assert "bogus" in capsys.readouterr().err
