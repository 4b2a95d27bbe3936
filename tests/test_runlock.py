"""One writer per run directory: a live writer is named and refused, a dead one's lock is taken over."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maxmargin.cli import main
from maxmargin.errors import UserError
from maxmargin.runlock import LOCK_NAME, RunLock, holder_of

HOLD = textwrap.dedent("""
    import sys, time
    from maxmargin.runlock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / "run"``; yields (folder, process)."""
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield run, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _refused(capsys, pid: int, *args: str) -> None:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {pid} " in err and "-c" in err, err


def test_a_live_writer_is_named_and_every_writing_command_refuses(holder, capsys):
    run, proc = holder
    before = sorted(p.name for p in run.iterdir())
    _refused(capsys, proc.pid, "train", "--preset", "quick-standard", "--out", str(run), "--quiet")
    _refused(capsys, proc.pid, "train", "--preset", "quick-standard", "--out", str(run), "--resume", "--quiet")
    _refused(capsys, proc.pid, "eval", str(run), "--n", "10", "--quiet")
    _refused(capsys, proc.pid, "margin", str(run), "--n", "10", "--quiet")
    assert sorted(p.name for p in run.iterdir()) == before, "a refused writer must write nothing"
    assert holder_of(run)["pid"] == proc.pid


def test_the_lock_of_a_killed_writer_is_taken_over(holder, capsys):
    run, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert holder_of(run)["pid"] == proc.pid, "the dead writer's note is still there"
    assert main(["train", "--preset", "quick-standard", "--out", str(run), "--set", "steps=2", "--set", "eval_every=2",
                 "--set", "batch_size=20", "--set", "eval_size=20", "--set", "val_pgd_steps=1",
                 "--set", "margin_steps=1", "--quiet"]) == 0
    assert (run / "checkpoints/last.pt").is_file()
    # released on return: the file is gone, and the next writer takes the lock
    assert not (run / LOCK_NAME).exists() and holder_of(run) is None
    with RunLock(run):
        assert holder_of(run)["pid"] == os.getpid()


def test_one_process_may_nest_writers_of_one_folder_but_a_second_lock_elsewhere_is_separate(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with RunLock(a), RunLock(a / "." ), RunLock(b):
        assert holder_of(a)["pid"] == holder_of(b)["pid"] == os.getpid()
        assert holder_of(a)["pid"] == os.getpid()
    assert holder_of(a) is None and holder_of(b) is None
    # a folder that does not exist yet has no writer: nothing is created
    with RunLock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    # ranks other than 0 do not lock
    with RunLock(a, enabled=False):
        assert holder_of(a) is None


def test_the_message_names_the_folder_and_the_way_out(holder):
    run, proc = holder
    with pytest.raises(UserError, match=rf"{run} is being written by another process \(pid {proc.pid} on "):
        RunLock(Path(run)).acquire()
