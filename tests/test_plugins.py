"""Methods, models and datasets as plug-ins; the per-method config table; runs written before it still work."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from maxmargin.cli import main
from maxmargin.config import Config, apply_overrides, from_dict, load_preset, load_toml, to_toml
from maxmargin.errors import UserError
from maxmargin.methods import Method, build, get_method, method_names, register
from maxmargin.methods.mart import MART, boosted_cross_entropy, mart_loss
from maxmargin.options import Options, option

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-run-313d404"
TINY = ["--set", "batch_size=20", "--set", "eval_size=20", "--set", "val_pgd_steps=1", "--set", "margin_steps=1",
        "--set", "eval_batch_size=20", "--quiet"]


def test_every_method_is_registered_and_its_options_are_its_constructors_keywords():
    assert {"standard", "pgd", "mma", "trades", "amm", "mart"} <= set(method_names())
    for name in method_names():
        cls = get_method(name)
        opts = cls.Options()
        for f in dataclasses.fields(opts):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(opts, f.name, getattr(opts, f.name))
        method = build(name, opts, norm="l2" if name == "amm" else "linf", num_examples=4)
        assert method.name == name


def test_options_check_themselves_and_name_the_key():
    with pytest.raises(UserError, match="'eps'"):
        get_method("pgd").Options(eps=-0.1)
    with pytest.raises(UserError, match="eps_min"):
        get_method("mma").Options(d_max=0.2, eps_min=0.3)
    with pytest.raises(UserError, match="search"):
        get_method("mma").Options(search="golden")
    with pytest.raises(ValueError, match="ddn"):       # UserError is a ValueError for library callers
        get_method("mma")(norm="linf", d_max=0.4, eps_min=0.1, steps=3, num_examples=2, inner="ddn")


def test_register_refuses_options_the_constructor_does_not_take():
    @dataclasses.dataclass(frozen=True)
    class Opts(Options):
        gamma: float = option(1.0, "a knob")

    class Bad(Method):
        Options = Opts

        def __init__(self, norm: str) -> None:
            super().__init__()

        def loss(self, model, x, y, index):
            raise AssertionError

    with pytest.raises(TypeError, match="gamma"):
        register("bad-method")(Bad)
    assert "bad-method" not in method_names()


def test_set_finds_keys_in_either_place_and_refuses_the_others():
    cfg = apply_overrides(load_preset("quick-mma"), ["d_max=0.3", "steps=7", "mma.eps_min=0.05", "attack_steps=4"])
    assert (cfg.options.d_max, cfg.options.eps_min, cfg.options.steps, cfg.steps) == (0.3, 0.05, 4, 7)
    # several options land together, so an order that passes through an invalid pair is fine
    cfg = apply_overrides(load_preset("quick-mma"), ["eps_min=0.5", "d_max=0.9"])
    assert (cfg.options.eps_min, cfg.options.d_max) == (0.5, 0.9)
    with pytest.raises(UserError, match="beta.*shared keys: .*batch_size.*mma options: d_max"):
        apply_overrides(load_preset("quick-mma"), ["beta=1"])
    with pytest.raises(UserError, match="not 'pgd'"):
        apply_overrides(load_preset("quick-mma"), ["pgd.eps=0.1"])
    # switching the method keeps the options both have
    cfg = apply_overrides(load_preset("quick-pgd"), ["method=trades", "beta=2"])
    assert (cfg.method, cfg.options.eps, cfg.options.steps, cfg.options.beta) == ("trades", 0.3, 10, 2.0)


def test_cli_set_of_a_key_the_run_does_not_read_exits_2(tmp_path, capsys):
    assert main(["train", "--preset", "quick-standard", "--out", str(tmp_path / "r"), "--set", "d_max=0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d_max" in err and "batch_size" in err
    assert not (tmp_path / "r").exists()


def test_config_toml_round_trips_with_the_table():
    cfg = apply_overrides(load_preset("quick-amm"), ["lam=0.5"])
    again = from_dict(__import__("tomllib").loads(to_toml(cfg)))
    assert again.to_dict() == cfg.to_dict() and again.options.lam == 0.5


def test_flat_config_of_older_runs_loads_into_the_table():
    cfg = load_toml(FIXTURE / "config.toml")
    assert cfg.method == "mma" and cfg.options.steps == 10 and cfg.options.d_max == 0.45 and cfg.steps == 40
    flat = {"method": "pgd", "eps": 0.2, "attack_steps": 5, "pgdls_steps": 3, "d_max": 0.4, "amm_lam": 2.0}
    cfg = from_dict(flat)      # other methods' keys, which old files listed, are dropped
    assert (cfg.options.eps, cfg.options.steps, cfg.options.ls_steps) == (0.2, 5, 3)
    with pytest.raises(UserError, match="bogus"):
        from_dict({"method": "pgd", "bogus": 1})


@pytest.fixture
def legacy_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_a_run_written_before_this_change_evaluates_to_the_same_numbers(legacy_run):
    old = json.loads((legacy_run / "eval.json").read_text())
    assert main(["eval", str(legacy_run), "--n", "40", "--eps", "0.1,0.2", "--quiet"]) == 0
    new = json.loads((legacy_run / "eval.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "by_attack", "attacks", "n", "norm"):
        assert new[key] == old[key], key
    old_m = json.loads((FIXTURE / "margins.json").read_text())
    assert main(["margin", str(legacy_run), "--n", "40", "--quiet"]) == 0
    new_m = json.loads((legacy_run / "margins.json").read_text())
    assert new_m["mean"] == old_m["mean"] and new_m["quantiles"] == old_m["quantiles"]
    assert main(["report", str(legacy_run), "--out", str(legacy_run.parent)]) == 0
    assert "run" in (legacy_run.parent / "compare.md").read_text()


def test_a_run_written_before_this_change_resumes(legacy_run):
    assert main(["train", "--out", str(legacy_run), "--resume", "--set", "steps=42", "--set", "eval_every=2",
                 "--quiet"]) == 0
    cfg = load_toml(legacy_run / "config.toml")         # rewritten with the table
    assert "[mma]" in (legacy_run / "config.toml").read_text() and cfg.steps == 42 and cfg.options.steps == 10
    last = torch.load(legacy_run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 42


MODEL_FILE = '''
from torch import nn

def make(in_channels, num_classes, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))
'''


def test_own_model_by_spec_trains_evaluates_and_certifies(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_test.py").write_text(MODEL_FILE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(["train", "--preset", "quick-standard", "--set", "model=my_models_for_test:make", "--out", str(run),
                 "--set", "steps=20", "--set", "eval_every=20", *TINY]) == 0
    assert load_toml(run / "config.toml").model == "my_models_for_test:make"
    assert main(["eval", str(run), "--n", "20", "--eps", "0.1", "--certify", "ibp", "--quiet"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["certified"]["accuracy"]["0.1"] <= ev["robust_accuracy"]["0.1"] <= ev["clean_accuracy"]
    assert main(["margin", str(run), "--n", "10", "--quiet"]) == 0


def test_a_model_spec_that_does_not_import_exits_2(tmp_path, capsys):
    assert main(["train", "--preset", "quick-standard", "--set", "model=no_such_module_xyz:make",
                 "--out", str(tmp_path / "r"), "--set", "steps=2", *TINY]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_presets_name_prints_every_key_with_its_meaning(capsys):
    assert main(["presets", "quick-mma"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " = " in line]
    assert len(lines) > 40 and all("  # " in line for line in lines)
    assert "[mma]" in out and "d_max = 0.45" in out


def test_train_help_says_where_the_keys_are_and_every_flag_has_help(capsys):
    from maxmargin.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "maxmargin presets NAME" in capsys.readouterr().out


# ------------------------------------------------------------------ MART


def test_mart_loss_matches_a_hand_computation():
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    adv = torch.tensor([[0.5, 1.0, -0.5], [0.0, 1.5, 0.3]])
    y = torch.tensor([0, 2])
    beta = 6.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    total_bce, total_kl = 0.0, 0.0
    for c, a, t in zip(clean.tolist(), adv.tolist(), y.tolist()):
        p, q = softmax(c), softmax(a)
        wrong = max(q[k] for k in range(3) if k != t)
        total_bce += -math.log(q[t]) - math.log(1 - wrong)
        total_kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * (1 - p[t])
    expected = total_bce / 2 + beta * total_kl / 2
    assert float(mart_loss(clean, adv, y, beta)) == pytest.approx(expected, rel=1e-6)
    assert boosted_cross_entropy(adv, y).shape == (2,)


def test_mart_trains_through_the_loop_and_its_loss_falls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(32, 1, 4, 4)
    y = (x.flatten(1)[:, :3].argmax(1)).long()
    method = MART(norm="linf", eps=0.05, steps=3, beta=6.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss, stats = method.loss(model, x, y, torch.arange(32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert losses[-1] < 0.7 * losses[0]


def test_mart_ramps_its_radius_and_every_attack_point_stays_inside_it():
    """ls_steps: the training radius grows linearly to eps (as PGDLS), and each PGD point lies in that ball."""
    from maxmargin.attacks import pgd as real_pgd
    from maxmargin.methods import mart as mart_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4)
    y = torch.zeros(8, dtype=torch.long)
    distances: list[float] = []

    def recording_pgd(model, x, y, **kw):
        x_adv = real_pgd(model, x, y, **kw)
        distances.append(float((x_adv - x).abs().amax()))
        return x_adv

    method = MART(norm="linf", eps=0.3, steps=3, beta=6.0, ls_steps=10)
    try:
        mart_module.pgd = recording_pgd
        seen = []
        for step in (0, 4, 9, 20):
            method.step = step
            seen.append(method.loss(model, x, y, torch.arange(8))[1]["eps"])
    finally:
        mart_module.pgd = real_pgd
    assert seen == pytest.approx([0.03, 0.15, 0.3, 0.3])
    assert all(d <= e + 1e-6 for d, e in zip(distances, seen))
    assert load_preset("quick-mart").options.ls_steps == 600


def test_mart_joins_quickstart_by_its_preset_alone():
    from maxmargin.commands.quickstart import presets_for
    assert presets_for("mart") == ("quick-mart",)
    cfg = load_preset("quick-mart")
    assert cfg.method == "mart" and cfg.options.beta == 6.0
    assert load_preset("mnist-linf-mart-0.3").options.eps == 0.3
    assert load_preset("cifar10-linf-mart-8").options.eps == pytest.approx(8 / 255)


def test_config_reads_method_options_by_name():
    cfg = Config(method="mma")
    assert cfg.d_max == cfg.options.d_max and cfg.attack_steps == cfg.options.steps
    with pytest.raises(AttributeError):
        _ = cfg.beta
