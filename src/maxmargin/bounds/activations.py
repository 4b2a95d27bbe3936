"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh, each with a sound linear relaxation.

Every relaxation is a pair of lines per neuron over its input interval
``[lo, hi]``: ``sl·z + bl ≤ f(z) ≤ su·z + bu``. A backward bound picks the
lower line where its coefficient is positive and the upper one where it is
negative (CROWN, Zhang et al. 2018).
"""
from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import BackwardStep, BoundOp, Call, Interval, TunableOp, bound_op

Lines = tuple[Tensor, Tensor, Tensor, Tensor]
"""``(sl, bl, su, bu)``: slopes and intercepts of the lower and upper lines, each shaped like the bounds."""


@bound_op(nn.ReLU, F.relu, torch.relu, torch.relu_, "relu", "relu_")
class Relu(TunableOp):
    """``max(z, 0)``: the triangle relaxation, with the lower line of the smaller area.

    The lower line ``α z`` is sound for any ``α ∈ [0, 1]``: α-CROWN tunes it
    (:meth:`backward_tuned`), starting from the smaller-area choice.
    """

    relaxed: ClassVar[bool] = True
    pointwise: ClassVar[bool] = True

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return lo.clamp_min(0), hi.clamp_min(0)

    @staticmethod
    def back(a: Tensor, lo: Tensor, hi: Tensor, slope: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Lower bound of ``a · relu(z)`` by a linear function of ``z``; ``lo``, ``hi`` broadcast against ``a``.

        ``slope``: the lower line's slope on unstable neurons (clamped to
        ``[0, 1]``, where the line stays below the ReLU); by default the
        line of the smaller area, identity where ``hi > −lo``, else 0.
        """
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        slope_up = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), active.to(a.dtype))
        tuned = (hi > -lo).to(a.dtype) if slope is None else slope.clamp(0, 1)
        slope_lo = torch.where(unstable, tuned, active.to(a.dtype))
        # few passes over ``a`` (full CROWN sends thousands of rows through here)
        coef = a * torch.where(a >= 0, slope_lo, slope_up)
        intercept = torch.where(unstable, -slope_up * lo, torch.zeros_like(lo)).expand(a.shape[0], 1, *a.shape[2:])
        const = torch.bmm(a.clamp_max(0).flatten(2), intercept.flatten(2).transpose(1, 2)).squeeze(2)
        return coef, const

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep:
        lo, hi = ins[0]
        coef, const = self.back(a, lo[:, None], hi[:, None])
        return [coef], const.reshape(a.shape[:2])

    def backward_tuned(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                       params: Tensor) -> BackwardStep:
        lo, hi = ins[0]
        coef, const = self.back(a, lo[:, None], hi[:, None], params)
        return [coef], const.reshape(a.shape[:2])

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        unstable = (lo < 0) & (hi > 0)
        return unstable, unstable

    def initial_params(self, a: Tensor, ins: list[Interval]) -> Tensor:
        lo, hi = ins[0]
        return (hi > -lo).to(a.dtype)[:, None].expand_as(a).clone()

    def project(self, params: Tensor) -> Tensor:
        return params.clamp(0, 1)


class Elementwise(BoundOp):
    """Base of elementwise activations relaxed by two lines per neuron: implement :meth:`lines`."""

    relaxed: ClassVar[bool] = True
    pointwise: ClassVar[bool] = True

    @abstractmethod
    def lines(self, lo: Tensor, hi: Tensor) -> Lines:
        """``(sl, bl, su, bu)`` with ``sl·z + bl ≤ f(z) ≤ su·z + bu`` for every ``z`` in ``[lo, hi]``."""

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep:
        lo, hi = ins[0]
        sl, bl, su, bu = (t[:, None] for t in self.lines(lo, hi))
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        coef = pos * sl + neg * su
        const = (pos * bl + neg * bu).flatten(2).sum(2)
        return [coef], const


