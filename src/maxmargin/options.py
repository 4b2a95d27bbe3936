"""Declared options: dataclass fields that carry their own help text and checks.

A run's shared keys (:class:`maxmargin.config.Config`) and every training
method's options (:class:`maxmargin.methods.Method` ``.Options``) are
dataclasses whose fields are made by :func:`option`. The field declares its
one-line meaning, its allowed values and its range, so that parsing
``--set key=value``, validation, ``maxmargin presets NAME`` and the docs all
read the same declaration instead of keeping lists of keys in parallel.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import UserError


def option(default: Any = MISSING, help: str = "", *,
           choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
           min: float | None = None, positive: bool = False, default_factory: Callable[[], Any] | None = None,
           ) -> Any:
    """A dataclass field with a one-line ``help``, optional ``choices`` and a lower bound.

    ``min`` is an inclusive lower bound (``min=0``: non-negative); ``positive``
    demands ``> 0``. ``choices`` may be a callable, for choices that come from
    a registry filled at import time (methods, models, datasets).
    """
    meta = {"help": help, "choices": choices, "min": min, "positive": positive}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class KeyInfo:
    """What a key is: its name, type, whether ``None`` is allowed, and its declared checks."""

    name: str
    type: type[Any]
    optional: bool
    help: str
    # a callable for choices from a registry: read when used, so that later registrations count
    allowed: Sequence[Any] | Callable[[], Sequence[Any]] | None
    min: float | None
    positive: bool

    @property
    def choices(self) -> tuple[Any, ...] | None:
        allowed = self.allowed() if callable(self.allowed) else self.allowed
        return tuple(allowed) if allowed is not None else None

    def describe(self) -> str:
        """The key's one-line meaning, with its choices when it has a fixed set."""
        extra = f" ({' | '.join(map(str, self.choices))})" if self.choices else ""
        return f"{self.help}{extra}"


def key_infos(cls: type) -> dict[str, KeyInfo]:
    """The declared keys of an options dataclass, in declaration order."""
    hints = get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if not f.init:
            continue
        typ, optional = _base_type(hints[f.name])
        out[f.name] = KeyInfo(f.name, typ, optional, f.metadata.get("help", ""), f.metadata.get("choices"),
                              f.metadata.get("min"), bool(f.metadata.get("positive", False)))
    return out


def _base_type(hint: Any) -> tuple[type, bool]:
    if get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        args = [a for a in get_args(hint) if a is not type(None)]
        return _base_type(args[0])[0], len(args) < len(get_args(hint))
    if get_origin(hint) is list or hint is list:
        return list, False
    return hint, False


def parse_text(info: KeyInfo, text: str, where: str) -> Any:
    """Parse the text of ``key=value`` by the key's declared type; ``where`` names it in errors."""
    raw = text.strip()
    if info.optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        if info.type is bool:
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if info.type is int:
            return int(raw)
        if info.type is float:
            return float(raw)
        if info.type is list:
            return [float(v) for v in raw.strip("[]").split(",") if v.strip()]
        return raw
    except ValueError:
        raise UserError(f"{where}={text}: expected a value of type {info.type.__name__}") from None


def coerce(info: KeyInfo, value: Any, where: str) -> Any:
    """``value`` checked against the declaration (ints widen to floats); a :class:`UserError` names ``where``."""
    if value is None:
        if info.optional:
            return None
        raise UserError(f"{where} must be of type {info.type.__name__}, got none")
    if info.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if info.type is list:
        # every list key is numeric (milestones, rates); anything else would fail far from the file
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
            raise UserError(f"{where} must be a list of numbers, got {value!r}")
        return value
    if not isinstance(value, info.type) or (info.type is int and isinstance(value, bool)):
        raise UserError(f"{where} must be of type {info.type.__name__}, got {value!r}")
    if info.type is float and not math.isfinite(value):
        raise UserError(f"{where} must be finite, got {value!r}")
    if info.choices is not None and value not in info.choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, info.choices))}; got {value!r}")
    if info.min is not None and value < info.min:
        raise UserError(f"{where} must be >= {info.min:g}, got {value!r}")
    if info.positive and not value > 0:
        raise UserError(f"{where} must be > 0, got {value!r}")
    return value


class Options:
    """Base of a training method's options: a frozen dataclass that checks itself when made.

    Subclasses are ``@dataclass(frozen=True)`` with fields made by
    :func:`option`; their names are the method constructor's keywords. Extra
    checks that relate two fields go in :meth:`check`.
    """

    def __post_init__(self) -> None:
        for name, info in key_infos(type(self)).items():
            value = coerce(info, getattr(self, name), f"option {name!r}")
            object.__setattr__(self, name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields; raise :class:`~maxmargin.errors.UserError` naming the keys."""

    def check_run(self, norm: str) -> None:
        """Checks against the run's shared keys (the norm); raise a :class:`UserError` naming both."""

    def to_dict(self) -> dict[str, Any]:
        # Options itself is no dataclass, so mypy sees no dataclass instance; every subclass is one
        # (register() refuses any other), which is all asdict needs at run time
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


__all__ = ["option", "Options", "KeyInfo", "key_infos", "parse_text", "coerce", "field_names"]
