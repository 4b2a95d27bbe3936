"""Faults in the files a run keeps: flipped bytes, partial copies, full disks, files of another model or version.

Each test injects one fault and asserts what the user sees: exit code 2, one
line naming the file (and the field), and that nothing sound was destroyed.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maxmargin.checkpoint import arch_of, load_checkpoint, model_from_arch, save_checkpoint
from maxmargin.cli import main
from maxmargin.config import load_preset
from maxmargin.errors import UserError
from maxmargin.files import (
    MAGIC,
    CorruptFileError,
    WriteError,
    dumps_sealed,
    read_json_sealed,
    save_torch_atomic,
    write_json_sealed,
)
from maxmargin.report import load_eval
from maxmargin.train import Metrics

TINY = ["--set", "steps=2", "--set", "eval_every=2", "--set", "eval_size=10", "--set", "val_pgd_steps=1",
        "--set", "margin_steps=1", "--quiet"]
LEGACY = Path(__file__).parent / "fixtures" / "legacy-run-313d404"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A finished tiny run with an eval.json; tests copy it before damaging anything."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    assert main(["train", "--preset", "quick-standard", "--out", str(run), *TINY]) == 0
    assert main(["eval", str(run), "--n", "10", "--eps", "0.1", "--quiet"]) == 0
    return run


@pytest.fixture
def run(evaluated, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(evaluated, copy)
    return copy


def _one_line(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def _flip(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    i = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- checksums

def test_torch_files_stay_plain_torch_files_with_their_digest_last(tmp_path):
    save_torch_atomic({"w": torch.arange(3)}, tmp_path / "m.pt")
    raw = (tmp_path / "m.pt").read_bytes()
    assert raw.startswith(b"PK") and raw[-64 - len(MAGIC):-64] == MAGIC
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.arange(3))


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_byte_in_a_checkpoint_is_refused_by_eval_margin_and_resume(run, capsys, where):
    best, last = run / "checkpoints/best.pt", run / "checkpoints/last.pt"
    _flip(best, where)
    _one_line(capsys, ["eval", str(run), "--n", "4", "--quiet"], str(best), "SHA-256 does not match")
    _one_line(capsys, ["margin", str(run), "--n", "4", "--quiet"], str(best), "SHA-256 does not match")
    _flip(last, where)
    _one_line(capsys, ["train", "--out", str(run), "--resume", "--set", "steps=4", "--quiet"], str(last),
              "SHA-256 does not match")


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_byte_in_eval_json_is_refused_by_report(run, capsys, where):
    ev = run / "eval.json"
    _flip(ev, where)
    _one_line(capsys, ["report", str(run), "--out", str(run.parent)], str(ev), "corrupt")


def test_a_changed_space_in_eval_json_is_caught_though_the_json_still_parses(run):
    ev = run / "eval.json"
    text = ev.read_text()
    ev.write_text(text.replace("\n  ", "\n   ", 1))
    assert json.loads(ev.read_text()) == json.loads(text)
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_eval(ev)


def test_margin_keeps_its_results_and_notes_a_corrupt_eval_json(run, capsys):
    _flip(run / "eval.json", "middle")
    assert main(["margin", str(run), "--n", "4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "attack curve" in err and str(run / "eval.json") in err
    assert read_json_sealed(run / "margins.json", "maxmargin-margins-1")["n"] == 4


def test_files_written_before_the_checksums_load_with_a_notice(capsys):
    ckpt = load_checkpoint(LEGACY / "checkpoints/best.pt")
    assert ckpt["format"] == "maxmargin-checkpoint-1"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checksum" in err and "best.pt" in err, err
    assert load_eval(LEGACY / "eval.json")["norm"] == "linf"
    assert "no checksum" in capsys.readouterr().err


def test_json_round_trips_every_float_and_the_digest_fields_come_off():
    body = {"a": 0.1 + 0.2, "b": [1e-300, -0.0, float("nan"), 3], "ε": "ε", "n": {"x": 1 / 3}}
    text = dumps_sealed(body, "f-1")
    assert list(json.loads(text))[0] == "format" and list(json.loads(text))[-1] == "sha256"


# ---------------------------------------------------------------- truncated and foreign files

def test_a_truncated_checkpoint_says_so_in_full(run, capsys):
    last = run / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    err = _one_line(capsys, ["train", "--out", str(run), "--resume", "--set", "steps=4", "--quiet"],
                    f"{last} is truncated or damaged: its 1000 bytes", "restore it or retrain")
    assert "PytorchStreamReader" not in err


def test_a_checkpoint_torch_refuses_gives_the_whole_reason(tmp_path, capsys):
    save_torch_atomic({"format": "maxmargin-checkpoint-1", "x": pathlib.PurePosixPath("a")}, tmp_path / "odd.pt")
    err = _one_line(capsys, ["eval", str(tmp_path / "odd.pt"), "--quiet"], str(tmp_path / "odd.pt"),
                    "is not a maxmargin checkpoint", "Unsupported global")
    assert "PurePosixPath" in err


def test_a_file_that_is_no_torch_archive_is_named(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("hello")
    _one_line(capsys, ["eval", str(tmp_path / "x.pt"), "--quiet"], str(tmp_path / "x.pt"), "no torch zip archive")


def _checkpoint_of(cfg, shape, path):
    arch = arch_of(cfg, shape, 10)
    model = model_from_arch(arch)
    save_checkpoint(path, {"arch": arch, "config": cfg.to_dict(), "step": 1, "model": model.state_dict()})


def test_an_unchecked_torch_file_of_something_else_gets_one_line_not_a_notice_too(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    _one_line(capsys, ["eval", str(tmp_path / "other.pt"), "--quiet"], str(tmp_path / "other.pt"), "marker")


def test_resume_into_a_run_whose_last_pt_holds_another_model(run, capsys):
    cfg = load_preset("quick-standard")
    cfg.model = "lenet5"
    last = run / "checkpoints/last.pt"
    _checkpoint_of(cfg, (1, 28, 28), last)
    _one_line(capsys, ["train", "--out", str(run), "--resume", "--set", "steps=4", "--quiet"], str(last),
              "\"arch\"", "model 'lenet5' there, 'small_cnn' here")


def test_transfer_from_a_model_of_another_dataset_names_the_file_and_fields(run, tmp_path, capsys):
    cfg = load_preset("quick-standard")
    cfg.dataset = "cifar10"
    src = tmp_path / "cifar.pt"
    _checkpoint_of(cfg, (3, 32, 32), src)
    _one_line(capsys, ["eval", str(run), "--n", "4", "--protocol", "paper", "--transfer-from", str(src), "--quiet"],
              str(src),
              "in_channels")


def test_files_of_a_newer_format_are_refused_naming_the_field(run, capsys):
    ev = run / "eval.json"
    body = read_json_sealed(ev, "maxmargin-eval-1")
    write_json_sealed(ev, body, "maxmargin-eval-2")
    _one_line(capsys, ["report", str(run), "--out", str(run.parent)], str(ev), '"format"', "maxmargin-eval-2")
    best = run / "checkpoints/best.pt"
    ckpt = load_checkpoint(best)
    save_torch_atomic({**ckpt, "format": "maxmargin-checkpoint-2"}, best)
    _one_line(capsys, ["eval", str(run), "--n", "4", "--quiet"], str(best), '"format"', "maxmargin-checkpoint-2")


@pytest.mark.parametrize("line,key", [('steps = "many"', "steps"), ("lr = [1]", "lr"),
                                      ('lr_milestones = ["soon"]', "lr_milestones")])
def test_a_config_toml_with_a_type_error_names_the_file_and_key(run, capsys, line, key):
    conf = run / "config.toml"
    name = line.split(" = ")[0]
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith(f"{name} =")]
    conf.write_text("\n".join([line, *lines]) + "\n")
    _one_line(capsys, ["train", "--out", str(run), "--resume", "--quiet"], str(conf), f"'{key}'")


# ---------------------------------------------------------------- write errors

def test_a_metrics_row_that_cannot_be_written_leaves_the_old_file_whole(tmp_path, monkeypatch):
    m = Metrics(tmp_path / "metrics.csv", None)
    m.append({"step": 10, "loss": 1.0})
    before = (tmp_path / "metrics.csv").read_bytes()
    real_open = pathlib.Path.open

    def full(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if "w" in mode:
            f.write(b"step,l")
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr(pathlib.Path, "open", full)
    with pytest.raises(WriteError, match="could not write .*metrics.csv: No space left on device; free space"):
        m.append({"step": 20, "loss": 0.5})
    monkeypatch.undo()
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


QUICK = ["--preset", "quick-mma", "--set", "steps=40", "--set", "eval_every=10", "--set", "eval_size=40",
         "--set", "attack_steps=2", "--set", "val_pgd_steps=2", "--set", "margin_steps=2", "--set", "batch_size=20",
         "--set", "eval_batch_size=40", "--quiet"]


def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_resume_finishes_the_same(tmp_path, monkeypatch, capsys):
    assert main(["train", "--out", str(tmp_path / "full"), *QUICK]) == 0
    real_open = pathlib.Path.open
    writes = []

    class HalfThenFull:
        """A file that takes some bytes, then reports a full disk."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if mode == "wb" and self.name.startswith(".last.") and self.suffix == ".pt":
            writes.append(self)
            if len(writes) == 2:            # the checkpoint of step 20
                return HalfThenFull(f)
        return f

    cut = tmp_path / "cut"
    monkeypatch.setattr(pathlib.Path, "open", open_)
    assert main(["train", "--out", str(cut), *QUICK]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    last = cut / "checkpoints/last.pt"
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"maxmargin: error: could not write {last}: No space left on device; free space and "
                          f"continue with `maxmargin train --out {cut} --resume`"), err
    assert load_checkpoint(last)["step"] == 10, "the previous last.pt stays whole and loadable"
    assert not [p for p in cut.rglob("*") if ".tmp" in p.name]
    assert main(["train", "--out", str(cut), "--resume", "--quiet"]) == 0
    a, b = (load_checkpoint(d / "checkpoints/last.pt") for d in (tmp_path / "full", cut))
    assert a["step"] == b["step"] == 40
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["method"]["eps"], b["method"]["eps"])
    assert (tmp_path / "full/metrics.csv").read_text().count("\n") == (cut / "metrics.csv").read_text().count("\n")


def _limit_file_size(limit: int):
    def apply():
        # writes past the limit fail with EFBIG instead of the default SIGXFSZ killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_eval_under_a_file_size_limit_keeps_the_old_eval_json(run):
    old = (run / "eval.json").read_bytes()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "maxmargin", "eval", str(run), "--n", "10", "--eps", "0.1,0.2",
                        "--quiet"], capture_output=True, text=True, env=env, preexec_fn=_limit_file_size(300),
                       timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    # the first file past the limit is the per-batch partial results or eval.json itself: either is named
    assert re.match(rf"maxmargin: error: could not write {re.escape(str(run))}/eval\.(partial\.pt|json): "
                    "File too large", lines[0]), lines[0]
    assert (run / "eval.json").read_bytes() == old
    assert not [f for f in run.iterdir() if ".tmp" in f.name]


def test_user_errors_of_files_are_user_errors():
    assert issubclass(WriteError, UserError) and issubclass(CorruptFileError, UserError)
