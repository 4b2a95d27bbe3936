"""Malformed input to every subcommand: exit 2, one line naming the problem, no traceback, nothing half-written."""
from __future__ import annotations

import gzip
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from maxmargin.cli import main

TINY = ["--set", "steps=2", "--set", "eval_every=2", "--set", "eval_size=10", "--set", "val_pgd_steps=1",
        "--set", "margin_steps=1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--preset", "quick-standard", "--out", str(run), *TINY]) == 0
    return run


def _leftovers(folder) -> list[str]:
    """Temporary or partial files a failed command must not leave."""
    if not folder.exists():
        return []
    return [str(p) for p in folder.rglob("*") if p.is_file() and (".tmp" in p.name or p.stat().st_size == 0)]


def _rejects(capsys, argv, *words):
    code = main(argv)
    # a file written without a checksum (by torch.save here, or an older maxmargin) gets a notice line first
    err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines() if "has no checksum" not in ln)
    assert code == 2, (argv, code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    low = err.lower()
    assert any(w.lower() in low for w in words), (argv, err)


@pytest.mark.parametrize("setting, word", [
    ("steps=0", "steps"), ("steps=-5", "steps"), ("batch_size=0", "batch_size"), ("batch_size=-1", "batch_size"),
    ("lr=nan", "lr"), ("lr=inf", "lr"), ("eps_min=nan", "eps_min"), ("d_max=-1", "d_max"),
    ("attack_steps=0", "attack_steps"), ("eval_every=0", "eval_every"), ("eval_batch_size=0", "eval_batch_size"),
    ("seed=abc", "seed"), ("norm=l3", "norm"), ("model=resnet1000", "model"), ("nonsense=1", "nonsense"),
])
def test_train_rejects_bad_settings(tmp_path, capsys, setting, word):
    out = tmp_path / "r"
    # tiny settings first (a later --set wins), so that a value wrongly accepted fails the test quickly
    _rejects(capsys, ["train", "--preset", "quick-mma", "--out", str(out), *TINY, "--set", setting], word)
    assert not (out / "checkpoints").exists() and _leftovers(out) == []


def test_train_rejects_unknown_preset_and_missing_data(tmp_path, capsys):
    _rejects(capsys, ["train", "--preset", "no-such-preset", "--out", str(tmp_path / "a")], "preset")
    _rejects(capsys, ["train", "--preset", "quick-mma", "--data", str(tmp_path / "nowhere"), "--set",
                      "dataset=mnist", "--out", str(tmp_path / "b")], "does not exist")


def test_data_folder_for_the_bundled_digits_is_refused(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    _rejects(capsys, ["train", "--preset", "quick-mma", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")],
             "dataset=mnist")
    assert not (tmp_path / "r" / "checkpoints").exists()


def _idx(path, magic: int, dims: list[int], payload: bytes) -> None:
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


@pytest.mark.parametrize("broken", ["magic", "dims", "count", "truncated"])
def test_broken_idx_files_are_named(tmp_path, capsys, broken):
    d = tmp_path / "mnist"
    d.mkdir()
    n = 20
    for split in ("train", "t10k"):
        _idx(d / f"{split}-images-idx3-ubyte", 0x803, [n, 28, 28], bytes(n * 784))
        _idx(d / f"{split}-labels-idx1-ubyte", 0x801, [n], bytes(n))
    target = d / "train-images-idx3-ubyte"
    if broken == "magic":
        _idx(target, 0x1234, [n, 28, 28], bytes(n * 784))
    elif broken == "dims":
        _idx(target, 0x803, [n, 28], bytes(n * 28))
    elif broken == "count":
        _idx(d / "train-labels-idx1-ubyte", 0x801, [n + 5], bytes(n + 5))
    else:
        target.write_bytes(target.read_bytes()[:500])
    out = tmp_path / "r"
    _rejects(capsys, ["train", "--preset", "quick-mma", "--set", "dataset=mnist", "--data", str(d),
                      "--out", str(out), "--quiet"], "idx", "ubyte")
    assert not (out / "checkpoints").exists() and _leftovers(out) == []


def test_cifar_batch_with_a_non_array_payload(tmp_path, capsys):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    good = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(good))
    (d / "test_batch").write_bytes(pickle.dumps({b"data": "not an array", b"labels": [0]}))
    _rejects(capsys, ["train", "--preset", "quick-mma", "--set", "dataset=cifar10", "--set", "model=small_cnn",
                      "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet"], "test_batch")


@pytest.mark.parametrize("cmd", ["eval", "margin"])
@pytest.mark.parametrize("args, word", [
    (["--batch-size", "0"], "batch"), (["--batch-size", "-3"], "batch"), (["--n", "-2"], "--n"),
])
def test_eval_and_margin_reject_bad_counts(run, tmp_path, capsys, cmd, args, word):
    out = tmp_path / "o"
    _rejects(capsys, [cmd, str(run), "--out", str(out), *args], word)
    assert not out.exists() or _leftovers(out) == []


@pytest.mark.parametrize("eps", ["nan", "inf", "-0.1", "0.1,nan", ""])
def test_eval_rejects_bad_eps(run, capsys, eps):
    _rejects(capsys, ["eval", str(run), "--eps", eps], "--eps")


@pytest.mark.parametrize("cap", ["nan", "inf", "0", "-1"])
def test_margin_rejects_bad_eps_max(run, capsys, cap):
    _rejects(capsys, ["margin", str(run), "--eps-max", cap], "--eps-max")


def test_missing_truncated_and_foreign_checkpoints(run, tmp_path, capsys):
    for cmd in ("eval", "margin"):
        _rejects(capsys, [cmd, str(tmp_path / "no-such-run")], "does not exist")
    cut = tmp_path / "cut.pt"
    data = (run / "checkpoints" / "best.pt").read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    for cmd in ("eval", "margin"):
        _rejects(capsys, [cmd, str(cut)], "truncated")
    # weights of one architecture under another's name
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["arch"]["model"] = "lenet5"
    foreign = tmp_path / "foreign.pt"
    torch.save(ckpt, foreign)
    _rejects(capsys, ["eval", str(foreign)], "does not fit")
    _rejects(capsys, ["eval", str(run), "--protocol", "paper", "--transfer-from", str(cut)], "truncated")


def test_resume_from_another_architecture(run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    before = sorted(p.name for p in (other / "checkpoints").iterdir())
    _rejects(capsys, ["train", "--preset", "quick-mma", "--set", "model=lenet5", "--out", str(other), "--resume",
                      "--set", "steps=4", "--quiet"], "model")
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == before and _leftovers(other) == []


def test_batch_size_must_divide_across_processes():
    from maxmargin.config import load_preset
    from maxmargin.errors import UserError
    from maxmargin.train import check_world

    cfg = load_preset("quick-mma")
    cfg.batch_size = 51
    with pytest.raises(UserError, match="divisible by the 2 processes"):
        check_world(cfg, 2)
    check_world(cfg, 1)


def test_gzipped_idx_with_garbage_is_named(tmp_path, capsys):
    d = tmp_path / "mnist"
    d.mkdir()
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            with gzip.open(d / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(b"\x00garbage")
    _rejects(capsys, ["train", "--preset", "quick-mma", "--set", "dataset=mnist", "--data", str(d),
                      "--out", str(tmp_path / "r"), "--quiet"], "idx", "ubyte")
