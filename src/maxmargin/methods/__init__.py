"""Training objectives as plug-ins.

Each method lives in its own file: a frozen options dataclass and a
:class:`Method` subclass decorated with :func:`register`. The registry gives
the command line its ``method`` choices, the config its per-method table,
and the training loop the class to build; a method registered from a user's
own code trains with the project's loop like the built-in ones.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch

from .amm import AMM
from .base import Method, NoOptions, build, get_method, method_names, register
from .mma import MMA
from .pgd_at import PGDAT
from .standard import Standard
from .trades import TRADES

# Every module of this package registers its method on import: a new method is one new file.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Method", "NoOptions", "register", "get_method", "method_names", "build", "build_method",
           "Standard", "PGDAT", "MMA", "TRADES", "AMM"]


def build_method(cfg: Any, num_examples: int, device: torch.device | str) -> Method:
    """The objective a :class:`~maxmargin.config.Config` asks for, with its options and the run's norm."""
    return build(cfg.method, cfg.options, norm=cfg.norm, num_examples=num_examples, device=device)
