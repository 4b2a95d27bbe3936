"""The bound driver: interval bounds forwards, linear bounds backwards, over a ball ∩ box region.

It knows nothing about particular ops: it calls :meth:`BoundOp.interval`,
:meth:`BoundOp.backward` and :meth:`BoundOp.input_interval` and reads the
flags ``linear``, ``relaxed`` and ``fan_in``. The graph's node 0 is the input.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..norms import Norm, bcast
from .graph import Node
from .registry import Interval

# CROWN bounds for an intermediate layer cost (2 × its width) backward passes
# through everything beneath it. Above this many multiply-adds per example and
# bound evaluation (LeNet5's or SmallCNN's FC layer over their convolutions:
# 1e8-1e10; MLP-800's second layer: 2e9) the interval bound is used instead,
# which keeps 500 MNIST digits within minutes on two CPU cores; small MLPs
# (784-100-100-10: 2e7) get CROWN all the way.
CROWN_INTERMEDIATE_BUDGET = 3e7


@dataclass
class Region:
    """The ball of per-example radius ``r`` around ``x0`` intersected with the box ``[lo, hi]``."""

    x0: Tensor
    r: Tensor
    norm: Norm
    lo: float
    hi: float

    def box(self) -> Interval:
        """The elementwise bounds of the region: the ball's bounding box clipped to the box."""
        r = bcast(self.r, self.x0)
        return (self.x0 - r).clamp(self.lo, self.hi), (self.x0 + r).clamp(self.lo, self.hi)

    def lower(self, a: Tensor) -> Tensor:
        """``min a·x`` over the region for ``a`` of shape ``[B, S, *x]``: max of the ball's and the box's bound."""
        b, s = a.shape[:2]
        flat = a.reshape(b, s, -1)
        center = (flat * self.x0.reshape(b, 1, -1)).sum(2)
        ball = center - self.r[:, None] * self.norm.dual(flat.reshape(b * s, -1)).reshape(b, s)
        return torch.maximum(ball, interval_lower(a, self.box()))


def interval_lower(a: Tensor, box: Interval) -> Tensor:
    """``min a·z`` over ``lo ≤ z ≤ hi``; ``a``: ``[B, S, *z]``, ``box``: ``[B, *z]`` each."""
    b, s = a.shape[:2]
    flat = a.reshape(b, s, -1)
    lo, hi = (t.reshape(b, 1, -1) for t in box)
    return (flat * (lo + hi) / 2).sum(2) - (flat.abs() * (hi - lo) / 2).sum(2)


def _backward(nodes: list[Node], start: int, a: Tensor, bounds: Sequence[Interval | None], region: Region,
              relax: bool) -> Tensor:
    """Lower bound of ``a · node[start]`` (``a``: ``[B, S, *shape]``) as ``[B, S]``.

    Walks the graph backwards through linear ops (affine maps, sums); with
    ``relax`` through every op's relaxation too. Wherever it stops (an op
    without linear bounds, or a relaxed op when ``relax`` is off), the
    coefficients are concretized against that node's interval bounds.
    """
    b, s = a.shape[:2]
    pending: dict[int, Tensor] = {start: a}
    total = torch.zeros(b, s, dtype=a.dtype, device=a.device)
    for i in range(start, -1, -1):
        if i not in pending:
            continue
        a = pending.pop(i)
        node = nodes[i]
        if not node.inputs:                          # the model input: the region itself
            total = total + region.lower(a)
            continue
        step = None
        if relax or node.op.linear:
            step = node.op.backward(a, [bounds[j] for j in node.inputs],  # type: ignore[misc]
                                    [nodes[j].shape for j in node.inputs])
        if step is None:
            total = total + interval_lower(a, bounds[i])  # type: ignore[arg-type]
            continue
        coefs, const = step
        for j, coef in zip(node.inputs, coefs):
            pending[j] = pending[j] + coef if j in pending else coef
        if const is not None:
            total = total + const
    return total


def _cone_cost(nodes: list[Node], k: int) -> float:
    """Multiply-adds per example of a CROWN bound of node ``k``: 2·width rows through everything below it."""
    seen, stack = set(), [k]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(nodes[i].inputs)
    return 2.0 * nodes[k].numel * sum(nodes[i].numel * nodes[i].fan_in for i in seen)


def _needs_bounds(nodes: list[Node]) -> set[int]:
    """Nodes whose interval bounds feed a relaxation: CROWN tightens these."""
    return {j for n in nodes if n.op.relaxed for j in n.inputs}


def _on_input(node: Node) -> bool:
    """The node is one op applied to the model input (node 0) alone."""
    return node.inputs == [0]


def layer_bounds(nodes: list[Node], region: Region, method: str) -> list[Interval]:
    """Interval bounds of every node; with ``method="crown"`` tightened by CROWN where affordable."""
    bounds: list[Interval | None] = [None] * len(nodes)
    want = _needs_bounds(nodes) if method == "crown" else set()
    for i, node in enumerate(nodes):
        op = node.op
        if not node.inputs:
            bounds[i] = op.interval([region.box()])
        elif _on_input(node):
            bounds[i] = op.input_interval(region)
        else:
            bounds[i] = op.interval([bounds[j] for j in node.inputs])  # type: ignore[misc]
        # an affine map of the input is already exact per neuron over the ball (and boxed)
        exact = op.linear and _on_input(node)
        if i in want and not exact and _cone_cost(nodes, i) <= CROWN_INTERMEDIATE_BUDGET:
            lo, hi = bounds[i]  # type: ignore[misc]
            b, n = lo.shape[0], node.numel
            eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
            a = torch.cat([eye, -eye]).reshape(1, 2 * n, *node.shape).expand(b, -1, *node.shape)
            low = _backward(nodes, i, a, bounds, region, relax=True)
            lo = torch.maximum(lo, low[:, :n].reshape(lo.shape))
            hi = torch.minimum(hi, -low[:, n:].reshape(hi.shape))
            bounds[i] = (lo, hi)
    return bounds  # type: ignore[return-value]


def margin_lower_bounds(nodes: list[Node], region: Region, y: Tensor, method: str) -> Tensor:
    """Lower bounds of ``f_y − f_j`` for every ``j ≠ y`` over the region: ``[B, classes − 1]``."""
    out = nodes[-1]
    classes = out.shape[0]
    b = y.shape[0]
    x0 = region.x0
    others = torch.arange(classes, device=y.device).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, classes - 1)
    spec = torch.zeros(b, classes - 1, classes, dtype=x0.dtype, device=x0.device)
    spec.scatter_(2, y[:, None, None].expand(-1, classes - 1, 1), 1.0)
    spec.scatter_(2, others[:, :, None], -1.0)
    bounds = layer_bounds(nodes, region, method)
    # the specification folded into the linear ops after the last non-linearity (CROWN-IBP)
    low = _backward(nodes, len(nodes) - 1, spec, bounds, region, relax=False)
    if method == "crown":
        low = torch.maximum(low, _backward(nodes, len(nodes) - 1, spec, bounds, region, relax=True))
    return low
