"""Differentiable margin bounds for certified training (IBP, CROWN-IBP), read from the live parameters.

:mod:`maxmargin.bounds` certifies a fixed network: its ops hold detached
copies of the weights, so no gradient reaches the parameters. Training needs
the bound as a function of the parameters, so this module walks the model
itself: :class:`Chain` records once, with forward hooks, which leaf layers
the model calls and in which order, and every bound then reads each layer's
``weight`` and ``bias`` as they are at that step (the optimizer changes them
in place), under autograd.

Supported models are chains of ``Conv2d``, ``Linear``, ``ReLU``, ``MaxPool2d``,
``AvgPool2d``, ``Flatten`` (or a reshape between layers), ``Identity``,
``Dropout`` (eval mode or ``p = 0``) and ``BatchNorm`` in eval mode only: in
train mode BatchNorm normalizes by the batch's own statistics, which a bound
over each example's ball does not cover, so a BatchNorm layer in a training
model is refused (the quick models ``small_cnn`` and ``lenet5`` have none).

The region is the ball ∩ box of :class:`maxmargin.bounds.Region` (imported
from there for its exact concretization over the ball and the box).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bounds import MaxPool, Region
from ..errors import UserError
from ..norms import get_norm

Interval = tuple[Tensor, Tensor]
_BN = nn.modules.batchnorm._BatchNorm
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, _BN)
_LINEAR = (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, _BN)


class Reshape(nn.Module):
    """A reshape between two recorded layers (``x.view(len(x), -1)`` in a forward)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)


class Chain:
    """A model's leaf layers in call order, with each layer's per-example input shape.

    Built once per model from one forward pass; raises a :class:`UserError`
    for a model that is not a chain of supported layers.
    """

    def __init__(self, model: nn.Module, example: Tensor) -> None:
        name = type(model).__name__
        calls: list[tuple[nn.Module, Tensor, Tensor]] = []
        hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o)))
                 for m in model.modules() if not list(m.children())]
        first = example[:1]
        modes = [(m, m.training) for m in model.modules()]
        try:
            # in eval mode: no BatchNorm statistics updated, no dropout drawn, by this one look
            model.eval()
            with torch.no_grad():
                out = model(first)
        finally:
            for h in hooks:
                h.remove()
            for m, mode in modes:
                m.training = mode
        layers: list[nn.Module] = []
        shapes: list[tuple[int, ...]] = []
        prev = first
        for m, inp, o in calls:
            if not isinstance(m, _SUPPORTED):
                raise UserError(f"certified training cannot bound layer {type(m).__name__} of {name}; supported: "
                                "Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout, BatchNorm (eval)")
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                raise UserError(f"certified training supports zero-padded convolutions only ({name})")
            if inp is not prev:
                if not (inp.numel() == prev.numel() and inp.data_ptr() == prev.data_ptr()):
                    raise UserError(f"certified training needs a model whose layers form a chain; {name}'s "
                                    f"{type(m).__name__} does not take the previous layer's output")
                layers.append(Reshape(tuple(inp.shape[1:])))
                shapes.append(tuple(prev.shape[1:]))
            layers.append(m)
            shapes.append(tuple(inp.shape[1:]))
            prev = o
        if out is not prev:
            raise UserError(f"certified training needs a model whose last layer's output is its logits ({name})")
        self.layers, self.shapes = layers, shapes
        self.classes = int(out.shape[1])
        # the bound is folded backwards through the linear layers after the last non-linearity
        nonlinear = [i for i, m in enumerate(layers) if not isinstance(m, (*_LINEAR, Reshape))]
        self.head = nonlinear[-1] + 1 if nonlinear else 0

    def check_mode(self) -> None:
        """Refuse layers whose training-mode output is not a fixed function of the input."""
        for m in self.layers:
            if isinstance(m, _BN) and m.training:
                raise UserError("certified training cannot bound BatchNorm in train mode (it normalizes by the "
                                "batch's statistics); use a model without BatchNorm, such as small_cnn or lenet5")
            if isinstance(m, nn.Dropout) and m.training and m.p > 0:
                raise UserError("certified training cannot bound dropout in train mode (p > 0)")


