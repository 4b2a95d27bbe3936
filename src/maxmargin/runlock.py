"""One writer per run directory: ``RUN/.lock``, held with ``flock`` while a process writes the folder.

The kernel drops an ``flock`` when its holder exits, however it exits, so a
lock left by a killed process is simply free: the next writer takes it over.
The holder writes its pid, host and command into the file, for the message
the next writer shows, and removes the file when it is done. Under ``torchrun``
rank 0 alone takes it (it alone writes files).

The lock file is the one file the project writes in place rather than through
:mod:`maxmargin.files`: an atomic rename would put a new file, unlocked, in
place of the locked one. Its content is only informative.
"""
from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .errors import UserError

__all__ = ["LOCK_NAME", "RunLock", "holder_of", "is_main_process", "locks_output"]

LOCK_NAME = ".lock"
# folders this process holds (resolved path -> holders), so that nested writers in one process do not collide
_HELD: dict[Path, int] = {}


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "maxmargin"):
        argv[0] = "maxmargin"
    return shlex.join(argv)


def holder_of(run_dir: str | Path) -> dict[str, Any] | None:
    """What the lock file of ``run_dir`` says about its last holder, if it says anything readable."""
    try:
        info = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_main_process() -> bool:
    """Rank 0 under torchrun (its environment says so before any process group exists), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


class RunLock:
    """The write lock of one run directory; :meth:`acquire` raises :class:`UserError` if a live process holds it.

    ``enabled=False`` (the ranks other than 0) makes every method a no-op.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._fd: int | None = None
        self._key: Path | None = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> RunLock:
        """Take the lock if the folder exists (a folder that does not exist has no other writer yet)."""
        if not self.enabled or self.held or not self.run_dir.is_dir():
            return self
        key = self.run_dir.resolve()
        if key in _HELD:
            _HELD[key] += 1
            self._key = key
            return self
        path = key / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # a holder that was releasing may have removed the file between our open and our flock:
                # then we hold a lock on a file no one else can find, and must lock the one at the path
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except BlockingIOError:
                os.close(fd)
                raise UserError(self._busy_message()) from None
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd, self._key = fd, key
        _HELD[key] = 1
        return self

    def _busy_message(self) -> str:
        info = holder_of(self.run_dir) or {}
        who = (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('since', '?')}: "
               f"{info.get('command', '?')}")
        return (f"{self.run_dir} is being written by another process ({who}); wait for it to finish or stop it, "
                "or write elsewhere (--out)")

    def release(self) -> None:
        if self._key is None:
            return
        _HELD[self._key] -= 1
        if _HELD[self._key] == 0:
            del _HELD[self._key]
            if self._fd is not None:
                # removed while still locked, so that a writer who opened it meanwhile sees it gone (above)
                (self._key / LOCK_NAME).unlink(missing_ok=True)
                os.close(self._fd)
        self._fd = self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


F = TypeVar("F", bound=Callable[..., Any])


def locks_output(folder: Callable[..., Path]) -> Callable[[F], F]:
    """Decorator: hold the lock of the folder a call writes (rank 0 only) while the call runs.

    ``folder`` receives the call's arguments by name, defaults filled in.
    """

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with RunLock(folder(**bound.arguments), enabled=is_main_process()):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
