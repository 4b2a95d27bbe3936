"""Atomic file writes: every file the project writes appears whole or not at all.

A killed run or evaluation must never leave a half-written ``eval.json`` or
checkpoint that a later ``--resume`` or ``maxmargin report`` would trust. Each
writer fills a temporary file in the target's own folder (``os.replace`` is
atomic only within one file system), flushes it to disk, renames it over the
target, and removes the temporary file if anything fails on the way.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "save_torch_atomic", "write_bytes_atomic", "write_text_atomic", "write_with"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; on a clean exit its file replaces ``path``, else it is removed.

    For writers that insist on a file name (``Figure.savefig``, ``torch.save``
    of a path). The name keeps ``path``'s suffix, so a writer that picks its
    format by suffix still sees the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the process id keeps two writers of one file apart; not mkstemp, whose 0600 mode would hide
    # results from other users where a plain open leaves them readable (the umask decides)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary file object whose content atomically becomes ``path``."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        write(f)
        f.flush()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_with(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode(encoding))


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically (same argument order as ``torch.save``)."""
    import torch  # here, not at the top: config.py imports this module, and `maxmargin presets` needs no torch

    write_with(path, lambda f: torch.save(obj, f))
