"""What every attack shares: argument checks, the frozen-model context, the box."""
from __future__ import annotations

import math
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


def model_dtype(model: nn.Module | None) -> torch.dtype | None:
    """The floating dtype of ``model``'s first floating parameter (or buffer); ``None`` if it has none."""
    if model is None:
        return None
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_inputs(x: Tensor, y: Tensor, bounds: Bounds,
                 model: nn.Module | None = None) -> tuple[Tensor, Tensor, float, float]:
    """Validate an attack's ``x``, ``y`` and ``bounds``; return detached copies and the box.

    Refused with a ``ValueError`` naming the argument: ``x`` that is not a
    floating tensor (uint8 images must be scaled into the box first), holds
    NaN or inf, lies outside the box, or has another dtype than ``model``'s
    parameters (casting would silently change the precision the caller asked
    for; a float64 or float16 model takes x of its own dtype); ``y`` that is
    not a 1-D int64 tensor of one label per example or holds a negative
    label; ``bounds`` that is not a finite pair with low < high.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 2:
        hint = " (scale images into the box first, e.g. x.float() / 255)" if not x.is_floating_point() else ""
        raise ValueError(f"x must be a floating-point tensor of shape [B, ...], got {_name(x.dtype)} "
                         f"of shape {tuple(x.shape)}{hint}")
    want = model_dtype(model)
    if want is not None and x.dtype != want:
        raise ValueError(f"x has dtype {_name(x.dtype)} but the model's parameters are {_name(want)}: "
                         "convert one to the other (x.to(dtype) or model.to(dtype))")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        got = f"{_name(y.dtype)} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be an int64 tensor of shape [B], got {got}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} examples")
    if y.numel() and bool((y < 0).any()):
        raise ValueError("y holds a negative label")
    try:
        if len(bounds) != 2:
            raise TypeError
        lo, hi = float(bounds[0]), float(bounds[1])
    except (TypeError, IndexError, ValueError, RuntimeError):
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with low < high, got {bounds!r}")
    x = x.detach()
    if x.numel():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"x holds {bad} non-finite values (NaN or inf)")
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise ValueError(f"x lies outside bounds {bounds!r}; attacks need inputs inside the box")
    return x, y.to(x.device), lo, hi


def check_labels(logits: Tensor, y: Tensor) -> None:
    """Checks that need a forward pass: logits of shape ``[B, classes]``, finite, and labels that index the classes.

    A model that returns NaN or inf logits would otherwise make every loss,
    margin and search NaN, and the attacks would return numbers that mean nothing.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits of shape [B, classes], got {shape}")
    if logits.numel():
        bad = int((~torch.isfinite(logits)).any(1).sum())
        if bad:
            raise ValueError(f"model returned non-finite logits (NaN or inf) for {bad} of {logits.shape[0]} examples")
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"y holds label {int(y.max())} but the model has {logits.shape[1]} classes")


def check_count(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def sanitize(g: Tensor) -> Tensor:
    """Non-finite gradients become 0 so a broken model cannot push the output out of the box."""
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def input_grad(out: Tensor, x: Tensor, create_graph: bool = False, retain_graph: bool | None = None) -> Tensor:
    """``∂out/∂x`` with non-finite entries zeroed; zeros where ``out`` does not depend on ``x``.

    A model that binarizes, detaches or ignores its input (a classic gradient-
    masking defense, or a constant) gives no input gradient at all; such a
    model must be evaluated, not crash: gradient attacks simply find nothing
    and the evaluation's dead-gradient check says so.
    """
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, allow_unused=True, create_graph=create_graph, retain_graph=retain_graph)
    return torch.zeros_like(x) if g is None else sanitize(g)
