"""Elementwise activations with a sound linear relaxation: ReLU.

A relaxation is a pair of lines per neuron over its input interval
``[lo, hi]``: ``sl·z + bl ≤ f(z) ≤ su·z + bu``. A backward bound picks the
lower line where its coefficient is positive and the upper one where it is
negative (CROWN, Zhang et al. 2018).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import BackwardStep, BoundOp, Interval, bound_op


@bound_op(nn.ReLU, F.relu, torch.relu, torch.relu_, "relu", "relu_")
class Relu(BoundOp):
    """``max(z, 0)``: the triangle relaxation, with the lower line of the smaller area."""

    relaxed: ClassVar[bool] = True

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return lo.clamp_min(0), hi.clamp_min(0)

    @staticmethod
    def back(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``a · relu(z)`` by a linear function of ``z``; ``lo``, ``hi`` broadcast against ``a``."""
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        slope_up = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), active.to(a.dtype))
        # the lower line through the origin with the smaller area: identity where hi > -lo, else 0
        slope_lo = torch.where(unstable, (hi > -lo).to(a.dtype), active.to(a.dtype))
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        coef = pos * slope_lo + neg * slope_up
        const = (neg * torch.where(unstable, -slope_up * lo, torch.zeros_like(lo))).flatten(2).sum(2)
        return coef, const

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep:
        lo, hi = ins[0]
        coef, const = self.back(a, lo[:, None], hi[:, None])
        return [coef], const.reshape(a.shape[:2])

