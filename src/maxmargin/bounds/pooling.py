"""Pooling: max pooling (relaxed) and the averaging maps (affine).

Averaging maps have non-negative weights, so ``|W| z = W z``; ``W² z``
(for the L2 ball's row norms) is ``W z`` scaled by each output's own weight,
because every input of one window carries the same weight ``1/divisor``.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .affine import Affine
from .registry import BackwardStep, BoundOp, Call, Interval, Unsupported, WindowStep, bound_op
from .windows import At, pair


def _bound_call(f: Callable[..., Tensor], args: list[Any], kwargs: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    """``f(z, *args, **kwargs)`` as a function of ``z`` alone."""
    def fn(z: Tensor) -> Tensor:
        return f(z, *args, **kwargs)
    return fn


_MAXPOOL_OPTIONS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


@bound_op(nn.MaxPool2d, F.max_pool2d)
class MaxPool(BoundOp):
    """2-D max pooling (zero or more padding, any stride and dilation, not ceil mode)."""

    relaxed: ClassVar[bool] = True

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int]) -> None:
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation

    @classmethod
    def from_call(cls, call: Call) -> MaxPool:
        call.only_first_tensor()
        m = call.module
        if m is not None:
            kw = {k: getattr(m, k) for k in _MAXPOOL_OPTIONS}
        else:
            kw = {k: call.option(i + 1, k) for i, k in enumerate(_MAXPOOL_OPTIONS)}
        if kw["ceil_mode"] or kw["return_indices"]:
            raise Unsupported("ceil_mode or return_indices")
        k = kw["kernel_size"]
        return cls(pair(k), pair(kw["stride"] or k), pair(kw["padding"] or 0),
                   pair(1 if kw["dilation"] is None else kw["dilation"]))

    def _pool(self, v: Tensor) -> Tensor:
        return F.max_pool2d(v, self.kernel, self.stride, self.padding, self.dilation)

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return self._pool(lo), self._pool(hi)

    def _windows(self, v: Tensor, at: At | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """``[B, C, k, L]``: every window's entries, padding as −inf (never the max).

        ``at``, ``size``: only the windows of the outputs in that window of the output map.
        """
        ph, pw = self.padding
        v = F.pad(v, (pw, pw, ph, ph), value=float("-inf"))
        if at is not None and size is not None:
            # output o reads padded rows o·s + j·d, j < k
            (sh, sw), (dh, dw), (kh, kw) = self.stride, self.dilation, self.kernel
            v = v[..., at[0] * sh:(at[0] + size[0] - 1) * sh + dh * (kh - 1) + 1,
                  at[1] * sw:(at[1] + size[1] - 1) * sw + dw * (kw - 1) + 1]
        cols = F.unfold(v, self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.reshape(v.shape[0], v.shape[1], -1, cols.shape[-1])

    def _positions(self, like: Tensor, at: At | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """``[1, C, k, L]``: every window entry's flat input position, ``-1`` for padding."""
        h, w = like.shape[-2:]
        flat = torch.arange(h * w, dtype=torch.float64, device=like.device)
        pos = self._windows(flat.reshape(1, 1, h, w).expand(1, like.shape[1], -1, -1).contiguous(), at, size)
        return torch.where(pos.isinf(), -1, pos).long()

    @staticmethod
    def _to_input(per_entry: Tensor, positions: Tensor, like: Tensor) -> Tensor:
        """Sum window entries (``[B, C, k, L]``, zero on padding) into their input positions: ``like``'s shape."""
        index = positions.clamp_min(0).expand(per_entry.shape[0], -1, -1, -1).flatten(2)
        out = torch.zeros(*per_entry.shape[:2], like.shape[-2] * like.shape[-1], dtype=per_entry.dtype,
                          device=per_entry.device)
        return out.scatter_add(2, index, per_entry.flatten(2)).reshape(like.shape)

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Both bounds of every entry that can be its window's maximum: they decide which entry the relaxation
        follows, whether the maximum is settled, and its cap. (Only the largest lower bound's entry from below
        left 20 % of quick-mma's digits more than 1 % looser than auto_LiRPA's CROWN at ε 0.1; this, none.)"""
        wl, wh = self._windows(lo), self._windows(hi)
        m = wl.argmax(dim=2, keepdim=True)
        others = wh.scatter(2, m, float("-inf")).amax(dim=2, keepdim=True)
        # a settled window (one entry above every other's reach) is relaxed exactly: it needs nothing
        can = (wh >= wl.gather(2, m)) & (wl.gather(2, m) < others)
        need = self._to_input(can.to(lo.dtype), self._positions(lo), lo) > 0
        return need, need

    def _relax(self, lo: Tensor, hi: Tensor, at: At | None = None,
               size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per output ``[B, C, Ho, Wo]`` (or the window ``size`` at ``at``): the flat input position its
        relaxation follows, whether it is settled, its cap.

        Lower relaxation: ``max ≥ z_m`` with ``m`` the entry of the largest lower
        bound. Upper: ``max = z_m`` when ``lo_m`` beats every other entry's upper
        bound (settled), else the constant cap ``max hi``.
        """
        wl, wh = self._windows(lo, at, size), self._windows(hi, at, size)     # [B, C, k, L]
        m = wl.argmax(dim=2, keepdim=True)
        others = wh.scatter(2, m, float("-inf")).amax(dim=2)
        decided = wl.gather(2, m).squeeze(2) >= others                # [B, C, L]
        index = self._positions(lo, at, size).expand(lo.shape[0], -1, -1, -1).gather(2, m).squeeze(2)
        out = self._pool(lo[:1]).shape[-2:] if size is None else size
        return (index.reshape(*index.shape[:2], *out), decided.reshape(*index.shape[:2], *out),
                wh.amax(dim=2).reshape(*index.shape[:2], *out))

    @staticmethod
    def _follow(a: Tensor, index: Tensor, decided: Tensor, top: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """``a`` (``[B, S, C, Ho, Wo]``) through the relaxation into ``size`` input positions by ``index``."""
        neg = a.clamp_max(0)
        on_m = torch.where(decided[:, None], a, a.clamp_min(0))
        const = (torch.where(decided[:, None], torch.zeros_like(neg), neg) * top[:, None]).flatten(2).sum(2)
        # each window's coefficient goes to its followed entry: a scatter-add into the input (windows may overlap)
        coef = torch.zeros(*a.shape[:3], size, dtype=a.dtype, device=a.device)
        coef = coef.scatter_add(3, index[:, None].flatten(3).expand(*a.shape[:3], -1), on_m.flatten(3))
        return coef, const

    def back(self, a: Tensor, lo: Tensor, hi: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``a``: ``[B, S, C, Ho, Wo]``; ``lo``/``hi``: ``[B, C, H, W]``; see :meth:`_relax`."""
        index, decided, top = self._relax(lo, hi)
        coef, const = self._follow(a, index, decided, top, in_shape[-2] * in_shape[-1])
        return coef.reshape(*a.shape[:2], *in_shape), const

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep:
        lo, hi = ins[0]
        coef, const = self.back(a, lo, hi, in_shapes[0])
        return [coef], const

    def backward_window(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                        at: At) -> WindowStep:
        """The window's outputs follow entries inside their own windows: the input window they span."""
        index, decided, top = self._relax(*ins[0], at, (a.shape[-2], a.shape[-1]))
        (sh, sw), (ph, pw), (dh, dw), (kh, kw) = self.stride, self.padding, self.dilation, self.kernel
        height, width = in_shapes[0][-2:]
        t0, l0 = max(0, at[0] * sh - ph), max(0, at[1] * sw - pw)
        t1 = min(height, (at[0] + a.shape[-2] - 1) * sh - ph + dh * (kh - 1) + 1)
        l1 = min(width, (at[1] + a.shape[-1] - 1) * sw - pw + dw * (kw - 1) + 1)
        local = (index // width - t0) * (l1 - l0) + (index % width - l0)
        coef, const = self._follow(a, local, decided, top, (t1 - t0) * (l1 - l0))
        return [coef.reshape(*a.shape[:3], t1 - t0, l1 - l0)], [(t0, l0)], const


class _Average(Affine):
    """An averaging map ``fn``: ``W ≥ 0`` with equal weights within each output's window."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.average = fn

    def fn(self, z: Tensor) -> Tensor:
        return self.average(z)

    abs_fn = fn     # non-negative weights

    @abstractmethod
    def row_weight(self, z: Tensor) -> Tensor:
        """Each output's weight (``1/divisor``), broadcastable against ``fn(z)``."""

    def sq_fn(self, z: Tensor) -> Tensor:
        # Σ_j W_ij² z_j = w_i Σ_j W_ij z_j: all weights of row i equal w_i
        return self.average(z) * self.row_weight(z)


_AVGPOOL_OPTIONS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_AVGPOOL_DEFAULTS = (None, None, 0, False, True, None)


@bound_op(nn.AvgPool1d, nn.AvgPool2d, F.avg_pool1d, F.avg_pool2d)
class AvgPool(_Average):
    """1-D and 2-D average pooling, any padding, ``ceil_mode``, ``count_include_pad`` and ``divisor_override``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], dims: int, options: dict[str, Any]) -> None:
        super().__init__(fn)
        self.dims, self.options = dims, options

    @classmethod
    def from_call(cls, call: Call) -> AvgPool:
        call.only_first_tensor()
        m = call.module
        dims = len(call.out_shape) - 1
        if m is not None:
            options = {k: getattr(m, k, d) for k, d in zip(_AVGPOOL_OPTIONS, _AVGPOOL_DEFAULTS)}
            return cls(m, dims, options)
        options = {k: call.option(i + 1, k, d) for i, (k, d) in enumerate(zip(_AVGPOOL_OPTIONS, _AVGPOOL_DEFAULTS))}
        fn, args, kwargs = call.target, [call.const(a) for a in call.args[1:]], {
            k: call.const(v) for k, v in call.kwargs.items()}
        return cls(lambda z: fn(z, *args, **kwargs), dims, options)

    def _sums(self, z: Tensor) -> Tensor:
        """The same windows' plain sums (padding adds zeros)."""
        o = self.options
        k = o["kernel_size"]
        stride = o["stride"] or k
        if self.dims == 1:        # avg_pool1d has no divisor_override: pool a height-1 image
            k, stride, pad = (1, _first(k)), (1, _first(stride)), (0, _first(o["padding"]))
            return F.avg_pool2d(z.unsqueeze(-2), k, stride, pad, o["ceil_mode"], True, 1).squeeze(-2)
        return F.avg_pool2d(z, k, stride, o["padding"], o["ceil_mode"], True, 1)

    def row_weight(self, z: Tensor) -> Tensor:
        ones = torch.ones_like(z[:1])
        # fn(1)_i = n_i · w_i and the plain sum of ones is n_i, the inputs in window i
        return self.average(ones) / self._sums(ones).clamp_min(1)


def _first(v: Any) -> int:
    return v if isinstance(v, int) else v[0]


@bound_op(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)
class AdaptiveAvgPool(_Average):
    """Adaptive average pooling (1-D, 2-D): window ``i`` of ``O`` over ``L`` inputs is ``[⌊iL/O⌋, ⌈(i+1)L/O⌉)``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], in_sizes: tuple[int, ...], out_sizes: tuple[int, ...]) -> None:
        super().__init__(fn)
        # window i covers [floor(i n / o), ceil((i + 1) n / o)), as PyTorch's kernels compute it
        counts = [torch.tensor([-((-(i + 1) * n) // o) - (i * n) // o for i in range(o)], dtype=torch.float64)
                  for n, o in zip(in_sizes, out_sizes)]
        size = counts[0]
        for c in counts[1:]:
            size = size[:, None] * c
        self.counts = size

    @classmethod
    def from_call(cls, call: Call) -> AdaptiveAvgPool:
        call.only_first_tensor()
        m = call.module
        if m is not None:
            fn = m
        else:
            fn = _bound_call(call.target, [call.const(a) for a in call.args[1:]],
                             {k: call.const(v) for k, v in call.kwargs.items()})
        dims = len(call.out_shape) - 1
        return cls(fn, call.in_shapes[0][-dims:], call.out_shape[-dims:])

    def row_weight(self, z: Tensor) -> Tensor:
        return (1 / self.counts).to(z)


@bound_op(torch.mean, "mean")
class Mean(_Average):
    """``mean`` over some dimensions of each example: weights ``1/n`` for the ``n`` averaged entries."""

    def __init__(self, fn: Callable[[Tensor], Tensor], ratio: float) -> None:
        super().__init__(fn)
        self.ratio = ratio

    @classmethod
    def from_call(cls, call: Call) -> Mean:
        call.only_first_tensor()
        if call.kwargs.get("dtype") is not None:
            raise Unsupported("mean with dtype=")
        other = tuple(call.const(a) for a in call.args[1:])
        kwargs = {k: call.const(v) for k, v in call.kwargs.items()}
        dims = other[0] if other else kwargs.get("dim")
        rank = len(call.in_shapes[0]) + 1
        if dims is None or 0 in [d % rank for d in ((dims,) if isinstance(dims, int) else dims)]:
            raise Unsupported("a mean over the batch dimension mixes examples")
        # every output averages the same number of entries: the ratio of the sizes per example
        ratio = math.prod(call.out_shape) / math.prod(call.in_shapes[0])
        return cls(lambda z: z.mean(*other, **kwargs), ratio)

    def row_weight(self, z: Tensor) -> Tensor:
        return torch.tensor(self.ratio, dtype=z.dtype, device=z.device)
