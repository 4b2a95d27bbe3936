"""One atomic writer: the target appears whole or not at all, and no temporary file stays behind."""
from __future__ import annotations

import os

import pytest
import torch

from maxmargin.files import atomic_path, save_torch_atomic, write_bytes_atomic, write_text_atomic, write_with


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_writers_write_and_leave_nothing_behind(tmp_path):
    write_text_atomic(tmp_path / "a" / "b.json", "ε = 0.1\n")
    assert (tmp_path / "a" / "b.json").read_text(encoding="utf-8") == "ε = 0.1\n"
    write_bytes_atomic(tmp_path / "c.bin", b"\x00\x01")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    save_torch_atomic({"w": torch.arange(3)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "a") == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "eval.json"
    write_text_atomic(target, "old")
    with pytest.raises(ZeroDivisionError):
        write_with(target, lambda f: (f.write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_temporary_keeps_the_suffix_and_written_files_follow_the_umask(tmp_path):
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "plot.png").stat().st_mode & 0o777 == 0o666 & ~mask


def test_config_keeps_its_old_name_for_the_text_writer(tmp_path):
    from maxmargin.config import write_atomic

    write_atomic(tmp_path / "x.toml", "a = 1\n")
    assert (tmp_path / "x.toml").read_text() == "a = 1\n"