def chain_of(model: nn.Module, example: Tensor, cache: dict[int, Chain]) -> Chain:
    """The model's :class:`Chain`, traced on first use and kept in ``cache`` (keyed by the model's id)."""
    chain = cache.get(id(model))
    if chain is None:
        chain = cache[id(model)] = Chain(model, example)
    chain.check_mode()
    return chain


def _interval(m: nn.Module, lo: Tensor, hi: Tensor) -> Interval:
    """The layer's output interval from its input interval (exact per neuron for affine layers)."""
    if isinstance(m, (nn.ReLU, nn.MaxPool2d)):
        return m(lo), m(hi)        # monotone
    if isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout, Reshape)):
        return m(lo), m(hi)        # Dropout: eval mode or p = 0 (checked), the identity
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    if isinstance(m, nn.Linear):
        mid, rad = m(mid), F.linear(rad, m.weight.abs())
    elif isinstance(m, nn.Conv2d):
        mid, rad = m(mid), m._conv_forward(rad, m.weight.abs(), None)
    elif isinstance(m, nn.AvgPool2d):
        mid, rad = m(mid), m(rad)
    else:                          # BatchNorm in eval mode: a per-channel scale and shift
        scale, _ = _bn_affine(m, lo)
        mid, rad = m(mid), rad * scale.abs()
    return mid - rad, mid + rad


