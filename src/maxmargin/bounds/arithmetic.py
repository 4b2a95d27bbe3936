"""Arithmetic in a model's forward: sums of two branches (residual connections) and constants.

``x + y`` and ``x − y`` of two traced tensors are bounded exactly (both
branches get the backward coefficients); ``x ± c``, ``c + x``, ``x · c``,
``c · x`` and ``x / c`` with a constant ``c`` (a number or a buffer, e.g. an
input normalization) are affine maps.
"""
from __future__ import annotations

import operator
from typing import ClassVar

import torch
from torch import Tensor

from .affine import Affine
from .registry import BackwardStep, BoundOp, Call, Interval, Unsupported, WindowStep, bound_op
from .windows import At

_SUBTRACT = {operator.sub, torch.sub, "sub"}


def _refuse_extras(call: Call) -> None:
    """``torch.add(x, y, alpha=2)`` and ``torch.div(..., rounding_mode=...)`` are not the plain operation."""
    for name in ("alpha", "rounding_mode", "out"):
        if call.kwargs.get(name) is not None:
            raise Unsupported(f"the argument {name}= is not supported")
    if len(call.args) > 2:
        raise Unsupported("extra arguments are not supported")


@bound_op(operator.add, operator.iadd, torch.add, "add", operator.sub, torch.sub, "sub")
class Add(BoundOp):
    """The sum (or, with ``sign=-1``, the difference) of two traced tensors of the same shape."""

    linear: ClassVar[bool] = True

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    @classmethod
    def from_call(cls, call: Call) -> BoundOp:
        _refuse_extras(call)
        subtract = call.target in _SUBTRACT
        a, b = call.args[0], call.args[1]
        ca, cb = call.const(a), call.const(b)
        if ca is None and cb is None and len(call.tensors) == 2:
            if call.in_shapes[0] != call.in_shapes[1] or call.in_shapes[0] != call.out_shape:
                raise Unsupported(f"broadcasting between shapes {call.in_shapes[0]} and {call.in_shapes[1]}")
            return cls(-1.0 if subtract else 1.0)
        if len(call.tensors) == 1:
            if not subtract:
                return Shift(cb if ca is None else ca)
            if ca is None:
                return Shift(cb, -1.0)
        raise Unsupported("a constant minus a traced tensor is not supported")

    def interval(self, ins: list[Interval]) -> Interval:
        if self.sign < 0:
            return ins[0][0] - ins[1][1], ins[0][1] - ins[1][0]
        return ins[0][0] + ins[1][0], ins[0][1] + ins[1][1]

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep:
        return [a, a if self.sign > 0 else -a], None

    def backward_window(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                        at: At) -> WindowStep:
        return [a, a if self.sign > 0 else -a], [at, at], None


class Shift(Affine):
    """``z + sign · c`` for a constant ``c``."""

    def __init__(self, c: Tensor | float, sign: float = 1.0) -> None:
        self.c, self.sign = torch.as_tensor(c), sign

    def fn(self, z: Tensor) -> Tensor:
        return z + self.sign * self.c.to(z)

    def scale(self) -> float:
        return 1.0

    def abs_fn(self, z: Tensor) -> Tensor:
        return z

    sq_fn = abs_fn


@bound_op(operator.mul, torch.mul, "mul", operator.truediv, torch.div, torch.true_divide, "div", "true_divide")
class Scale(Affine):
    """``z · c``, ``c · z`` or ``z / c`` for a constant ``c`` (a number or a broadcastable tensor)."""

    def __init__(self, c: Tensor | float, divide: bool = False) -> None:
        c = torch.as_tensor(c)
        self.c = 1 / c if divide else c

    @classmethod
    def from_call(cls, call: Call) -> Scale:
        _refuse_extras(call)
        ca, cb = call.const(call.args[0]), call.const(call.args[1])
        if len(call.tensors) != 1:
            raise Unsupported("a product or quotient of two traced tensors is not affine")
        if call.target in (operator.mul, torch.mul, "mul"):
            return cls(cb if ca is None else ca)
        if ca is not None:
            raise Unsupported("a constant divided by a traced tensor is not affine")
        return cls(cb, divide=True)

    def fn(self, z: Tensor) -> Tensor:
        return z * self.c.to(z)

    def scale(self) -> Tensor:
        return self.c

    def abs_fn(self, z: Tensor) -> Tensor:
        return z * self.c.abs().to(z)

    def sq_fn(self, z: Tensor) -> Tensor:
        return z * (self.c * self.c).to(z)
