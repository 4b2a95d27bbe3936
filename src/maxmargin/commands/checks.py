"""Command-line values checked before anything is loaded, trained or written.

The library raises a plain ``ValueError`` for a bad argument, which the command
line reports as a bug (exit 1, with a traceback). Values a user typed are
checked here first, so that their mistakes are a one-line
:class:`~maxmargin.errors.UserError` (exit 2) naming the flag.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..certify import METHODS as CERTIFY_METHODS
from ..errors import UserError
from ..evaluate import PROTOCOLS
from ..norms import NORMS

SPLITS = ("test", "val")


def parse_eps(text: str | None) -> list[float] | None:
    """``--eps 0.1,0.2`` or ``8/255,16/255`` as radii (``None`` when the flag was not given)."""
    if text is None:
        return None
    if not text.strip():
        raise UserError("--eps needs at least one value")
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:   # "0.1,,0.2" or a trailing comma: a typo, not a shorter grid
            raise UserError(f"--eps {text!r}: an empty value between commas; write radii like 0.1,0.2")
        try:
            out.append(float(item.split("/")[0]) / float(item.split("/")[1]) if "/" in item else float(item))
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--eps {text!r}: expected numbers like 0.1,0.2 or 8/255") from None
    check_eps(out, f"--eps {text!r}")
    return out


def check_eps(eps: Sequence[float], flag: str = "--eps") -> None:
    """Radii must be finite and >= 0."""
    if not all(math.isfinite(e) for e in eps):
        raise UserError(f"{flag}: every radius must be a finite number")
    if any(e < 0 for e in eps):
        raise UserError(f"{flag}: values must be >= 0")


def check_counts(n: int | None, batch_size: int) -> None:
    """``--n`` (``None``: the whole split) and ``--batch-size``."""
    if n is not None and n < 1:
        raise UserError(f"--n must be >= 1 (or left out for the whole split), got {n}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


def check_certify(method: str | None) -> None:
    """``--certify``: one of the bound methods, or ``None`` for none."""
    if method is not None and method not in CERTIFY_METHODS:
        raise UserError(f"--certify {method!r}: choose one of {', '.join(CERTIFY_METHODS)}")


def check_eps_max(cap: float | None) -> None:
    """``--eps-max``: a finite radius > 0, or ``None`` for the norm's default."""
    if cap is not None and not 0 < cap < float("inf"):
        raise UserError(f"--eps-max must be a finite number > 0, got {cap}")


def check_protocol(protocol: str) -> None:
    """``--protocol``: quick, paper or autoattack."""
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")


def check_split(split: str) -> None:
    """``--split``: test or val."""
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")


def check_norm(norm: str | None) -> None:
    """``--norm``: linf or l2, or ``None`` for the run's own."""
    if norm is not None and norm not in NORMS:
        raise UserError(f"--norm {norm!r}: choose one of {', '.join(NORMS)}")


def check_transfer(protocol: str, sources: Sequence[Path]) -> None:
    """``--transfer-from``: only the paper protocol runs transfer attacks, so elsewhere it would do nothing."""
    if sources and protocol != "paper":
        raise UserError(f"--transfer-from: only --protocol paper runs transfer attacks, not --protocol {protocol}")
