"""Two processes with gloo on CPU: the run finishes, MMA memory merges, checkpoints move between world sizes."""
from __future__ import annotations

import csv
import json
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


def test_eval_and_margins_shard_across_two_processes(runs):
    run = str(runs / "one")
    evals = ["eval", run, "--num-examples", "61", "--eps", "0.1,0.2", "--margins", "--quiet"]
    r = torchrun(*evals, "--out", str(runs / "ev2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("clean accuracy") == 1, "only rank 0 prints"
    assert main([*evals, "--out", str(runs / "ev1")]) == 0
    two, one = (json.loads((runs / d / "eval.json").read_text()) for d in ("ev2", "ev1"))
    assert two["n"] == one["n"] == 61
    assert two["clean_accuracy"] == one["clean_accuracy"]
    for e, acc in one["robust_accuracy"].items():
        # attack noise differs per rank; each example is still attacked by the same attacks
        assert abs(two["robust_accuracy"][e] - acc) <= 3 / 61
        assert two["by_attack"]["margin-search"][e] == two["robust_accuracy"][e]
    assert abs(two["margin"]["mean"] - one["margin"]["mean"]) <= 0.05 * one["margin"]["mean"]

    r = torchrun("margin", run, "--num-examples", "61", "--certify", "ibp", "--out", str(runs / "m2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["margin", run, "--n", "61", "--certify", "ibp", "--out", str(runs / "m1"), "--quiet"]) == 0
    saved = [torch.load(runs / d / "margins.pt", weights_only=True) for d in ("m2", "m1")]
    # certified bounds are deterministic: the gathered shards equal one process's, example by example
    assert torch.allclose(saved[0]["lower"], saved[1]["lower"], rtol=1e-4, atol=1e-6)
    m2, m1 = (s["upper"] for s in saved)
    assert m2.shape == m1.shape == (61,)
    # the shards come back in the original order: misclassified examples (margin 0) line up
    assert torch.equal(m2 == 0, m1 == 0) and bool((m1 == 0).any()) and bool((m1 > 0).any())
    assert torch.allclose(m2, m1, rtol=0.1, atol=0.01)
    assert not list(runs.glob("m2/*.tmp")) and not list(runs.glob("ev2/*.tmp"))
