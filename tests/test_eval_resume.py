"""`maxmargin eval --resume`: a killed evaluation continues from its partial results to the same eval.json."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from maxmargin.checkpoint import load_checkpoint, save_checkpoint
from maxmargin.cli import main
from maxmargin.evaluate import AttackSpec, AttackState, EvalPlan, random_search

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-run-313d404"
# small enough for seconds, with enough batches (4 examples each) that a kill lands in the middle
SETTINGS = ["--n", "24", "--eps", "0.1,0.2", "--batch-size", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(FIXTURE, run)
    for f in ("eval.json", "report.md"):
        (run / f).unlink(missing_ok=True)
    return run


def _random_plan(batch_size: int = 3) -> tuple[EvalPlan, torch.Tensor, torch.Tensor]:
    """A plan whose first attack is pure chance, so that its outcome depends on the generator state.

    A linear two-class model with every example close to its boundary: one random sign perturbation
    breaks some of them, the margin search after it most of the rest.
    """
    torch.manual_seed(0)
    w = torch.randn(16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]))
        model[1].bias.copy_(torch.stack([-0.5 * w.sum(), 0.5 * w.sum()]))
        x = (0.5 + 0.02 * torch.randn(30, 1, 4, 4)).clamp(0, 1)
        y = model(x).argmax(1)
    chance = AttackSpec("random-search", 0, 1, "gradient-free",
                        lambda xs, ys, eps: random_search(model, xs, ys, "linf", eps, 1, (0.0, 1.0)))
    plan = EvalPlan(model, "custom", "linf", [0.0, 0.01, 0.03], [chance], batch_size, (0.0, 1.0), margin_attack=True)
    return plan, x, y


def test_attack_resumed_from_every_saved_state_returns_the_uninterrupted_result():
    plan, x, y = _random_plan()
    saved: list[dict] = []
    torch.manual_seed(1)
    stage, margins = plan.attack(x, y, on_progress=lambda s: saved.append(s.as_dict()))
    assert len(saved) > 4 and any(0 < d["batch_start"] < d["alive"].numel() for d in saved if d["alive"] is not None)
    for d in saved:
        torch.manual_seed(99)   # another generator state: the saved one must be restored
        got, got_margins = plan.attack(x, y, resume=AttackState.from_dict(d))
        assert torch.equal(got, stage) and torch.equal(got_margins, margins)
    # the saved generator state matters: without it a resumed chance attack ends elsewhere
    mid = next(d for d in saved if d["eps_index"] == 1 and d["alive"] is not None and d["batch_start"] > 0)
    wrong = AttackState.from_dict({**mid, "rng": {"cpu": torch.Generator().manual_seed(5).get_state()}})
    assert not torch.equal(plan.attack(x, y, resume=wrong)[0], stage)


def test_a_state_of_another_plan_or_other_margins_is_a_bug_not_a_result():
    plan, x, y = _random_plan()
    saved: list[dict] = []
    stage, margins = plan.attack(x, y, on_progress=lambda s: saved.append(s.as_dict()))
    with pytest.raises(ValueError, match="shape"):
        plan.attack(x[:10], y[:10], resume=AttackState.from_dict(saved[-1]))
    with pytest.raises(ValueError, match="margins"):
        plan.attack(x, y, margins + 1, resume=AttackState.from_dict(saved[-1]))


def _partial_position(path: Path) -> tuple[int, int, int] | None:
    """(ε index, attack index, batch start) of a partial-results file, ``None`` if none is readable yet."""
    try:
        st = torch.load(path, weights_only=True)["state"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return None
    return st["eps_index"], st["attack_index"], st["batch_start"]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "maxmargin", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_killed_evaluation_resumes_to_the_uninterrupted_eval_json(run, tmp_path, capsys):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    partial = killed / "eval.partial.pt"
    proc = _cli("eval", str(run), *SETTINGS, "--out", str(killed), "--resume")
    deadline = time.monotonic() + 240
    pos = None
    while time.monotonic() < deadline and proc.poll() is None:
        pos = _partial_position(partial) if partial.is_file() else None
        if pos is not None and pos != (0, 0, 0):   # at least one batch attacked: we are in the middle
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (out, err)
    assert pos is not None and pos != (0, 0, 0), (pos, err)
    assert "no partial results" in out   # --resume with nothing to resume just runs, and says so
    assert not (killed / "eval.json").exists() and partial.is_file()

    # other settings than the partial results': refused, the file kept as it was
    before = partial.read_bytes()
    for other, word in ((["--eps", "0.1,0.3"], "eps"), (["--batch-size", "5"], "batch_size"),
                        (["--seed", "1"], "seed"), (["--norm", "l2"], "norm")):
        argv = ["eval", str(run), *SETTINGS, "--out", str(killed), "--resume", *other]
        assert main(argv) == 2
        # the fixture predates checksums, so its checkpoint's one-line notice may come first
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if "has no checksum" not in ln]
        msg = "\n".join(lines)
        assert len(lines) == 1 and f"({word} " in msg and "another evaluation" in msg, msg
    assert partial.read_bytes() == before

    resumed = _cli("eval", str(run), *SETTINGS, "--out", str(killed), "--resume")
    reference = _cli("eval", str(run), *SETTINGS, "--out", str(whole))
    (r_out, r_err), (_, w_err) = resumed.communicate(timeout=600), reference.communicate(timeout=600)
    assert resumed.returncode == 0 and reference.returncode == 0, (r_err, w_err)
    assert "continuing from" in r_out, r_out
    got, want = (json.loads((d / "eval.json").read_text()) for d in (killed, whole))
    assert got == want
    assert not partial.exists() and not list(killed.glob("eval.partial*"))


def test_partial_results_of_another_checkpoint_are_refused(run, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", str(run), *SETTINGS, "--out", str(out)]
    # a run-through leaves no partial results; fake an interrupted one by saving one from the CLI's own saver
    from maxmargin.commands import partial_results

    saved: list = []
    orig = partial_results.PartialResults.saver

    def keep(self, m, c):
        save = orig(self, m, c)
        return lambda state: (save(state), saved.append(self.path.read_bytes()))
    partial_results.PartialResults.saver = keep   # type: ignore[method-assign]
    try:
        assert main(args) == 0
    finally:
        partial_results.PartialResults.saver = orig   # type: ignore[method-assign]
    capsys.readouterr()
    (out / "eval.partial.pt").write_bytes(saved[1])
    other = tmp_path / "other"
    shutil.copytree(run, other)
    ckpt = load_checkpoint(other / "checkpoints" / "best.pt")
    first = next(iter(ckpt["model"]))
    ckpt["model"][first] = ckpt["model"][first] + 1e-3
    save_checkpoint(other / "checkpoints" / "best.pt", ckpt)
    assert main(["eval", str(other), *SETTINGS, "--out", str(out), "--resume"]) == 2
    assert "(checkpoint " in capsys.readouterr().err

    # without --resume the partial results are replaced, and the command says so
    assert main(args) == 0
    assert "replacing the partial results" in capsys.readouterr().out
    assert not (out / "eval.partial.pt").exists()

    (out / "eval.partial.pt").write_bytes(b"not a torch file")
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume:" in err and "run without --resume" in err, err

    # partial results of another number of processes: not resumed from, and gone once the evaluation is written
    (out / "eval.partial.pt").unlink()
    (out / "eval.partial.rank1.pt").write_bytes(b"left by a two-process evaluation")
    assert main([*args, "--resume"]) == 0
    assert "not those of all 1 process" in capsys.readouterr().out
    assert not list(out.glob("eval.partial*"))
