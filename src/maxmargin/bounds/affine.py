"""Affine layers: bounded exactly, by intervals and by linear (backward) bounds.

:class:`Affine` is the base of every op of the form ``z ↦ W z + b``; a
subclass gives ``W`` as three functions (``fn``: ``W z + b``, ``abs_fn``:
``|W| z``, ``sq_fn``: ``W² z``, elementwise powers) and the rest follows:
interval bounds from the centre and radius, backward bounds as a
vector-Jacobian product, and bounds over the input ball from the rows' dual
norms (which is why ``sq_fn`` is required: the L2 ball needs ``‖W_i‖₂``).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as conv_grad

from ..norms import bcast
from .registry import BackwardStep, BoundOp, Call, Interval, Unsupported, WindowStep, bound_op
from .windows import At, clip, crop, pair

if TYPE_CHECKING:
    from .propagate import Region


class Affine(BoundOp):
    """``z ↦ W z + b`` with ``W`` given as functions; subclasses implement :meth:`fn`, :meth:`abs_fn`, :meth:`sq_fn`.

    ``matrix`` (a Linear layer's weight) turns back-substitution into one
    matmul; ``is_reshape`` marks a pure reshape, whose back-substitution is a
    reshape too.
    """

    linear: ClassVar[bool] = True
    matrix: Tensor | None = None
    _bias: Tensor | None = None

    @abstractmethod
    def fn(self, z: Tensor) -> Tensor:
        """``W z + b``."""

    @abstractmethod
    def abs_fn(self, z: Tensor) -> Tensor:
        """``|W| z`` (no bias)."""

    @abstractmethod
    def sq_fn(self, z: Tensor) -> Tensor:
        """``W² z`` (elementwise square of ``W``, no bias)."""

    def bias(self, in_shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``b``, computed once per dtype as the map of a zero input."""
        if self._bias is None or self._bias.dtype != like.dtype:
            self._bias = self.fn(torch.zeros(1, *in_shape, dtype=like.dtype, device=like.device)).detach()
        return self._bias

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        mid, rad = self.fn((lo + hi) / 2), self.abs_fn((hi - lo) / 2)
        return mid - rad, mid + rad

    def backward_window(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                        at: At) -> WindowStep | None:
        """A diagonal map (:meth:`scale`) scales the window by the same window of its diagonal."""
        diag = self.scale()
        if diag is None:
            return None
        full = (1, *in_shapes[0])
        scale = torch.as_tensor(diag, dtype=a.dtype, device=a.device)
        if torch.broadcast_shapes(scale.shape, full) != full:     # a constant that broadcasts to a larger shape
            return None
        size = (a.shape[-2], a.shape[-1])
        bias = crop(self.bias(in_shapes[0], a), at, size)
        return [a * crop(scale.expand(full), at, size)], [at], (a * bias).flatten(2).sum(2)

    def scale(self) -> Tensor | float | None:
        """The diagonal, broadcastable against the input, when each output reads only the input at its own
        position (BatchNorm, a shift, a scale); None for any other map. Read off exactly, not recovered as
        ``fn(1) − fn(0)`` (in float32 that loses the scale wherever the shift is much larger)."""
        return None

    def back(self, a: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``Aᵀ``-products: the coefficients on the input and the constant, for ``a`` of shape ``[N, *out]``."""
        if self.is_reshape:
            return a.reshape(a.shape[0], *in_shape), a.new_zeros(a.shape[0])
        const = (a * self.bias(in_shape, a)).flatten(1).sum(1)
        if self.matrix is not None:
            return a @ self.matrix, const
        # A vector-Jacobian product of an affine map is its transpose applied to ``a``.
        z = torch.zeros(a.shape[0], *in_shape, dtype=a.dtype, device=a.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.fn(z), z, a, create_graph=a.requires_grad)
        return g, const

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep:
        b, s = a.shape[:2]
        coef, const = self.back(a.reshape(b * s, *a.shape[2:]), in_shapes[0])
        return [coef.reshape(b, s, *in_shapes[0])], const.reshape(b, s)

    def input_interval(self, region: Region) -> Interval:
        """Over the input region: the tighter of the box's interval and the ball's ``W x0 + b ± r ‖W_i‖_*``."""
        lo, hi = self.interval([region.box()])
        ones = torch.ones_like(region.x0[:1])
        reach = region.norm.row_duals(self.abs_fn, self.sq_fn, ones)
        mid = self.fn(region.x0)
        rad = reach * bcast(region.r, mid)
        return torch.maximum(lo, mid - rad), torch.minimum(hi, mid + rad)


def _weights(call: Call) -> tuple[Tensor, Tensor | None]:
    """A functional layer's weight and bias, which must be constants of the model (not computed from the input)."""
    call.only_first_tensor()
    w, b = call.option(1, "weight"), call.option(2, "bias")
    if not torch.is_tensor(w) or not (b is None or torch.is_tensor(b)):
        raise Unsupported("its weight and bias must be tensors of the model")
    return w.detach(), None if b is None else b.detach()


@bound_op(nn.Linear, F.linear)
class Linear(Affine):
    """``F.linear(z, w, b)``: ``nn.Linear`` or the function with constant weights."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.w, self.b = weight, bias
        self.matrix = weight
        self.fan_in = weight[0].numel()

    @classmethod
    def from_call(cls, call: Call) -> Linear:
        m = call.module
        if m is None:
            return cls(*_weights(call))
        return cls(m.weight.detach(), None if m.bias is None else m.bias.detach())

    def fn(self, z: Tensor) -> Tensor:
        return F.linear(z, self.w, self.b)

    def abs_fn(self, z: Tensor) -> Tensor:
        return F.linear(z, self.w.abs())

    def sq_fn(self, z: Tensor) -> Tensor:
        return F.linear(z, self.w * self.w)


_CONV_OPTIONS = ("stride", "padding", "dilation", "groups")


@bound_op(nn.Conv1d, nn.Conv2d, F.conv1d, F.conv2d)
class Conv(Affine):
    """Convolution with zero padding: ``nn.Conv1d``/``nn.Conv2d`` or ``F.conv1d``/``F.conv2d`` with constant weights."""

    def __init__(self, conv: Callable[[Tensor, Tensor, Tensor | None], Tensor], weight: Tensor,
                 bias: Tensor | None, options: dict[str, Any] | None = None) -> None:
        self.conv, self.w, self.b = conv, weight, bias
        self.fan_in = weight[0].numel()
        # numeric stride/padding/dilation/groups: back-substitution is then one transposed convolution
        self.options = options if options is not None and not isinstance(options.get("padding"), str) else None

    @classmethod
    def from_call(cls, call: Call) -> Conv:
        m = call.module
        if m is None:
            w, b = _weights(call)
            fn, opts = call.target, {k: call.option(i + 3, k) for i, k in enumerate(_CONV_OPTIONS)}
            opts = {k: v for k, v in opts.items() if v is not None}
            return cls(lambda z, w_, b_: fn(z, w_, b_, **opts), w, b, opts)
        if m.padding_mode != "zeros":
            raise Unsupported(f"padding_mode={m.padding_mode!r}; only zero padding is supported")
        return cls(m._conv_forward, m.weight.detach(), None if m.bias is None else m.bias.detach(),
                   {k: getattr(m, k) for k in _CONV_OPTIONS})

    def back(self, a: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        if self.options is None:
            return super().back(a, in_shape)
        # the transposed convolution directly: the generic vector-Jacobian product would also run a
        # forward convolution of zeros as large as ``a``, and this one is differentiable (α-CROWN)
        grad_input = conv_grad.conv1d_input if self.w.dim() == 3 else conv_grad.conv2d_input
        o = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **self.options}
        coef = grad_input((a.shape[0], *in_shape), self.w.to(a.dtype), a, o["stride"], o["padding"],
                          o["dilation"], o["groups"])
        return coef, (a * self.bias(in_shape, a)).flatten(1).sum(1)

    def backward_window(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                        at: At) -> WindowStep | None:
        """The transposed convolution of the window alone: its input window is the receptive field, cut to the map."""
        if self.options is None or self.w.dim() != 4:
            return None
        o = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **self.options}
        stride, pad, dil = pair(o["stride"]), pair(o["padding"]), pair(o["dilation"])
        b, s = a.shape[:2]
        h, w = a.shape[-2:]
        k = self.w.shape[-2:]
        # the input rows/columns that outputs [0, h) × [0, w) of the window read, padding included
        ext = ((h - 1) * stride[0] + dil[0] * (k[0] - 1) + 1, (w - 1) * stride[1] + dil[1] * (k[1] - 1) + 1)
        coef = conv_grad.conv2d_input((b * s, in_shapes[0][0], *ext), self.w.to(a.dtype),
                                      a.reshape(b * s, *a.shape[2:]), stride, 0, dil, o["groups"])
        coef, where = clip(coef, at[0] * stride[0] - pad[0], at[1] * stride[1] - pad[1], in_shapes[0])
        const = None if self.b is None else (a.sum((-2, -1)) * self.b.to(a.dtype)).sum(-1)
        return [coef.reshape(b, s, *coef.shape[1:])], [where], const

    def fn(self, z: Tensor) -> Tensor:
        return self.conv(z, self.w, self.b)

    def abs_fn(self, z: Tensor) -> Tensor:
        return self.conv(z, self.w.abs(), None)

    def sq_fn(self, z: Tensor) -> Tensor:
        return self.conv(z, self.w * self.w, None)


@bound_op(nn.modules.batchnorm._BatchNorm)
class BatchNorm(Affine):
    """BatchNorm in eval mode: a per-channel scale and shift from the running statistics."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        self.s, self.t = scale, shift

    @classmethod
    def from_call(cls, call: Call) -> BatchNorm:
        m = call.module
        if m.running_mean is None or m.running_var is None:
            raise Unsupported("no running statistics: it has no fixed affine form in eval mode")
        scale = (m.running_var + m.eps).rsqrt()
        if m.weight is not None:
            scale = scale * m.weight
        shift = -m.running_mean * scale + (m.bias if m.bias is not None else 0)
        view = (1, -1) + (1,) * (len(call.out_shape) - 1)
        return cls(scale.detach().reshape(view), shift.detach().reshape(view))

    def fn(self, z: Tensor) -> Tensor:
        return z * self.s + self.t

    def scale(self) -> Tensor:
        return self.s

    def abs_fn(self, z: Tensor) -> Tensor:
        return z * self.s.abs()

    def sq_fn(self, z: Tensor) -> Tensor:
        return z * self.s * self.s


@bound_op(nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
          torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
          "flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", F.dropout)
class Reshape(Affine):
    """Reshapes, and dropout in eval mode: the identity on the values, a new shape per example."""

    is_reshape: ClassVar[bool] = True

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    @classmethod
    def from_call(cls, call: Call) -> Reshape:
        call.only_first_tensor()
        if call.target is F.dropout and call.option(2, "training", True):
            raise Unsupported("dropout in training mode (training=True) is random, not a fixed function")
        return cls(call.out_shape)

    def fn(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)

    abs_fn = sq_fn = fn