def _bn_affine(m: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``scale · z + shift``, both shaped to broadcast against ``like``."""
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    shift = -m.running_mean * scale
    if m.bias is not None:
        shift = shift + m.bias
    view = (1, -1) + (1,) * (like.dim() - 2)
    return scale.reshape(view), shift.reshape(view)


def layer_intervals(chain: Chain, region: Region, upto: int | None = None) -> list[Interval]:
    """Interval bounds of the input of every layer ``< upto`` (and of layer ``upto``'s input), by IBP."""
    end = len(chain.layers) if upto is None else upto
    bounds = [region.box()]
    for m in chain.layers[:end]:
        bounds.append(_interval(m, *bounds[-1]))
    return bounds


def specification(y: Tensor, classes: int, like: Tensor) -> Tensor:
    """``[B, classes − 1, classes]``: the rows ``e_y − e_j`` for every ``j ≠ y`` (ascending ``j``)."""
    b = y.shape[0]
    others = torch.arange(classes, device=y.device).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, classes - 1)
    spec = torch.zeros(b, classes - 1, classes, dtype=like.dtype, device=like.device)
    spec.scatter_(2, y[:, None, None].expand(-1, classes - 1, 1), 1.0)
    return spec.scatter_(2, others[:, :, None], -1.0)


def _back_linear(m: nn.Module, a: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``a``: ``[B, S, *out]`` on the layer's output -> the coefficients on its input and the constant ``[B, S]``."""
    b, s = a.shape[:2]
    flat = a.reshape(b * s, *a.shape[2:])
    zero = a.new_zeros(b, s)
    if isinstance(m, nn.Linear):
        const = zero if m.bias is None else a @ m.bias
        return a @ m.weight, const
    if isinstance(m, (nn.Flatten, Reshape, nn.Identity, nn.Dropout)):
        return a.reshape(b, s, *in_shape), zero
    if isinstance(m, nn.Conv2d):
        h, w = in_shape[-2:]
        out_h, out_w = a.shape[-2:]
        pad = [0, 0]
        for k in range(2):
            size = (out_h, out_w)[k]
            full = ((size - 1) * m.stride[k] - 2 * m.padding[k]    # type: ignore[operator]
                    + m.dilation[k] * (m.kernel_size[k] - 1) + 1)
            pad[k] = (h, w)[k] - full
        coef = F.conv_transpose2d(flat, m.weight, None, m.stride, m.padding,  # type: ignore[arg-type]
                                  tuple(pad), m.groups, m.dilation)
        const = zero if m.bias is None else (a.sum((-1, -2)) @ m.bias)
        return coef.reshape(b, s, *in_shape), const
    if isinstance(m, _BN):
        scale, shift = _bn_affine(m, flat)
        const = (flat * shift).flatten(1).sum(1).reshape(b, s)
        return (flat * scale).reshape(b, s, *in_shape), const
    # AvgPool2d: the transpose of a parameter-free linear map, as a vector-Jacobian product
    z = torch.zeros(b * s, *in_shape, dtype=a.dtype, device=a.device, requires_grad=True)
    with torch.enable_grad():
        (coef,) = torch.autograd.grad(m(z), z, flat, create_graph=True)
    return coef.reshape(b, s, *in_shape), zero


def _back_relu(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """CROWN's ReLU relaxation for a lower bound of ``a · relu(z)``, ``lo ≤ z ≤ hi``.

    Upper line through ``(lo, 0)`` and ``(hi, hi)`` for unstable neurons, lower
    line ``slope · z`` with the adaptive slope (1 where ``hi > −lo``, else 0).
    """
    unstable = (lo < 0) & (hi > 0)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))     # no 0/0 (and no NaN gradient) off it
    up = torch.where(unstable, hi / width, (lo >= 0).to(a.dtype))
    low = torch.where(unstable, (hi > -lo).to(a.dtype), (lo >= 0).to(a.dtype))
    shift = torch.where(unstable, -up * lo, torch.zeros_like(lo))    # upper line: up · z + shift
    coef = a * torch.where(a >= 0, low[:, None], up[:, None])
    return coef, _dot(a.clamp_max(0), shift)


def _dot(a: Tensor, v: Tensor) -> Tensor:
    """``Σ a · v`` per example and row: ``a``: ``[B, S, *shape]``, ``v``: ``[B, *shape]`` -> ``[B, S]`` (one matmul)."""
    b, s = a.shape[:2]
    return (a.reshape(b, s, -1) @ v.reshape(b, -1, 1)).squeeze(2)


def _back_maxpool(m: nn.MaxPool2d, a: Tensor, lo: Tensor, hi: Tensor,
                  in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Max pooling's relaxation (the certifier's, :class:`maxmargin.bounds.MaxPool`), differentiable in the bounds.

    Lower: ``max ≥ z_m``, ``m`` the entry of the largest lower bound. Upper:
    ``max = z_m`` where ``lo_m`` beats every other entry's upper bound, else the
    constant ``max hi``. Non-overlapping windows (stride = kernel, no padding or
    dilation: the quick models' 2×2 pools) are done by reshapes, other
    windows by the certifier's op (unfold and fold, slower).
    """
    if m.ceil_mode or m.return_indices:
        raise UserError("certified training cannot bound MaxPool2d with ceil_mode or return_indices")
    pair: Callable[[Any], tuple[int, int]] = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    kernel, stride = pair(m.kernel_size), pair(m.stride or m.kernel_size)
    padding, dilation = pair(m.padding), pair(m.dilation)
    if kernel != stride or padding != (0, 0) or dilation != (1, 1):
        step = MaxPool(kernel, stride, padding, dilation).backward(a, [(lo, hi)], [in_shape])
        assert step is not None            # max pooling always has linear bounds
        (coef,), const = step
        return coef, a.new_zeros(a.shape[:2]) if const is None else const
    b, s, c, ho, wo = a.shape
    (kh, kw), (h, w) = kernel, in_shape[-2:]

    def windows(v: Tensor) -> Tensor:                      # [B, C, H, W] -> [B, C, Ho, Wo, kh·kw]
        v = v[..., :ho * kh, :wo * kw].reshape(b, c, ho, kh, wo, kw)
        return v.permute(0, 1, 2, 4, 3, 5).reshape(b, c, ho, wo, kh * kw)

    wl, wh = windows(lo), windows(hi)
    best = wl.argmax(-1, keepdim=True)
    onehot = torch.zeros_like(wl).scatter_(-1, best, 1.0)
    others = wh.masked_fill(onehot.bool(), float("-inf")).amax(-1)
    decided = (wl.gather(-1, best).squeeze(-1) >= others)[:, None]      # [B, 1, C, Ho, Wo]
    on_best = torch.where(decided, a, a.clamp_min(0))
    const = _dot(torch.where(decided, torch.zeros_like(a), a.clamp_max(0)), wh.amax(-1))
    coef = (on_best[..., None] * onehot[:, None]).reshape(b, s, c, ho, wo, kh, kw)
    coef = coef.permute(0, 1, 2, 3, 5, 4, 6).reshape(b, s, c, ho * kh, wo * kw)
    return F.pad(coef, (0, w - wo * kw, 0, h - ho * kh)), const


def _concretize_head(chain: Chain, spec: Tensor, bounds: list[Interval]) -> Tensor:
    """``spec`` folded through the linear layers after the last non-linearity, bounded by their input's interval."""
    a, total = spec, spec.new_zeros(spec.shape[:2])
    for i in range(len(chain.layers) - 1, chain.head - 1, -1):
        a, const = _back_linear(chain.layers[i], a, chain.shapes[i])
        total = total + const
    lo, hi = bounds[chain.head]
    b, s = a.shape[:2]
    flat = a.reshape(b, s, -1)
    mid, rad = ((hi + lo) / 2).reshape(b, 1, -1), ((hi - lo) / 2).reshape(b, 1, -1)
    return total + (flat * mid).sum(2) - (flat.abs() * rad).sum(2)


def _crown(chain: Chain, spec: Tensor, bounds: list[Interval], region: Region) -> Tensor:
    """CROWN's backward pass from ``spec`` to the input, every relaxation using the interval (IBP) bounds."""
    a, total = spec, spec.new_zeros(spec.shape[:2])
    for i in range(len(chain.layers) - 1, -1, -1):
        m, shape = chain.layers[i], chain.shapes[i]
        lo, hi = bounds[i]
        if isinstance(m, nn.ReLU):
            a, const = _back_relu(a, lo, hi)
        elif isinstance(m, nn.MaxPool2d):
            a, const = _back_maxpool(m, a, lo, hi, shape)
        else:
            a, const = _back_linear(m, a, shape)
        total = total + const
    return total + region.lower(a)


def margin_bounds(chain: Chain, x: Tensor, y: Tensor, eps: Tensor | float, norm: str,
                  beta: float = 0.0) -> Tensor:
    """Lower bounds of ``f_y − f_j`` (``j ≠ y``) over the ε-ball ∩ ``[0, 1]``: ``[B, classes − 1]``, differentiable.

    ``beta = 0`` is IBP with the specification folded into the last linear
    layers; ``beta = 1`` is CROWN-IBP (IBP for every intermediate layer, CROWN's
    backward pass for the margins); in between, CROWN-IBP's mix
    ``beta · crown_ibp + (1 − beta) · ibp``.
    """
    r = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])
    region = Region(x, r, get_norm(norm), 0.0, 1.0)
    need = len(chain.layers) if beta > 0 else chain.head
    bounds = layer_intervals(chain, region, need)
    spec = specification(y, chain.classes, x)
    low = _concretize_head(chain, spec, bounds) if beta < 1 else None
    if beta > 0:
        crown = _crown(chain, spec, bounds, region)
        low = crown if low is None else beta * crown + (1 - beta) * low
    assert low is not None
    return low


def worst_logits(low: Tensor, y: Tensor) -> Tensor:
    """Logits whose cross-entropy is the bound loss: ``z_y = 0``, ``z_j = −lower(f_y − f_j)``."""
    b, k = low.shape[0], low.shape[1] + 1
    z = low.new_zeros(b, k)
    keep = torch.ones(b, k, dtype=torch.bool, device=low.device).scatter_(1, y[:, None], False)
    return z.masked_scatter(keep, -low)
