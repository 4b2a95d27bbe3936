"""What every attack shares: argument checks, the frozen-model context, the box."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

Bounds = tuple[float, float]


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and restore every submodule's own mode afterwards.

    Submodules may be in mixed modes (e.g. a frozen BatchNorm in a training
    model), so each module's flag is saved, not just the root's.
    """
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in zip(model.modules(), modes):
            m.training = t


def check_inputs(x: Tensor, y: Tensor, bounds: Bounds) -> tuple[Tensor, Tensor, float, float]:
    """Validate an attack's ``x``, ``y`` and ``bounds``; return detached copies and the box."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape [B, ...]")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError("y must be an int64 tensor of shape [B]")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} examples")
    if y.numel() and bool((y < 0).any()):
        raise ValueError("y holds a negative label")
    try:
        lo, hi = float(bounds[0]), float(bounds[1])
    except (TypeError, IndexError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}") from None
    if not lo < hi:
        raise ValueError(f"bounds must have low < high, got {bounds!r}")
    x = x.detach()
    if x.numel() and (float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6):
        raise ValueError(f"x lies outside bounds {bounds!r}; attacks need inputs inside the box")
    return x, y.to(x.device), lo, hi


def check_labels(logits: Tensor, y: Tensor) -> None:
    """Labels must index the model's classes (known only after a forward pass)."""
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"y holds label {int(y.max())} but the model has {logits.shape[1]} classes")


def check_count(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def sanitize(g: Tensor) -> Tensor:
    """Non-finite gradients become 0 so a broken model cannot push the output out of the box."""
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def input_grad(out: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """``∂out/∂x`` with non-finite entries zeroed; zeros where ``out`` does not depend on ``x``.

    A model that binarizes, detaches or ignores its input (a classic gradient-
    masking defense, or a constant) gives no input gradient at all; such a
    model must be evaluated, not crash: gradient attacks simply find nothing
    and the evaluation's dead-gradient check says so.
    """
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, allow_unused=True, create_graph=create_graph)
    return torch.zeros_like(x) if g is None else sanitize(g)
