"""Per-image standardization as a declared operation with its own bound.

A model calls :func:`per_image_standardize` (WideResNet's
``PerImageStandardize`` layer does); the tracer keeps that call as one node
and :class:`Standardize` bounds it. So the verifier depends on this function,
not on any model class.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .registry import BoundOp, Interval, bound_op


def per_image_standardize(x: Tensor) -> Tensor:
    """``(x − mean(x)) / max(std(x), 1/sqrt(numel))`` per example, as TensorFlow's ``per_image_standardization``."""
    flat = x.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    floor = 1.0 / (flat.shape[1] ** 0.5)
    std = torch.maximum(std, torch.full_like(std, floor))
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - mean.view(shape)) / std.view(shape)


@bound_op(per_image_standardize)
class Standardize(BoundOp):
    """Per-image ``(x − mean) / max(std, 1/√n)``: interval bounds only.

    It is not affine (the divisor depends on the input), so linear bound
    propagation stops here and uses this interval.
    """

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = (t.flatten(1) for t in ins[0])
        n = lo.shape[1]
        # x_i − mean = (1 − 1/n) x_i − (Σ_{j≠i} x_j) / n, each term at its own extreme
        vlo = (1 - 1 / n) * lo - (hi.sum(1, keepdim=True) - hi) / n
        vhi = (1 - 1 / n) * hi - (lo.sum(1, keepdim=True) - lo) / n
        small = torch.where((vlo <= 0) & (vhi >= 0), torch.zeros_like(vlo), torch.minimum(vlo.abs(), vhi.abs()))
        big = torch.maximum(vlo.abs(), vhi.abs())
        floor = 1.0 / n ** 0.5
        s_lo = (small.square().sum(1, keepdim=True) / n).sqrt().clamp_min(floor)
        s_hi = (big.square().sum(1, keepdim=True) / n).sqrt().clamp_min(floor)
        out_lo = torch.minimum(vlo / s_lo, vlo / s_hi)
        out_hi = torch.maximum(vhi / s_lo, vhi / s_hi)
        shape = ins[0][0].shape
        return out_lo.reshape(shape), out_hi.reshape(shape)