@bound_op(nn.LeakyReLU, F.leaky_relu, F.leaky_relu_)
class LeakyRelu(Elementwise):
    """``z`` for ``z ≥ 0``, ``α z`` below: convex for ``α ≤ 1`` (``max(z, αz)``), concave above (``min``).

    On an interval around the kink, the chord bounds the function from above
    (convex) or below (concave), and a line through the origin with slope
    ``1`` or ``α`` (whichever side of the kink is longer) from the other side:
    any slope between the two is a sub- (super-)gradient at the kink.
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.alpha = float(negative_slope)

    @classmethod
    def from_call(cls, call: Call) -> LeakyRelu:
        if call.module is not None:
            return cls(call.module.negative_slope)
        call.only_first_tensor()
        return cls(call.option(1, "negative_slope", 0.01))

    def f(self, z: Tensor) -> Tensor:
        return torch.where(z >= 0, z, self.alpha * z)

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        unstable = (lo < 0) & (hi > 0)      # linear on either side of the kink: exact whatever the bounds
        return unstable, unstable

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        # a piecewise-linear function with one kink takes its extremes at the ends or at the kink
        vals = torch.stack([self.f(lo), self.f(hi), self.f(torch.minimum(torch.maximum(lo, lo.new_zeros(())), hi))])
        return vals.amin(0), vals.amax(0)

    def lines(self, lo: Tensor, hi: Tensor) -> Lines:
        alpha = self.alpha
        unstable = (lo < 0) & (hi > 0)
        side = torch.where(lo >= 0, torch.ones_like(lo), torch.full_like(lo, alpha))     # exact where stable
        chord_s = (hi - alpha * lo) / (hi - lo).clamp_min(1e-30)
        chord_b = torch.where(unstable, -chord_s * lo + alpha * lo, torch.zeros_like(lo))
        chord = (torch.where(unstable, chord_s, side), chord_b)
        kink_s = torch.where(hi > -lo, torch.ones_like(lo), torch.full_like(lo, alpha))
        kink = (torch.where(unstable, kink_s, side), torch.zeros_like(lo))
        return (*kink, *chord) if alpha <= 1 else (*chord, *kink)


class SShaped(Elementwise):
    """A monotone activation convex below 0 and concave above (Sigmoid, Tanh): :meth:`f` and its derivative.

    Relaxation on ``[lo, hi]`` (as CROWN's):

    * ``hi ≤ 0`` (convex there): the chord from above, the tangent at the midpoint from below;
    * ``lo ≥ 0`` (concave): the chord from below, the midpoint tangent from above;
    * straddling 0: from above, the chord if it stays above ``f`` (``f'(hi) ≥`` its slope),
      else the tangent at ``d ∈ [0, hi]`` that passes through ``(lo, f(lo))``; from below
      the mirror image. ``d`` is found by bisection keeping the side where the line is
      still sound (the tangent at any ``d ≥ 0`` is above ``f`` on the concave part, and
      reaching ``(lo, f(lo))`` or above keeps it above the convex part's chord).

    Intercepts are pushed outwards by a few units of rounding so the lines stay
    sound in floating point.
    """

    bisection_steps: ClassVar[int] = 30

    @abstractmethod
    def f(self, z: Tensor) -> Tensor:
        """The activation."""

    @abstractmethod
    def df(self, z: Tensor) -> Tensor:
        """Its derivative."""

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return self.f(lo), self.f(hi)

    def _tangent(self, d: Tensor) -> tuple[Tensor, Tensor]:
        s = self.df(d)
        return s, self.f(d) - s * d

    def lines(self, lo: Tensor, hi: Tensor) -> Lines:
        f = self.f
        zero = torch.zeros_like(lo)
        flo, fhi = f(lo), f(hi)
        chord_s = (fhi - flo) / (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)
        chord_b = flo - chord_s * lo
        mid_s, mid_b = self._tangent((lo + hi) / 2)
        # straddling, upper line: the tangent at the smallest d in [0, hi] whose line reaches (lo, f(lo));
        # psi(d) = tangent_d(lo) - f(lo) rises with d on d >= 0, psi(0) <= 0
        a, b = zero, hi.clamp_min(0)
        for _ in range(self.bisection_steps):
            m = (a + b) / 2
            s, c = self._tangent(m)
            ok = s * lo + c >= flo
            a, b = torch.where(ok, a, m), torch.where(ok, m, b)
        up_s, up_b = self._tangent(b)
        # psi(hi) < 0, i.e. f'(hi) > the chord's slope: the chord itself stays above f
        s, c = self._tangent(hi)
        chord_above = s * lo + c < flo
        # straddling, lower line: the tangent at the largest d in [lo, 0] whose line stays below (hi, f(hi))
        a, b = lo.clamp_max(0), zero
        for _ in range(self.bisection_steps):
            m = (a + b) / 2
            s, c = self._tangent(m)
            ok = s * hi + c <= fhi
            a, b = torch.where(ok, m, a), torch.where(ok, b, m)
        lo_s, lo_b = self._tangent(a)
        s, c = self._tangent(lo)
        chord_below = s * hi + c > fhi
        neg, pos = hi <= 0, lo >= 0
        su = torch.where(neg, chord_s, torch.where(pos, mid_s, torch.where(chord_above, chord_s, up_s)))
        bu = torch.where(neg, chord_b, torch.where(pos, mid_b, torch.where(chord_above, chord_b, up_b)))
        sl = torch.where(neg, mid_s, torch.where(pos, chord_s, torch.where(chord_below, chord_s, lo_s)))
        bl = torch.where(neg, mid_b, torch.where(pos, chord_b, torch.where(chord_below, chord_b, lo_b)))
        # rounding: each line's value over [lo, hi] carries a few ulps of its terms' size
        reach = torch.maximum(lo.abs(), hi.abs())
        ulp = 8 * torch.finfo(lo.dtype).eps
        bu = bu + ulp * (1 + bu.abs() + su.abs() * reach)
        bl = bl - ulp * (1 + bl.abs() + sl.abs() * reach)
        return sl, bl, su, bu


@bound_op(nn.Sigmoid, torch.sigmoid, F.sigmoid, torch.special.expit, "sigmoid")
class Sigmoid(SShaped):
    """The logistic function ``1 / (1 + e^{−z})``."""

    def f(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def df(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z) * torch.sigmoid(-z)      # accurate in both tails, unlike σ(1 − σ)


@bound_op(nn.Tanh, torch.tanh, F.tanh, "tanh")
class Tanh(SShaped):
    """The hyperbolic tangent."""

    def f(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def df(self, z: Tensor) -> Tensor:
        return torch.cosh(z).reciprocal().square()      # sech², accurate in the tails, unlike 1 − tanh²
