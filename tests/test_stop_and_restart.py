"""Faults during training: SIGTERM/SIGINT stop with a checkpoint, a killed torchrun rank restarts, and the
resumed runs end with the weights of an uninterrupted one."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from maxmargin.cli import main
from maxmargin.config import apply_overrides, load_preset
from maxmargin.stopping import Stopped
from maxmargin.train import train

SMALL = ["--preset", "quick-mma", "--seed", "3", "--set", "lr=0.003", "--set", "batch_size=20",
         "--set", "attack_steps=3", "--set", "eval_size=60", "--set", "val_pgd_steps=2", "--set", "margin_steps=2",
         "--set", "eval_batch_size=60"]


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints/last.pt", weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same final weights and method memory, the same metrics rows but for the time column."""
    ca, cb = last(a), last(b)
    assert ca["step"] == cb["step"]
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert torch.equal(ca["method"]["eps"], cb["method"]["eps"])
    ra, rb = rows(a), rows(b)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ra] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in rb]


def test_a_signal_stops_after_the_current_step_and_the_handlers_come_back(tmp_path, monkeypatch):
    import maxmargin.train as tr

    cfg = apply_overrides(load_preset("quick-mma"), ["steps=24", "eval_every=10", "batch_size=20", "attack_steps=2",
                                                     "eval_size=40", "val_pgd_steps=2", "margin_steps=2", "seed=4"])
    train(cfg, tmp_path / "full", progress=False)
    real_lr_at = tr.lr_at

    def lr_at(c, step):   # a SIGTERM arrives in the middle of step 13 (steps count from 0)
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr_at(c, step)

    def mine(signum, frame):
        raise AssertionError("the caller's handler ran during training")

    previous = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        monkeypatch.setattr(tr, "lr_at", lr_at)
        with pytest.raises(Stopped) as stopped:
            train(cfg, tmp_path / "cut", progress=False)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
        assert (stopped.value.signum, stopped.value.step, stopped.value.exit_code) == (signal.SIGTERM, 14, 143)
        ckpt = last(tmp_path / "cut")
        assert ckpt["step"] == 14 and ckpt["seconds"] > 0 and ckpt["world_size"] == 1
        assert [r["step"] for r in rows(tmp_path / "cut")] == ["10"]
        monkeypatch.setattr(tr, "lr_at", real_lr_at)
        train(cfg, tmp_path / "cut", resume=True, progress=False)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    # the time column goes on from the checkpoint instead of restarting at 0
    assert float(rows(tmp_path / "cut")[-1]["seconds"]) > ckpt["seconds"]


class Progress:
    """The highest step a run's progress bar (on its stderr) has shown so far."""

    def __init__(self, proc: subprocess.Popen, total: int) -> None:
        self.text = ""
        self.pattern = re.compile(rf"(\d+)/{total}\b")
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 4096):
            self.text += chunk.decode(errors="replace")

    def step(self) -> int:
        return max((int(m) for m in self.pattern.findall(self.text)), default=0)

    def wait_for(self, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while self.step() < step:
            assert proc.poll() is None, f"the run ended before step {step}: {self.text[-2000:]}"
            assert time.monotonic() < end, self.text[-2000:]
            time.sleep(0.02)


def start_train(out: Path, total: int, *args: str) -> tuple[subprocess.Popen, Progress]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "maxmargin", "train", "--out", str(out), *args,
                             "--set", f"steps={total}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return proc, Progress(proc, total)


@pytest.fixture
def one_thread():
    """The in-process parts run on one thread as the subprocesses do (OMP_NUM_THREADS=1): reductions split
    over other thread counts round differently, and bitwise comparisons would see that, not the resume."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigterm_exits_143_with_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, one_thread):
    args = [*SMALL, "--set", "steps=30", "--set", "eval_every=20"]
    proc, progress = start_train(tmp_path / "cut", 30, *args)
    progress.wait_for(proc, 5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, progress.text[-2000:]
    progress.thread.join(timeout=10)
    step = last(tmp_path / "cut")["step"]
    assert 5 <= step < 30 and step % 20, "stopped at an evaluation: the test would not see a lost step"
    line = progress.text.strip().splitlines()[-1]
    assert line == (f"maxmargin: stopped by SIGTERM after step {step}; "
                    f"continue with: maxmargin train --out {tmp_path / 'cut'} --resume"), line
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    assert main(["train", "--out", str(tmp_path / "full"), *args, "--quiet"]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_sigint_exits_130_and_more_signals_while_it_stops_change_nothing(tmp_path):
    proc, progress = start_train(tmp_path / "run", 60, *SMALL, "--set", "eval_every=50")
    progress.wait_for(proc, 3)
    proc.send_signal(signal.SIGINT)
    for s in (signal.SIGTERM, signal.SIGINT):   # an impatient user, or torchrun passing the signal on
        time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(s)
    assert proc.wait(timeout=120) == 130, progress.text[-2000:]
    progress.thread.join(timeout=10)
    ckpt = last(tmp_path / "run")
    assert 3 <= ckpt["step"] < 50 and "optimizer" in ckpt and "rng" in ckpt
    assert f"stopped by SIGINT after step {ckpt['step']}" in progress.text
    assert not list((tmp_path / "run").rglob("*.tmp*"))


def test_resume_of_a_folder_without_a_run_says_what_is_missing(tmp_path, capsys):
    nope = tmp_path / "nope"
    assert main(["train", "--out", str(nope), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"maxmargin: error: {nope} holds no run to resume (no config.toml); start it with --preset NAME"


# --- a rank killed under torchrun --max-restarts 1 -----------------------------------------------------------

DDP = [*SMALL, "--set", "steps=20", "--set", "eval_every=10", "--quiet"]


def torchrun(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             *extra, "-m", "maxmargin", "train", "--out", str(out), *DDP],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        todo += kids
    return found


def worker_of_rank(torchrun_pid: int, rank: int) -> int | None:
    for pid in descendants(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_rank_restarts_and_the_run_ends_as_an_uninterrupted_one(tmp_path):
    run = tmp_path / "restarted"
    proc = torchrun(run, "--max-restarts", "1")
    try:
        end = time.monotonic() + 300
        while not (run / "checkpoints/last.pt").is_file():
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        victim = worker_of_rank(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    resumed = re.findall(r"torchrun restart 1: resuming \S+ from step (\d+)", out)
    assert resumed and int(resumed[0]) < 20, (out[-2000:], err[-2000:])

    reference = torchrun(tmp_path / "uninterrupted")
    _, err = reference.communicate(timeout=400)
    assert reference.returncode == 0, err[-3000:]
    assert last(run)["world_size"] == 2
    assert_same_run(tmp_path / "uninterrupted", run)
