"""Importing the user's own code: methods, models and datasets that register themselves on import.

A run names the modules it needs in its ``plugins`` key (comma-separated), and
a model may be a ``module:callable`` spec; both are imported here, with the
current folder searched first as ``python -m`` does, so that ``maxmargin
eval`` of such a run finds the same code again.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .errors import UserError


def import_user_module(name: str, what: str) -> ModuleType:
    """Import ``name`` for ``what`` (named in the error); a :class:`UserError` says how to make it importable."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"{what}: cannot import module {name!r} ({e}); put it on PYTHONPATH or in the current "
                        "folder") from None


def import_plugins(modules: str) -> None:
    """Import every module of a comma-separated list (a config's ``plugins`` key)."""
    for name in (m.strip() for m in modules.split(",")):
        if name:
            import_user_module(name, f"plugins = {modules!r}")
