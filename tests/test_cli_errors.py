"""Exit codes: the user's mistake is exit 2 with one line; a bug is exit 1 with its traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

import maxmargin.commands.eval as eval_cmd
import maxmargin.commands.margin as margin_cmd
from maxmargin.checkpoint import arch_of, model_from_arch, save_checkpoint
from maxmargin.cli import main
from maxmargin.commands.runs import evaluate_run
from maxmargin.config import load_preset
from maxmargin.errors import UserError

TINY = ["--set", "steps=2", "--set", "eval_every=2", "--set", "eval_size=10", "--set", "val_pgd_steps=1",
        "--set", "margin_steps=1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", "--preset", "quick-standard", "--out", str(run), *TINY]) == 0
    return run


def test_user_error_is_a_value_error_for_library_callers():
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError):
        raise UserError("caught by `except ValueError`")


def _one_line(capsys, argv, word):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and word in err, err
    return err


def test_user_errors_exit_2_with_one_line(run, tmp_path, capsys):
    _one_line(capsys, ["eval", str(run), "--eps", "0.1,abc"], "--eps")
    _one_line(capsys, ["report", str(tmp_path)], "eval.json")
    (tmp_path / "eval.json").write_text('{"eps": [0.1]}')
    _one_line(capsys, ["report", str(tmp_path)], "lacks")


def test_a_multi_line_user_error_is_still_one_line(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise UserError("first line\nsecond line")
    monkeypatch.setattr(margin_cmd, "margin_command", fail)
    err = _one_line(capsys, ["margin", "anything"], "first line second line")
    assert err.startswith("maxmargin: error: ")


@pytest.mark.parametrize("bug", [ValueError("a library argument check tripped"), RuntimeError("shape mismatch"),
                                 KeyError("missing")])
def test_internal_errors_exit_1_with_the_traceback(monkeypatch, capsys, bug):
    def fail(*args, **kwargs):
        raise bug
    monkeypatch.setattr(eval_cmd, "eval_command", fail)
    assert main(["eval", "anything"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(bug).__name__ in err
    assert "maxmargin: error:" not in err and "internal error" in err.splitlines()[-1]


def test_a_bug_exits_1_in_a_real_process(tmp_path):
    # a library ValueError no command-line check anticipated: not the user's mistake
    code = ("import sys, maxmargin.commands.report as r\n"
            "def boom(*a, **k):\n    raise ValueError('bug')\n"
            "r.report_command = boom\nfrom maxmargin.cli import main\nsys.exit(main(['report', 'x']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr and "ValueError: bug" in p.stderr


def test_command_layer_checks_values_before_any_work(run):
    for kwargs, word in ((dict(protocol="fast"), "--protocol"), (dict(split="train"), "--split"),
                         (dict(eps=[0.1, float("nan")]), "finite"), (dict(eps=[-0.1]), ">= 0"),
                         (dict(certify="exact"), "--certify"), (dict(n=0), "--n"),
                         (dict(batch_size=0), "--batch-size")):
        with pytest.raises(UserError, match=word):
            evaluate_run(run, **kwargs)
    with pytest.raises(UserError, match="--eps"):
        evaluate_run(run, eps=[])
    with pytest.raises(UserError, match="--eps-max"):
        margin_cmd.margin_run(run, eps_max=float("nan"))


def test_transfer_source_of_another_input_shape_is_refused(run, tmp_path, capsys):
    cfg = load_preset("quick-standard")
    arch = arch_of(cfg, (3, 32, 32), 10)
    save_checkpoint(tmp_path / "rgb.pt", {"arch": arch, "config": cfg.to_dict(), "step": 0,
                                          "model": model_from_arch(arch).state_dict()})
    argv = ["eval", str(run), "--n", "4", "--protocol", "paper", "--transfer-from", str(tmp_path / "rgb.pt")]
    _one_line(capsys, argv, "its model takes")


def test_eps_zero_with_margins_is_not_an_error(run, tmp_path):
    # the margin search's cap falls back to 1 when every ε is 0, instead of a library ValueError
    assert main(["eval", str(run), "--eps", "0", "--n", "4", "--margins", "--out", str(tmp_path), "--quiet"]) == 0
