"""adv-lib 0.2.8's minimal-norm attacks as independent references for our margin estimates.

adv-lib declares torchvision and visdom but its attacks use neither; install it
with ``pip install --no-deps adv-lib==0.2.8``. Empty stand-ins for those two
names are put in ``sys.modules`` only if they are missing, only for the import.
"""
from __future__ import annotations

import sys
import types
from collections.abc import Callable

import torch
from torch import Tensor, nn


class _Absent(types.ModuleType):
    """Any attribute is another stand-in: enough for module-level imports that are never called."""

    def __getattr__(self, name: str) -> _Absent:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Absent(f"{self.__name__}.{name}")


def load() -> dict[str, dict[str, Callable]] | None:
    """``{"linf": {name: attack}, "l2": {...}}``, or None where adv-lib is not installed."""
    stubs = [name for name in ("torchvision", "torchvision.models", "visdom") if name not in sys.modules]
    for name in stubs:
        sys.modules[name] = _Absent(name)
    try:
        from adv_lib.attacks import alma, ddn, fab, fmn
    except ImportError:
        return None
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    inf = float("inf")
    return {
        "linf": {"FMN": lambda m, x, y: fmn(m, x, y, norm=inf, steps=1000),
                 "FAB": lambda m, x, y: fab(m, x, y, norm=inf)},
        "l2": {"FMN": lambda m, x, y: fmn(m, x, y, norm=2, steps=1000),
               "FAB": lambda m, x, y: fab(m, x, y, norm=2),
               "DDN": lambda m, x, y: ddn(m, x, y, steps=1000),
               "ALMA": lambda m, x, y: alma(m, x, y, distance="l2", num_steps=1000)},
    }


def verified_norms(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: str) -> Tensor:
    """‖x_adv − x‖ where x_adv is misclassified and inside [0, 1], else inf: only checked points count."""
    from maxmargin.norms import get_norm

    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    inside = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(1)
    d = get_norm(norm).measure(x_adv - x)
    return torch.where(wrong & inside, d, torch.full_like(d, float("inf")))
