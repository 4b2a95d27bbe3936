"""maxmargin: Max-Margin Adversarial training and honest robustness evaluation."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "load_data"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that importing one submodule (maxmargin.bounds, the CLI's version)
    # does not import the models, the data and the training code with it.
    if name in ("load_model", "load_data"):
        from . import runs
        return getattr(runs, name)
    raise AttributeError(f"module 'maxmargin' has no attribute {name!r}")
