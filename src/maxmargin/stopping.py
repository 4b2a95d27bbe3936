"""Stopping a run cleanly on SIGTERM or SIGINT: finish the step, checkpoint, exit 128 + the signal number.

The handlers only record the signal; the training loop looks at the record
after each step. Raising from inside a handler would interrupt whatever the
step was doing (a collective, a checkpoint write), and under ``torchrun`` one
rank would stop while the others wait for it. A second signal while the
checkpoint is written changes nothing: the first one is already being obeyed.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

__all__ = ["SIGNALS", "StopRequest", "Stopped", "stop_on_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal after writing ``checkpoints/last.pt``; ``--resume`` continues it.

    A ``KeyboardInterrupt``, so that code which lets Ctrl-C through lets this through too.
    """

    def __init__(self, signum: int, step: int, out: Path, world: int = 1) -> None:
        self.signum, self.step, self.out, self.world = signum, step, Path(out), world
        super().__init__(f"stopped by {self.signal_name} after step {step}; {out}/checkpoints/last.pt holds it")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, what a shell reports for a process the signal ended."""
        return 128 + self.signum


class StopRequest:
    """The first signal received (0: none yet)."""

    def __init__(self) -> None:
        self.signum = 0

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if not self.signum:
            self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Record SIGTERM and SIGINT instead of dying; the previous handlers come back on exit.

    Outside the main thread Python cannot install handlers: the request then never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        for s in SIGNALS:
            signal.signal(s, request._record)
        yield request
    finally:
        for s, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the closest
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
