"""Fast-path options: attacks keep their invariants under bf16 autocast; channels_last works on a CPU too
(same logits, same attack points, checkpoints that load into a plain model); the CUDA-only ones are ignored
on a CPU with a notice."""
from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model

from maxmargin.attacks import anpgd, pgd
from maxmargin.checkpoint import load_model
from maxmargin.cli import main
from maxmargin.models.fast_paths import Autocast, apply_fast_paths
from maxmargin.norms import get_norm

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_attacks_under_bf16_autocast_stay_in_ball_and_box(device, norm, eps, channels_last):
    shape = (3, 32, 32)
    inner = make_model("conv", shape).to(device).eval()
    model = Autocast(inner, torch.bfloat16, channels_last=channels_last)
    x, y = make_data(8, shape)
    x, y = x.to(device), y.to(device)
    out = model(x)
    assert out.dtype == torch.float32
    x_adv = pgd(model, x, y, norm=norm, eps=eps, steps=5)
    assert x_adv.dtype == torch.float32
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert bool((get_norm(norm).measure(x_adv - x) <= eps * (1 + 1e-5)).all())
    x_an, e = anpgd(model, x, y, norm=norm, eps_init=eps / 2, eps_max=eps, steps=3, search_steps=4)
    assert bool((e <= eps * (1 + 1e-5)).all()) and float(x_an.min()) >= 0 and float(x_an.max()) <= 1


def test_cuda_only_fast_paths_are_ignored_on_cpu_with_a_notice():
    model = torch.nn.Linear(3, 2)
    said = []
    same = apply_fast_paths(model, "bf16", False, True, torch.device("cpu"), notice=said.append)
    assert same is model
    assert len(said) == 1 and "ignored on cpu" in said[0] and "amp=bf16" in said[0] and "compile" in said[0]
    assert "channels_last" not in said[0]
    assert apply_fast_paths(model, "off", False, False, torch.device("cpu"), notice=said.append) is model
    assert len(said) == 1


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_channels_last_on_cpu_computes_what_the_plain_model_does(shape):
    plain = make_model("conv", shape).eval()
    fast = apply_fast_paths(make_model("conv", shape).eval(), "off", True, False, torch.device("cpu"),
                            notice=lambda _: pytest.fail("channels_last must not be ignored on a CPU"))
    fast.inner.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = make_data(6, shape)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
    torch.manual_seed(0)
    a = pgd(plain, x, y, eps=0.1, steps=5, random_init=False)
    torch.manual_seed(0)
    b = pgd(fast, x, y, eps=0.1, steps=5, random_init=False)
    # sign steps can flip only where a gradient entry is ~0; nearly every coordinate must agree
    assert float((a - b).abs().gt(1e-4).float().mean()) < 0.01


def test_train_accepts_fast_path_options_on_cpu(tmp_path, capsys):
    # --device cpu: on a GPU machine train would pick cuda, where the options do apply
    assert main(["train", "--preset", "quick-standard", "--out", str(tmp_path / "r"), "--device", "cpu",
                 "--set", "amp=bf16",
                 "--set", "channels_last=true", "--set", "compile=true", "--set", "steps=2", "--set",
                 "eval_every=2", "--set", "eval_size=10", "--set", "val_pgd_steps=1", "--set", "margin_steps=1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ignored on cpu" in out and "channels_last" not in out
    # trained in channels_last: the checkpoint is a plain model's state and evaluates as one
    model, _, _ = load_model(tmp_path / "r" / "checkpoints" / "last.pt")
    assert not any(k.startswith("inner.") for k in model.state_dict())
    with torch.no_grad():
        assert bool(torch.isfinite(model(torch.rand(4, 1, 28, 28))).all())
    assert main(["train", "--preset", "quick-standard", "--out", str(tmp_path / "s"), "--set", "amp=fp8"]) == 2
