"""Two processes with gloo on CPU: the run finishes, MMA memory merges, checkpoints move between world sizes."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from maxmargin.cli import main
from maxmargin.data import BatchStream

ARGS = ["--preset", "quick-mma", "--seed", "3", "--set", "steps=60", "--set", "eval_every=30", "--set", "lr=0.003",
        "--set", "batch_size=20", "--set", "attack_steps=3", "--set", "eval_size=200",
        "--set", "val_pgd_steps=3", "--set", "margin_steps=3", "--quiet"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "maxmargin", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    r = torchrun("train", "--out", str(root / "two"), *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["train", "--out", str(root / "one"), *ARGS]) == 0
    return root


def test_two_process_run_finishes_and_merges_mma_memory(runs):
    last = torch.load(runs / "two/checkpoints/last.pt", weights_only=True)
    assert last["step"] == 60 and last["world_size"] == 2
    visited = torch.zeros(7000, dtype=torch.bool)
    stream = BatchStream(7000, 20, seed=3)
    for s in range(60):
        visited[stream.indices(s)] = True
    updated = last["method"]["updated"]
    assert torch.equal(updated >= 0, visited), "the merged memory must cover exactly the visited indices"
    eps = last["method"]["eps"]
    assert bool((eps[~visited] == 0).all()) and float(eps[visited].max()) > 0


def test_metrics_agree_with_one_process(runs):
    two = list(csv.DictReader((runs / "two/metrics.csv").open()))
    one = list(csv.DictReader((runs / "one/metrics.csv").open()))
    assert [r["step"] for r in two] == [r["step"] for r in one] == ["30", "60"]
    # same global batches and initial weights; attack noise and reduction order differ
    for a, b in zip(two, one):
        assert abs(float(a["val_acc"]) - float(b["val_acc"])) <= 0.08
        assert abs(float(a["val_margin"]) - float(b["val_margin"])) <= 0.03


def test_checkpoint_of_two_ranks_evaluates_and_resumes_in_one(runs, capsys):
    assert main(["eval", str(runs / "two"), "--n", "40", "--eps", "0.1", "--quiet"]) == 0
    assert (runs / "two/eval.json").is_file()
    assert main(["train", "--out", str(runs / "two"), "--resume", "--set", "steps=70", "--quiet"]) == 0
    last = torch.load(runs / "two/checkpoints/last.pt", weights_only=True)
    assert last["step"] == 70 and last["world_size"] == 1
